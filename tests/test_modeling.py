"""The models against fastai's own outputs, and the invariants fastai gets wrong (padding, state leaks)."""

import threading

import pytest
import torch
from transformers import AutoConfig, AutoModelForSequenceClassification

from awd_lstm_hf import AWDLSTMConfig, AWDLSTMForCausalLM, AWDLSTMForSequenceClassification, AWDLSTMModel
from awd_lstm_hf.convert import convert_fastai_checkpoint, load_fastai_state_dict
from awd_lstm_hf.modeling_awd_lstm import decoder_cross_entropy

TOL = 1e-5


@pytest.fixture(scope="module")
def cases(fixtures_dir):
    return torch.load(fixtures_dir / "fastai_awd_lstm" / "cases.pt", weights_only=True)


@pytest.fixture(scope="module")
def fastai_lm(fixtures_dir):
    return convert_fastai_checkpoint(load_fastai_state_dict(fixtures_dir / "fastai_awd_lstm" / "lm_model.pth"), "lm")


@pytest.fixture(scope="module")
def fastai_classifier(fixtures_dir, cases):
    state = load_fastai_state_dict(fixtures_dir / "fastai_awd_lstm" / "clas_model.pth")
    return convert_fastai_checkpoint(
        state, "classification", bptt=int(cases["clas_seq_len"]), max_len=int(cases["clas_max_len"])
    )


def tiny_config(**overrides):
    sizes = dict(vocab_size=50, embedding_size=8, hidden_size=12, num_hidden_layers=3, bptt=4, max_len=12)
    return AWDLSTMConfig(**(sizes | overrides))


def pad_rows(rows, side, pad_id=1, width=None):
    """A padded batch and its mask; `side` is 'left', 'right', or a list of per-row pad offsets."""
    width = width or max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, row in enumerate(rows):
        start = {"left": width - len(row), "right": 0}[side] if isinstance(side, str) else side[i]
        ids[i, start : start + len(row)] = torch.as_tensor(row)
        mask[i, start : start + len(row)] = 1
    return ids, mask


# ---------------------------------------------------------------- fastai parity (acceptance 1)


@torch.no_grad()
def test_lm_logits_match_fastai_and_state_continues(fastai_lm, cases):
    first = fastai_lm(cases["lm_x1"])
    assert (first.logits - cases["lm_y1"]).abs().max() <= TOL
    continued = fastai_lm(cases["lm_x2"], cache=first.cache)
    assert (continued.logits - cases["lm_y2_continued"]).abs().max() <= TOL
    fresh = fastai_lm(cases["lm_x2"])  # no state passed: starts from zeros, nothing leaks from the last call
    assert (fresh.logits - cases["lm_y2_fresh"]).abs().max() <= TOL


@torch.no_grad()
def test_classifier_matches_fastai_alone_and_in_padded_batch(fastai_classifier, cases):
    x, expected = cases["clas_x"], cases["clas_y_single"]
    batched = fastai_classifier(x, attention_mask=(x != 1).long()).logits
    assert (batched - expected).abs().max() <= TOL
    for row, length in enumerate(cases["clas_lens"].tolist()):
        alone = fastai_classifier(x[row : row + 1, -length:]).logits
        assert (alone - expected[row]).abs().max() <= TOL


@torch.no_grad()
@pytest.mark.parametrize("side", ["right", [3, 0, 20, 7]])
def test_classifier_padding_side_does_not_matter(fastai_classifier, cases, side):
    x = cases["clas_x"]
    rows = [x[i, -n:].tolist() for i, n in enumerate(cases["clas_lens"].tolist())]
    ids, mask = pad_rows(rows, side, width=60)
    logits = fastai_classifier(ids, attention_mask=mask).logits
    assert (logits - cases["clas_y_single"]).abs().max() <= TOL


# ---------------------------------------------------------------- padding and state, whole classes


