"""Long inputs in bounded memory: a long document is read in bptt chunks with a graph only over the pooled
max_len window, and a long prompt is read in max_len windows with logits only for its last position, so the
working memory follows bptt and max_len, not the input's length (scripts/measure_memory.py measures it)."""

import sys
from pathlib import Path

import pytest
import torch

from awd_lstm_hf import AWDLSTMConfig, AWDLSTMForCausalLM, AWDLSTMForSequenceClassification, AWDLSTMModel

REPO = Path(__file__).resolve().parents[1]
BPTT, MAX_LEN = 4, 12


def tiny(cls, seed=0):
    torch.manual_seed(seed)
    return cls(AWDLSTMConfig(vocab_size=50, embedding_size=8, hidden_size=12, num_hidden_layers=2, bptt=BPTT,
                             max_len=MAX_LEN))


@pytest.mark.parametrize("training", [False, True])
def test_long_document_keeps_a_graph_and_outputs_only_for_the_pooled_window(monkeypatch, training):
    """400 tokens, bptt 4, max_len 12: fastai pools the chunks starting at i with 400 - i <= 12, i.e. from
    388. Only the 3 pooled chunks (4 wide) run with gradients, the outputs kept are those 12 positions, and
    only tokens of that window get an embedding gradient (the state reaching it is detached, as in fastai).
    The 388 tokens before it are read in chunks of bptt in training (each chunk draws its own dropout masks,
    as fastai's), in windows of max_len without dropout (the same state, fewer LSTM calls)."""
    model = tiny(AWDLSTMForSequenceClassification).train(training)
    model.config.drop_mult = 0.0  # embedding dropout would take some window rows' gradient away
    early = torch.randint(9, 30, (388,))  # ids 9..29 only before the window, 30..49 only inside it
    window = torch.randint(30, 50, (12,))
    ids = torch.cat([early, window]).unsqueeze(0)
    calls = []
    encode = AWDLSTMModel.encode

    def recording_encode(self, embeds, states, lengths=None):
        calls.append((embeds.shape[1], torch.is_grad_enabled()))
        return encode(self, embeds, states, lengths)

    monkeypatch.setattr(AWDLSTMModel, "encode", recording_encode)
    out = model(ids)
    prefix = [BPTT] * 97 if training else [MAX_LEN] * 32 + [4]
    assert calls == [(width, False) for width in prefix] + [(BPTT, True)] * 3
    assert out.last_hidden_state.shape == (1, MAX_LEN, 8) and bool(out.pooled_mask.all())
    out.logits.sum().backward()
    rows_with_gradient = set(model.model.encoder.weight.grad.abs().sum(1).nonzero().flatten().tolist())
    assert rows_with_gradient == set(window.tolist())


def test_prefixes_read_in_windows_give_the_chunk_by_chunk_logits():
    """Documents whose pooled windows start after 0 to 30 chunks, padded on the left or right in one batch:
    eval (prefixes read in max_len windows, rows joining as their prefix starts) pools the outputs of the
    chunk-by-chunk reading, which training with every dropout at 0 still does."""
    model = tiny(AWDLSTMForSequenceClassification)
    model.config.drop_mult = 0.0
    lengths = [130, 12, 5, 13, 40, 41, 17, 0, 99]
    ids = torch.randint(9, 50, (len(lengths), max(lengths)))
    mask = torch.zeros_like(ids)
    for row, length in enumerate(lengths):
        mask[row, :length] = 1
    mask[1::2] = mask[1::2].flip(1)  # odd rows padded on the left
    with torch.no_grad():
        chunked = model.train()(ids, attention_mask=mask)
        windowed = model.eval()(ids, attention_mask=mask)
    assert torch.equal(windowed.pooled_mask, chunked.pooled_mask)
    # the pooled encoder outputs (the head's BatchNorm normalises by batch statistics in training)
    torch.testing.assert_close(windowed.last_hidden_state, chunked.last_hidden_state, rtol=0, atol=1e-6)


def test_long_prompt_is_read_in_max_len_windows_with_logits_for_its_last_position(monkeypatch):
    """generate() from a 5,000-token prompt: the prompt goes through the stack in windows of max_len (12)
    with no graph, the decoder sees one position per step, and the greedy tokens equal those computed by
    hand from one gradient-enabled pass (a single window) over the prompt, then one token at a time."""
    model = tiny(AWDLSTMForCausalLM).eval()
    prompt = torch.randint(9, 50, (1, 5000))
    windows, decoded = [], []
    read_window = AWDLSTMModel.read_window

    def recording_read_window(self, input_ids, inputs_embeds, attention_mask, states):
        windows.append(input_ids.shape[1])
        return read_window(self, input_ids, inputs_embeds, attention_mask, states)

    monkeypatch.setattr(AWDLSTMModel, "read_window", recording_read_window)
    hook = model.lm_head.register_forward_hook(lambda module, inputs, output: decoded.append(inputs[0].shape[1]))
    generated = model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=3, do_sample=False)
    hook.remove()
    assert windows[: 5000 // MAX_LEN + 1] == [MAX_LEN] * (5000 // MAX_LEN) + [5000 % MAX_LEN]
    assert max(windows) == MAX_LEN and decoded == [1, 1, 1]

    monkeypatch.undo()
    tokens, state, step = [], None, prompt
    for _ in range(3):
        out = model(step, cache=state)  # gradients enabled: one window, all positions
        logits = out.logits[0, -1].detach()
        logits[0] = float("-inf")  # xxunk suppressed, as the generation config says
        tokens.append(int(logits.argmax()))
        state, step = out.cache, torch.tensor([[tokens[-1]]])
    assert generated[0, 5000:].tolist() == tokens


@pytest.mark.slow
def test_peak_memory_does_not_grow_with_ten_times_longer_inputs():
    """At the cpu preset's sizes, in fresh processes: classifying 2k vs 20k tokens and generating from a 10k vs
    100k prompt need at most a few MiB more (the ids themselves), far below the 18 MiB / 90 MiB that keeping
    one layer's outputs (100 floats a token) for the extra tokens would take."""
    sys.path.insert(0, str(REPO / "scripts"))
    try:
        from measure_memory import measure
    finally:
        sys.path.remove(str(REPO / "scripts"))
    for case, short, long in (("classify", 2_000, 20_000), ("generate", 10_000, 100_000)):
        growth = [measure(case, n)["growth_mib"] for n in (short, long)]
        assert growth[1] - growth[0] < 16, (case, growth)
