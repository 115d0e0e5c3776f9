"""F1, as an offline `evaluate` metric module (see `awd_lstm_hf.metrics`); sklearn's definition, with 0
for a label that is never predicted nor true."""

import datasets
import evaluate
import numpy as np

_DESCRIPTION = "F1 = 2 * precision * recall / (precision + recall) = 2 TP / (2 TP + FP + FN)."
_KWARGS_DESCRIPTION = """
Args:
    predictions (`list[int]`): predicted labels.
    references (`list[int]`): true labels.
    average (`str`): "binary" (F1 of `pos_label`, the default) or "macro" (the mean F1 over the labels
        that occur in predictions or references).
    pos_label (`int`): the positive label for "binary" (default 1).
Returns:
    f1 (`float`).
"""


def label_f1(predictions: np.ndarray, references: np.ndarray, label: int) -> float:
    true_positives = np.sum((predictions == label) & (references == label))
    wrong = np.sum((predictions == label) != (references == label))  # false positives + false negatives
    return float(2 * true_positives / (2 * true_positives + wrong)) if true_positives + wrong else 0.0


class F1(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION, citation="", inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"predictions": datasets.Value("int64"), "references": datasets.Value("int64")}),
        )

    def _compute(self, predictions, references, average="binary", pos_label=1):
        predictions, references = np.asarray(predictions), np.asarray(references)
        if average == "binary":
            return {"f1": label_f1(predictions, references, pos_label)}
        if average == "macro":
            labels = np.union1d(predictions, references)
            return {"f1": float(np.mean([label_f1(predictions, references, label) for label in labels]))}
        raise ValueError(f"average must be 'binary' or 'macro', got {average!r}")