@torch.no_grad()
@pytest.mark.parametrize("side", ["left", "right", [0, 2, 5]])
def test_lm_padded_batch_equals_each_row_alone(side):
    torch.manual_seed(0)
    model = AWDLSTMForCausalLM(tiny_config()).eval()
    rows = [[5, 6, 7, 8, 9, 10, 11], [12, 13, 14], [1, 1, 15, 16]]  # id 1 inside a row is a real token here
    ids, mask = pad_rows(rows, side, width=11)
    out = model(ids, attention_mask=mask)
    for i, row in enumerate(rows):
        alone = model(torch.tensor([row]))
        positions = mask[i].bool()
        assert (out.logits[i, positions] - alone.logits[0]).abs().max() <= TOL
        for (h, c), (h1, c1) in zip(out.cache.states, alone.cache.states):
            assert (h[:, i] - h1[:, 0]).abs().max() <= TOL and (c[:, i] - c1[:, 0]).abs().max() <= TOL
        assert out.last_hidden_state[i, ~positions].abs().max() == 0  # pads output zeros


@torch.no_grad()
def test_attention_mask_alone_defines_padding():
    """Token id 1 (xxpad) with mask 1 is a real token; without a mask every token is real."""
    model = AWDLSTMForCausalLM(tiny_config()).eval()
    ids = torch.tensor([[4, 1, 1, 6]])
    unmasked = model(ids).logits
    assert torch.equal(model(ids, attention_mask=torch.ones_like(ids)).logits, unmasked)
    masked = model(ids, attention_mask=torch.tensor([[1, 0, 0, 1]])).logits
    assert (masked[0, 3] - model(torch.tensor([[4, 6]])).logits[0, 1]).abs().max() <= TOL


@torch.no_grad()
def test_all_padding_row_keeps_its_state():
    model = AWDLSTMForCausalLM(tiny_config()).eval()
    start = model(torch.tensor([[3, 4], [5, 6]]))
    out = model(torch.tensor([[7, 8], [1, 1]]), attention_mask=torch.tensor([[1, 1], [0, 0]]), cache=start.cache)
    for (h0, c0), (h1, c1) in zip(start.cache.states, out.cache.states):
        assert torch.equal(h0[:, 1], h1[:, 1]) and torch.equal(c0[:, 1], c1[:, 1])
    assert out.cache.seen_tokens == 4


@torch.no_grad()
def test_no_state_leaks_between_calls():
    model = AWDLSTMForSequenceClassification(tiny_config()).eval()
    ids = torch.randint(9, 50, (2, 30))
    first = model(ids).logits
    model(torch.randint(9, 50, (5, 17)))
    assert torch.equal(model(ids).logits, first)


@pytest.mark.parametrize("max_len", [None, 4, 12])
def test_inference_windows_equal_one_pass_for_any_max_len(max_len):
    """Inference without gradients reads long inputs window by window (max_len, or bptt when max_len is
    None): the logits and the final state equal one pass over the whole input."""
    model = AWDLSTMForCausalLM(tiny_config(max_len=max_len)).eval()
    ids, mask = pad_rows([list(range(9, 46)), list(range(20, 40))], "left")
    whole = model(ids, attention_mask=mask)  # gradients enabled: a single window
    with torch.no_grad():
        windowed = model(ids, attention_mask=mask)
    torch.testing.assert_close(windowed.logits, whole.logits.detach(), atol=TOL, rtol=0)
    for (h1, c1), (h2, c2) in zip(windowed.cache.states, whole.cache.states):
        torch.testing.assert_close((h1, c1), (h2.detach(), c2.detach()), atol=TOL, rtol=0)


