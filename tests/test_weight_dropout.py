"""Weight dropout (fastai's WeightDropout, DropConnect on the hidden-to-hidden matrices) under training,
dtype and device moves, compilation and state_dict round trips: the trained parameter is the raw matrix,
its gradient is the one of an LSTM written out by hand with the same mask, nothing warns step after step,
and eval mode never drops a weight."""

import warnings

import pytest
import torch
from torch.nn import functional as F

from awd_lstm_hf import AWDLSTMConfig, AWDLSTMForCausalLM, AWDLSTMForSequenceClassification, AWDLSTMModel

ONLY_WEIGHT_DROPOUT = dict(embed_p=0.0, input_p=0.0, weight_p=0.5, hidden_p=0.0, output_p=0.0, drop_mult=1.0)
ALL_ZERO = dict(embed_p=0.0, input_p=0.0, weight_p=0.0, hidden_p=0.0, output_p=0.0, classifier_dropouts=[0.0])


def config(**overrides) -> AWDLSTMConfig:
    sizes = dict(vocab_size=50, embedding_size=8, hidden_size=12, num_hidden_layers=2, bptt=4, max_len=12)
    return AWDLSTMConfig(**(sizes | overrides))


def lstm_by_hand(x, w_ih, w_hh, b_ih, b_hh):
    """One LSTM layer from zeros, gate by gate (PyTorch's i, f, g, o order)."""
    h = c = x.new_zeros(x.shape[0], w_hh.shape[1])
    outputs = []
    for t in range(x.shape[1]):
        i, f, g, o = (x[:, t] @ w_ih.T + b_ih + h @ w_hh.T + b_hh).chunk(4, 1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(c)
        outputs.append(h)
    return torch.stack(outputs, 1)


def test_gradient_reaches_the_raw_matrix_and_equals_a_hand_lstm_with_the_same_mask():
    """Two layers, weight_p 0.5, the other dropouts off: the masks are the first two draws of the generator
    (one per layer, in order), so the same seed reproduces them. The raw matrices' gradients equal those of
    the LSTM written out by hand with W_hh = raw * mask / (1 - p), zero where the mask dropped, and an SGD
    step moves exactly the raw parameter."""
    model = AWDLSTMModel(config(**ONLY_WEIGHT_DROPOUT)).train()
    ids = torch.randint(9, 50, (3, 7))
    weights = torch.randn(3, 7, 8)
    torch.manual_seed(11)
    (model(ids).last_hidden_state * weights).sum().backward()

    torch.manual_seed(11)
    masks = [F.dropout(torch.ones_like(layer.weight_hh_l0_raw), 0.5, True) for layer in model.rnns]
    raws = [layer.weight_hh_l0_raw.detach().clone().requires_grad_() for layer in model.rnns]
    x = F.embedding(ids, model.encoder.weight.detach())
    for layer, raw, mask in zip(model.rnns, raws, masks):
        x = lstm_by_hand(x, layer.weight_ih_l0.detach(), raw * mask, layer.bias_ih_l0.detach(), layer.bias_hh_l0.detach())
    (x * weights).sum().backward()

    for layer, raw, mask in zip(model.rnns, raws, masks):
        torch.testing.assert_close(layer.weight_hh_l0_raw.grad, raw.grad, rtol=1e-4, atol=1e-6)
        assert torch.all(layer.weight_hh_l0_raw.grad[mask == 0] == 0)
        assert 0.3 < (mask == 0).float().mean() < 0.7
    before = [layer.weight_hh_l0_raw.detach().clone() for layer in model.rnns]
    torch.optim.SGD(model.parameters(), lr=0.1).step()
    for layer, old, raw in zip(model.rnns, before, raws):
        torch.testing.assert_close(layer.weight_hh_l0_raw.detach(), old - 0.1 * raw.grad, rtol=1e-4, atol=1e-6)
    assert not any("weight_hh_l0" == name.rsplit(".", 1)[-1] for name, _ in model.named_parameters())


def _steps(model, n=4, dtype=None):
    """Training steps with padded batches (packed sequences) and eval calls, as a Trainer would run them."""
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    ids = torch.randint(9, 50, (3, 9))
    mask = torch.ones_like(ids)
    mask[1, 6:] = mask[2, :4] = 0
    for _ in range(n):
        model.train()
        with torch.autocast("cpu", dtype=dtype, enabled=dtype is not None):
            out = model(ids, attention_mask=mask, labels=ids)
        out.loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        model.eval()
        with torch.no_grad():
            model(ids, attention_mask=mask)


@pytest.mark.parametrize("prepare", [
    lambda m: m,
    lambda m: m.to(torch.float64),
    lambda m: m.to("cpu"),
    lambda m: _copy(m),  # a fresh model loaded from m's state_dict
], ids=["fp32", "to_float64", "to_cpu", "state_dict_round_trip"])
def test_no_rnn_warnings_over_training_steps(prepare):
    """No warning at all (in particular PyTorch's "RNN module weights are not part of single contiguous chunk
    of memory", which a re-assigned weight_hh triggers at every call) over steps of training and eval."""
    torch.manual_seed(0)
    model = prepare(AWDLSTMForCausalLM(config()))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _steps(model)
    assert [str(w.message) for w in caught] == []


def test_no_rnn_warnings_under_bf16_autocast():
    torch.manual_seed(0)
    model = AWDLSTMForCausalLM(config())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _steps(model, dtype=torch.bfloat16)
    assert [str(w.message) for w in caught] == []


def _copy(model, cls=None, **overrides):
    cls = cls or type(model)
    copied = cls(AWDLSTMConfig.from_dict(model.config.to_dict() | overrides))
    copied.load_state_dict(model.state_dict())
    return copied


@pytest.mark.parametrize("dtype, tolerance", [(torch.float64, 1e-6), (torch.float16, 5e-3), (torch.bfloat16, 3e-2)])
def test_dtype_moves_keep_outputs_and_training(dtype, tolerance):
    """`.to(float64)`, `.half()`, `.bfloat16()`: eval logits equal fp32's to the dtype's precision, the raw
    matrix stays the trained parameter in that dtype, and a training step gives finite gradients for it."""
    torch.manual_seed(0)
    model = AWDLSTMForCausalLM(config()).eval()
    ids = torch.randint(9, 50, (2, 11))
    with torch.no_grad():
        reference = model(ids).logits
    moved = {torch.float64: lambda m: m.to(torch.float64), torch.float16: lambda m: m.half(),
             torch.bfloat16: lambda m: m.bfloat16()}[dtype](_copy(model)).eval()
    with torch.no_grad():
        logits = moved(ids).logits
    assert logits.dtype == dtype
    assert (logits.double() - reference.double()).abs().max() <= tolerance * max(1.0, reference.abs().max().item())
    moved.train()
    moved(ids, labels=ids).loss.backward()
    for layer in moved.model.rnns:
        assert layer.weight_hh_l0_raw.dtype == dtype
        assert layer.weight_hh_l0_raw.grad is not None and torch.isfinite(layer.weight_hh_l0_raw.grad).all()


def test_state_dict_round_trip_keeps_outputs_and_masks():
    """A fresh model loaded from a state_dict (raw matrices only, no derived dropped weight) gives the same
    eval logits, and the same training logits for the same seed (same masks)."""
    torch.manual_seed(0)
    model = AWDLSTMForCausalLM(config())
    state = model.state_dict()
    assert not any(key.endswith("weight_hh_l0") for key in state)
    assert sum(key.endswith("weight_hh_l0_raw") for key in state) == 2
    torch.manual_seed(5)
    loaded = AWDLSTMForCausalLM(config())
    loaded.load_state_dict(state)
    ids = torch.randint(9, 50, (2, 9))
    with torch.no_grad():
        assert torch.equal(loaded.eval()(ids).logits, model.eval()(ids).logits)
        outputs = []
        for m in (model, loaded):
            torch.manual_seed(3)
            outputs.append(m.train()(ids).logits)
    assert torch.equal(*outputs)


@pytest.mark.parametrize("cls", [AWDLSTMForCausalLM, AWDLSTMForSequenceClassification])
def test_eval_never_drops_weights(cls):
    """Eval logits with fastai's default dropouts equal those of the same weights with every dropout 0 (and,
    for the LM, those of the zero-dropout model in training mode); a training pass in between (weights
    dropped, gradients computed, no step) leaves every parameter, the raw matrices included, as it was."""
    torch.manual_seed(0)
    model = cls(config())
    assert model.dropouts["weight_p"] > 0
    ids = torch.randint(9, 50, (3, 10))
    zero = _copy(model, drop_mult=1.0, **ALL_ZERO).eval()
    with torch.no_grad():
        expected = zero(ids).logits
        torch.testing.assert_close(model.eval()(ids).logits, expected, rtol=0, atol=1e-6)
        if cls is AWDLSTMForCausalLM:
            torch.testing.assert_close(zero.train()(ids).logits, expected, rtol=0, atol=1e-6)
    parameters = {name: value.detach().clone() for name, value in model.named_parameters()}
    model.train()
    out = model(ids, labels=torch.tensor([0, 1, 0]) if cls is AWDLSTMForSequenceClassification else ids)
    out.loss.backward()
    for name, value in model.named_parameters():
        assert torch.equal(value, parameters[name]), name
    if cls is AWDLSTMForCausalLM:  # (the classifier's BatchNorm running statistics moved, as they should)
        with torch.no_grad():
            torch.testing.assert_close(model.eval()(ids).logits, expected, rtol=0, atol=1e-6)


def test_torch_compile_gives_the_eager_outputs_and_gradients():
    """torch.compile (aot_eager: dynamo's graph capture and AOT autograd, without a C++ toolchain) gives
    eager's eval logits, and in training, for the same seed, eager's gradients of the raw matrices."""
    torch.manual_seed(0)
    model = AWDLSTMForCausalLM(config(**ONLY_WEIGHT_DROPOUT))
    ids = torch.randint(9, 50, (2, 9))
    try:
        compiled = torch.compile(model, backend="aot_eager")
        with torch.no_grad():
            compiled_logits = compiled.eval()(ids).logits
    except Exception as error:  # a platform without dynamo support
        pytest.skip(f"torch.compile is not supported here: {error}")
    with torch.no_grad():
        torch.testing.assert_close(compiled_logits, model.eval()(ids).logits, rtol=0, atol=1e-6)
    gradients = []
    for runner in (model, compiled):
        model.zero_grad()
        model.train()
        torch.manual_seed(7)
        runner(ids, labels=ids).loss.backward()
        gradients.append([layer.weight_hh_l0_raw.grad.clone() for layer in model.model.rnns])
    for eager, traced in zip(*gradients):
        torch.testing.assert_close(traced, eager, rtol=1e-5, atol=1e-7)
