"""Tiny random models and a small vocabulary, shared by the tests of degenerate input and of state
invariance: seconds to build, and outputs that differ from token to token."""

import torch

from awd_lstm_hf import AWDLSTMConfig, AWDLSTMForCausalLM, AWDLSTMForSequenceClassification, AWDLSTMTokenizer
from awd_lstm_hf.tokenization_awd_lstm import SPECIAL_TOKENS

WORDS = ["the", "movie", "was", "good", "bad", "i", "loved", "it", "plot", "actors", "and", "not", "a", "film",
         ".", ",", "!", "\n\n"]


def tiny_tokenizer() -> AWDLSTMTokenizer:
    return AWDLSTMTokenizer.from_itos([*SPECIAL_TOKENS, *WORDS, "xxfake", "xxfake", "xxfake", "xxfake", "xxfake"])


def tiny_config(tokenizer: AWDLSTMTokenizer, **overrides) -> AWDLSTMConfig:
    sizes = dict(vocab_size=len(tokenizer), embedding_size=8, hidden_size=12, num_hidden_layers=2, bptt=5, max_len=15)
    return AWDLSTMConfig(**(sizes | overrides))


def tiny_lm(tokenizer: AWDLSTMTokenizer, seed: int = 0, **overrides) -> AWDLSTMForCausalLM:
    torch.manual_seed(seed)
    return AWDLSTMForCausalLM(tiny_config(tokenizer, **overrides)).eval()


def tiny_classifier(tokenizer: AWDLSTMTokenizer, seed: int = 0, **overrides) -> AWDLSTMForSequenceClassification:
    torch.manual_seed(seed)
    model = AWDLSTMForSequenceClassification(tiny_config(tokenizer, **overrides)).eval()
    with torch.no_grad():  # fastai's fresh head (BatchNorm weight 1, bias 1e-3) gives near-equal classes
        for block in model.classifier.blocks:
            block.batch_norm.bias.normal_()
    return model


@torch.no_grad()
def greedy_by_hand(model: AWDLSTMForCausalLM, ids: list[int], steps: int, banned: int | None = 0) -> list[int]:
    """Greedy decoding by re-reading the whole sequence every step (no cache), never choosing `banned`
    (the model's saved generation config suppresses xxunk, like fastai's predict)."""
    ids = list(ids)
    for _ in range(steps):
        logits = model(torch.tensor([ids])).logits[0, -1]
        if banned is not None:
            logits[banned] = float("-inf")
        ids.append(int(logits.argmax()))
    return ids