@torch.no_grad()
def test_classifier_pools_fastai_window_of_long_documents():
    """fastai SentenceEncoder: chunks counted from the first token, a chunk starting at i pooled when
    length - i <= max_len. Recomputed here by hand from the encoder, chunk by chunk."""
    torch.manual_seed(1)
    model = AWDLSTMForSequenceClassification(tiny_config()).eval()
    doc = torch.randint(9, 50, (1, 23))  # bptt 4, max_len 12: chunks at 0,4,...,20; pooled from 12 (23-12=11)
    state = model.model.zero_state(1)
    outputs = []
    for start in range(0, 23, 4):
        out = model.model(doc[:, start : start + 4], cache=state)
        state = out.cache
        if 23 - start <= 12:
            outputs.append(out.last_hidden_state)
    pooled = torch.cat(outputs, 1)[0]
    features = torch.cat([pooled[-1], pooled.max(0).values, pooled.mean(0)])
    expected = model.classifier(features.unsqueeze(0))
    assert (model(doc).logits - expected).abs().max() <= TOL


# ---------------------------------------------------------------- train vs eval, dropouts


def test_eval_is_deterministic_and_training_uses_dropout():
    torch.manual_seed(0)
    model = AWDLSTMForCausalLM(tiny_config())
    ids = torch.randint(9, 50, (4, 10))
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(ids).logits, model(ids).logits)
        reference = model(ids).logits
    model.train()
    torch.manual_seed(1)
    first = model(ids).logits
    second = model(ids).logits
    assert not torch.allclose(first, second)
    assert not torch.allclose(first, reference)


def test_training_without_dropout_equals_eval():
    zero = dict(embed_p=0.0, input_p=0.0, weight_p=0.0, hidden_p=0.0, output_p=0.0)
    model = AWDLSTMForCausalLM(tiny_config(**zero))
    ids = torch.randint(9, 50, (3, 9))
    trained = model.train()(ids).logits
    assert (trained - model.eval()(ids).logits).abs().max() <= TOL


def test_weight_dropout_gradient_reaches_raw_weights_where_kept():
    model = AWDLSTMModel(tiny_config(embed_p=0.0, input_p=0.0, hidden_p=0.0, weight_p=0.5, drop_mult=1.0)).train()
    torch.manual_seed(3)
    model(torch.randint(9, 50, (2, 6))).last_hidden_state.pow(2).sum().backward()
    grad = model.rnns[0].weight_hh_l0_raw.grad
    assert grad is not None and grad.abs().sum() > 0
    zero_fraction = (grad == 0).float().mean().item()
    assert 0.3 < zero_fraction < 0.7  # about half of the matrix was dropped for this call
    assert {name for name, _ in model.rnns[0].named_parameters()} == {
        "weight_ih_l0", "weight_hh_l0_raw", "bias_ih_l0", "bias_hh_l0"
    }


# ---------------------------------------------------------------- the LM loss without full logits


def reference_loss_and_grads(hidden, decoder, targets, divisor=None):
    """Plain logits + F.cross_entropy: the value and gradients the chunked loss must reproduce."""
    hidden = hidden.detach().requires_grad_()
    decoder.zero_grad()
    summed = torch.nn.functional.cross_entropy(decoder(hidden).flatten(0, 1), targets.reshape(-1), reduction="sum")
    loss = summed / (divisor if divisor is not None else (targets != -100).sum())
    loss.backward()
    grads = [hidden.grad] + [p.grad.clone() if p.grad is not None else None for p in decoder.parameters()]
    return loss.detach(), grads


@pytest.mark.parametrize("chunk_size", [1, 5, 21, 256])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("divisor", [None, 17])
def test_decoder_cross_entropy_equals_full_logits(chunk_size, bias, divisor):
    torch.manual_seed(0)
    decoder = torch.nn.Linear(8, 50, bias=bias)
    hidden = torch.randn(3, 7, 8)
    targets = torch.randint(0, 50, (3, 8))[:, 1:]  # a non-contiguous view, as shift_labels often are
    targets[0, :3] = -100
    expected, expected_grads = reference_loss_and_grads(hidden, decoder, targets, divisor)
    decoder.zero_grad()
    hidden = hidden.requires_grad_()
    loss = decoder_cross_entropy(hidden, decoder, targets, num_items_in_batch=divisor, chunk_size=chunk_size)
    loss.backward()
    assert abs(loss.item() - expected.item()) <= TOL
    for got, want in zip([hidden.grad, *(p.grad for p in decoder.parameters())], expected_grads):
        assert (got - want).abs().max() <= TOL


