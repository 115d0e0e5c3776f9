"""Perplexity of an awd-lstm-hf language model on given texts, as an offline `evaluate` metric module (see
`awd_lstm_hf.metrics`; the Hub's "perplexity" metric loads gpt2)."""

import math
import os

import datasets
import evaluate
import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM, AutoTokenizer

import awd_lstm_hf  # noqa: F401  (registers the Auto classes for model folders given by path)

_DESCRIPTION = """Each text is encoded as the model reads it (`xxbos` first), read from a zero state, and
every later token is predicted from the ones before it: a text of n tokens gives n - 1 predictions. An
empty text (`xxbos` alone) gives none; a one-word text gives one (the word after `xxbos`). Texts are
batched by length and padded, which changes no result: the model reads only the real tokens."""
_KWARGS_DESCRIPTION = """
Args:
    predictions (`list[str]`): the texts.
    model: an AWD-LSTM language model (read in eval mode, then put back in its mode), or the folder (or
        Hub id) of one.
    tokenizer: its tokenizer (default: loaded from the `model` folder).
    batch_size (`int`): texts per forward pass (default 16).
Returns:
    perplexity (`float`): exp(total negative log-likelihood / number of predictions) over all texts; NaN
        when no text gives a prediction.
    perplexities (`list[float]`): per text; NaN for a text without predictions.
    mean_perplexity (`float`): mean of the per-text perplexities that are defined (NaN if none is).
    predicted_tokens (`int`): the number of predictions.
"""
POSITIONS_PER_CHUNK = 1024  # vocabulary-sized logits are computed for at most this many positions at once


def text_nll(model, hidden: torch.Tensor, input_ids: torch.Tensor) -> float:
    """Summed negative log-likelihood of `input_ids[1:]` given the hidden states of `input_ids[:-1]`."""
    decoder, total = model.get_output_embeddings(), 0.0
    for start in range(0, len(input_ids) - 1, POSITIONS_PER_CHUNK):
        stop = min(start + POSITIONS_PER_CHUNK, len(input_ids) - 1)
        logits = decoder(hidden[start:stop]).float()
        total += F.cross_entropy(logits, input_ids[start + 1 : stop + 1], reduction="sum").item()
    return total


class Perplexity(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION, citation="", inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"predictions": datasets.Value("string")}),
        )

    def _compute(self, predictions, model, tokenizer=None, batch_size=16):
        if isinstance(model, (str, os.PathLike)):
            tokenizer = tokenizer or AutoTokenizer.from_pretrained(model)
            model = AutoModelForCausalLM.from_pretrained(model)
        if tokenizer is None:
            raise ValueError("perplexity needs the tokenizer when `model` is a model object")
        was_training = model.training
        model.eval()  # no dropout; the caller's model is put back in its mode afterwards
        try:
            return perplexities(predictions, model, tokenizer, batch_size)
        finally:
            model.train(was_training)


@torch.no_grad()
def perplexities(texts: list[str], model, tokenizer, batch_size: int) -> dict:
    """The metric's results (see _KWARGS_DESCRIPTION) for `model` in eval mode."""
    device = next(model.parameters()).device
    encoded = tokenizer(list(texts))["input_ids"] if texts else []
    nll, counts = [0.0] * len(encoded), [max(len(ids) - 1, 0) for ids in encoded]
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))  # similar lengths, little padding
    for start in range(0, len(order), batch_size):
        rows = [i for i in order[start : start + batch_size] if counts[i]]
        if not rows:
            continue
        batch = tokenizer.pad({"input_ids": [encoded[i] for i in rows]}, return_tensors="pt").to(device)
        hidden = model(**batch, skip_logits=True).last_hidden_state
        for row, index in enumerate(rows):
            real = batch["attention_mask"][row].bool()  # either padding side
            nll[index] = text_nll(model, hidden[row][real], batch["input_ids"][row][real])
    total = sum(counts)
    per_text = [math.exp(n / c) if c else math.nan for n, c in zip(nll, counts)]
    defined = [p for p in per_text if not math.isnan(p)]
    return {
        "perplexity": math.exp(sum(nll) / total) if total else math.nan,
        "perplexities": per_text,
        "mean_perplexity": sum(defined) / len(defined) if defined else math.nan,
        "predicted_tokens": total,
    }
