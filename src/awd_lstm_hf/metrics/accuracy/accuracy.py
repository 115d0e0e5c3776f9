"""Accuracy, as an offline `evaluate` metric module (see `awd_lstm_hf.metrics`)."""

import datasets
import evaluate
import numpy as np

_DESCRIPTION = "The fraction of predictions equal to their references."
_KWARGS_DESCRIPTION = """
Args:
    predictions (`list[int]`): predicted labels.
    references (`list[int]`): true labels.
Returns:
    accuracy (`float`): correct / total, NaN for no predictions.
"""


class Accuracy(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION, citation="", inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"predictions": datasets.Value("int64"), "references": datasets.Value("int64")}),
        )

    def _compute(self, predictions, references):
        correct = np.asarray(predictions) == np.asarray(references)
        return {"accuracy": float(correct.mean()) if correct.size else float("nan")}