@pytest.mark.parametrize("bias", [True, False])
def test_decoder_cross_entropy_under_bf16_autocast_multiplies_in_bf16_and_sums_in_float32(bias):
    """Under autocast the three products are bf16 (operands and results, as autocast runs a Linear); softmax,
    loss and the sums over chunks stay float32: the loss equals a float64 computation from the bf16 logits,
    the gradients agree with it to bf16's precision."""
    torch.manual_seed(0)
    decoder = torch.nn.Linear(8, 50, bias=bias)
    hidden = torch.randn(3, 7, 8, requires_grad=True)
    targets = torch.randint(0, 50, (3, 7))
    targets[0, :3] = -100
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = decoder_cross_entropy(hidden, decoder, targets, chunk_size=5)
    loss.backward()
    assert loss.dtype == torch.float32 and hidden.grad.dtype == decoder.weight.grad.dtype == torch.float32

    def bf16(x):
        return x.detach().bfloat16().double()

    h, w = bf16(hidden).reshape(-1, 8), bf16(decoder.weight)
    logits = bf16(h @ w.T) + (decoder.bias.detach().double() if bias else 0)
    valid = targets.reshape(-1) != -100
    log_probs = logits.log_softmax(1)
    count = valid.sum()
    expected = -log_probs[valid].gather(1, targets.reshape(-1)[valid, None]).sum() / count
    grad_logits = log_probs.exp() - torch.nn.functional.one_hot(targets.reshape(-1).clamp(min=0), 50)
    grad_logits[~valid] = 0
    assert loss.item() == pytest.approx(expected.item(), abs=1e-6)
    torch.testing.assert_close(hidden.grad.reshape(-1, 8).double(), grad_logits @ w / count, rtol=1e-2, atol=1e-4)
    torch.testing.assert_close(decoder.weight.grad.double(), grad_logits.T @ h / count, rtol=1e-2, atol=1e-4)
    if bias:  # summed in float32 from the float32 softmax
        torch.testing.assert_close(decoder.bias.grad.double(), grad_logits.sum(0) / count, rtol=1e-5, atol=1e-6)


def test_decoder_cross_entropy_leaves_frozen_weights_and_no_grad_alone():
    decoder = torch.nn.Linear(8, 50)
    decoder.weight.requires_grad_(False)
    hidden = torch.randn(2, 5, 8, requires_grad=True)
    targets = torch.randint(0, 50, (2, 5))
    decoder_cross_entropy(hidden, decoder, targets).backward()
    assert decoder.weight.grad is None and decoder.bias.grad is not None and hidden.grad is not None
    with torch.no_grad():
        value = decoder_cross_entropy(hidden, decoder, targets)
    assert not value.requires_grad
    everything_ignored = torch.full((2, 5), -100)
    assert decoder_cross_entropy(hidden, decoder, everything_ignored).item() == 0.0


@pytest.mark.parametrize("target_kind", ["labels", "shift_labels"])
def test_training_loss_without_logits_equals_loss_from_logits(target_kind):
    """The default training path (loss only) gives the same loss and gradients as computing the logits,
    for the same dropout masks, with the decoder tied to the embedding."""
    torch.manual_seed(0)
    model = AWDLSTMForCausalLM(tiny_config()).train()
    windows = torch.randint(9, 50, (3, 10))
    targets = {"labels": windows[:, :-1]} if target_kind == "labels" else {"shift_labels": windows[:, 1:]}
    results = []
    for skip_logits in (True, False):
        model.zero_grad()
        torch.manual_seed(1)
        outputs = model(windows[:, :-1], skip_logits=skip_logits, **targets)
        outputs.loss.backward()
        results.append((outputs, outputs.loss.item(), model.model.encoder.weight.grad.clone()))
    (skipped, loss, grad), (full, full_loss, full_grad) = results
    assert skipped.logits is None and full.logits is not None
    assert abs(loss - full_loss) <= TOL and (grad - full_grad).abs().max() <= TOL
    assert model.lm_head.weight is model.model.encoder.weight


def test_dropouts_follow_fastai_defaults_per_task(tmp_path):
    lm = AWDLSTMForCausalLM(tiny_config())
    assert lm.config.effective_dropouts() == pytest.approx(
        dict(embed_p=0.02, input_p=0.25, weight_p=0.2, hidden_p=0.15, output_p=0.1)
    )
    lm.save_pretrained(tmp_path)
    classifier = AWDLSTMForSequenceClassification.from_pretrained(tmp_path)
    assert classifier.config.effective_dropouts() == pytest.approx(
        dict(embed_p=0.025, input_p=0.2, weight_p=0.25, hidden_p=0.15, output_p=0.2)
    )
    assert classifier.classifier.block_dropouts() == pytest.approx([0.2, 0.1])
    assert classifier.config.id2label == {0: "neg", 1: "pos"}
    assert torch.equal(classifier.model.encoder.weight, lm.model.encoder.weight)
    # values the user passes win over the task defaults, and the config drives the modules
    custom = AWDLSTMForSequenceClassification.from_pretrained(tmp_path, drop_mult=0.3, output_p=0.9)
    assert custom.config.effective_dropouts()["output_p"] == pytest.approx(0.27)
    assert custom.classifier.block_dropouts() == pytest.approx([0.27, 0.1])
    custom.config.drop_mult = 0.0
    assert custom.model.dropouts["input_p"] == 0.0


@pytest.mark.parametrize(
    "load",
    [
        lambda d: AutoModelForSequenceClassification.from_pretrained(d, drop_mult=0.3, embed_p=0.01),
        lambda d: AWDLSTMForSequenceClassification.from_pretrained(d, drop_mult=0.3, embed_p=0.01),
        lambda d: AutoModelForSequenceClassification.from_pretrained(
            d, config=AutoConfig.from_pretrained(d, drop_mult=0.3, embed_p=0.01)),
    ],
    ids=["auto-class", "head-class", "auto-config"],
)
def test_dropouts_passed_when_loading_win_through_every_loader(tmp_path, load):
    """From a language-model folder, a classifier takes fastai's classifier defaults except for what the
    caller passed, whichever loader carries it; the override is not saved as a property of the model."""
    AWDLSTMForCausalLM(tiny_config(drop_mult=0.7)).save_pretrained(tmp_path / "lm")
    config = load(tmp_path / "lm").config
    assert (config.dropout_task, config.drop_mult, config.embed_p) == ("classification", 0.3, 0.01)
    assert (config.input_p, config.weight_p, config.hidden_p, config.output_p) == (0.4, 0.5, 0.3, 0.4)
    assert "_explicit_dropouts" not in config.to_dict()
    plain = AutoModelForSequenceClassification.from_pretrained(tmp_path / "lm").config
    assert (plain.drop_mult, plain.embed_p) == (0.5, 0.05)


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda lm, cl, x: lm(x, attention_mask=torch.ones(1, 4)), "attention_mask"),
        (lambda lm, cl, x: lm(x, attention_mask=torch.ones(2, 3)), "attention_mask"),
        (lambda lm, cl, x: cl(x, attention_mask=torch.ones(2, 3)), "attention_mask"),
        (lambda lm, cl, x: cl(x[:1], attention_mask=torch.ones(2, 4)), "attention_mask"),
        (lambda lm, cl, x: lm(inputs_embeds=torch.randn(1, 3, 9)), "inputs_embeds"),
        (lambda lm, cl, x: lm(torch.tensor([[2, 50]])), "outside the vocabulary"),
        (lambda lm, cl, x: cl(torch.tensor([[2, -1]])), "outside the vocabulary"),
        (lambda lm, cl, x: lm(x.float()), "integers"),
        (lambda lm, cl, x: lm(x[0]), "integers"),
        (lambda lm, cl, x: cl(x, labels=torch.tensor([0, 2])), "labels"),
        (lambda lm, cl, x: cl(x, labels=torch.tensor([1])), "labels"),
    ],
    ids=["mask-rows", "mask-short", "clas-mask-short", "clas-mask-rows", "embeds-width", "id-too-big",
         "negative-id", "float-ids", "1d-ids", "label-outside", "labels-count"],
)
def test_inputs_that_do_not_fit_the_model_are_clear_errors(call, message):
    lm, cl = AWDLSTMForCausalLM(tiny_config()).eval(), AWDLSTMForSequenceClassification(tiny_config()).eval()
    x = torch.randint(9, 50, (2, 4))
    with pytest.raises(ValueError, match=message):
        call(lm, cl, x)


@torch.no_grad()
def test_a_longer_mask_covers_the_last_positions_as_generate_passes_it():
    lm = AWDLSTMForCausalLM(tiny_config()).eval()
    x = torch.randint(9, 50, (2, 4))
    longer = torch.tensor([[0, 0, 1, 1, 1, 1], [1, 1, 0, 1, 1, 1]])
    assert torch.equal(lm(x, attention_mask=longer).logits, lm(x, attention_mask=longer[:, 2:]).logits)
    assert torch.equal(lm(x[:, :0], attention_mask=longer).logits, lm(x[:, :0]).logits)


@pytest.mark.parametrize(
    "bad", [dict(max_len=3), dict(max_len=0), dict(embed_p=1.0), dict(input_p=-0.1), dict(drop_mult=-1.0),
            dict(vocab_size=0), dict(classifier_dropouts=[1.5])]
)
def test_invalid_config_values_are_refused(bad):
    with pytest.raises(ValueError):
        tiny_config(**bad)


def test_dropout_times_drop_mult_above_one_is_refused():
    model = AWDLSTMForCausalLM(tiny_config(input_p=0.6))
    model.config.drop_mult = 2.0
    with pytest.raises(ValueError, match="input_p"):
        model(torch.tensor([[3, 4]]))


@torch.no_grad()
def test_classifier_without_any_token_gives_defined_logits():
    model = AWDLSTMForSequenceClassification(tiny_config()).eval()
    empty = model(torch.zeros(2, 0, dtype=torch.long)).logits
    padded = model(torch.ones(2, 5, dtype=torch.long), attention_mask=torch.zeros(2, 5, dtype=torch.long)).logits
    expected = model.classifier(torch.zeros(1, 24)).expand(2, -1)  # what zero pooled features give
    assert (empty - expected).abs().max() <= TOL and (padded - expected).abs().max() <= TOL


# ---------------------------------------------------------------- save / load, tying


@torch.no_grad()
def test_save_load_round_trip_keeps_outputs_and_tie(tmp_path, fastai_lm, fastai_classifier, cases):
    for model, inputs in ((fastai_lm, cases["lm_x1"]), (fastai_classifier, cases["clas_x"])):
        folder = tmp_path / type(model).__name__
        model.save_pretrained(folder)
        assert (folder / "model.safetensors").exists()
        loaded = type(model).from_pretrained(folder).eval()
        assert torch.equal(loaded(inputs).logits, model(inputs).logits)
    loaded_lm = AWDLSTMForCausalLM.from_pretrained(tmp_path / "AWDLSTMForCausalLM")
    assert loaded_lm.lm_head.weight is loaded_lm.model.encoder.weight


# ---------------------------------------------------------------- threads


@torch.no_grad()
def test_one_model_serves_several_threads():
    torch.manual_seed(0)
    model = AWDLSTMForSequenceClassification(tiny_config()).eval()
    docs = [torch.randint(9, 50, (1, n)) for n in (5, 17, 30, 3, 26, 11)]
    expected = [model(d).logits for d in docs]
    results = {}

    def work(index):
        with torch.no_grad():  # grad mode is per thread
            for _ in range(5):
                results.setdefault(index, []).append(model(docs[index]).logits)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(docs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for index, outputs in results.items():
        assert all(torch.equal(o, expected[index]) for o in outputs)
