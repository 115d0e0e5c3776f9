"""The converter reads every file form fastai writes (plain state_dict, `learn.save`'s {"model", "opt"},
`save_encoder`, fastai v1 and DataParallel key layouts) and every vocabulary form, gives fastai's logits,
never executes pickled code, and names the offending key or global in each refusal."""

import json
import os
import pickle
import sys
import types
from pathlib import Path

import numpy
import pytest
import torch

from awd_lstm_hf.convert import CheckpointError, convert_fastai_checkpoint, convert_fastai_files, load_fastai_state_dict
from awd_lstm_hf.tokenization_awd_lstm import read_itos, read_itos_pickle
from test_convert_and_load import cases, fastai_dir, load_script  # noqa: F401 (cases, fastai_dir: fixtures)

TOL = 1e-5
LEARN_SAVE_FIXTURE = Path(__file__).resolve().parent / "fixtures" / "fastai_learn_save"
V1_HEAD_FIXTURE = Path(__file__).resolve().parent / "fixtures" / "fastai_v1_head"


@pytest.fixture(scope="module")
def lm_state(fastai_dir):
    return torch.load(fastai_dir / "lm_model.pth", weights_only=True)


@pytest.fixture(scope="module")
def clas_state(fastai_dir):
    return torch.load(fastai_dir / "clas_model.pth", weights_only=True)


@pytest.fixture
def fastcore_l(monkeypatch):
    """A stand-in for `fastcore.foundation.L` that pickles as fastai's does (NEWOBJ, then BUILD with
    {"items": [...]}), registered under fastcore's module name only while the test writes its files."""
    module = types.ModuleType("fastcore.foundation")

    class L:
        def __init__(self, items):
            self.items = list(items)

    L.__module__, L.__qualname__ = "fastcore.foundation", "L"
    module.L = L
    monkeypatch.setitem(sys.modules, "fastcore", types.ModuleType("fastcore"))
    monkeypatch.setitem(sys.modules, "fastcore.foundation", module)
    return L


def learn_save(state: dict, L) -> dict:
    """`learn.save(name)` with fastai's Adam state: per-parameter tensors, and hyper-parameters in an
    `L` of dicts whose one-cycle values are numpy scalars."""
    opt = {"state": [{"grad_avg": torch.ones(3), "sqr_avg": torch.ones(3), "step": 7}],
           "hypers": L([{"wd": 0.01, "sqr_mom": 0.99, "lr": numpy.float64(1e-3), "mom": numpy.float32(0.9),
                         "eps": 1e-5}, {"lr": numpy.float64(1e-2), "mom": 0.9}])}
    return {"model": state, "opt": opt}


def v1_layout(state: dict) -> dict:
    """A fastai v1-era state_dict: a derived `rnns.N.module.weight_hh_l0` after each `weight_ih_l0` (here
    a dropped-out copy, which must not be read) and a flat head `1.layers.M` whose Linears have a bias
    (zeros here, so that the shared fixture's logits hold; fixtures/fastai_v1_head has non-zero ones)."""
    out, linear = {}, 0
    for key, tensor in state.items():
        if key.startswith("1.layers."):
            block, module, param = key.removeprefix("1.layers.").split(".")
            flat = f"1.layers.{4 * int(block) + int(module)}"
            out[f"{flat}.{param}"] = tensor
            if tensor.dim() == 2:
                out[f"{flat}.bias"] = torch.zeros(tensor.shape[0])
            continue
        out[key] = tensor
        if key.endswith("module.weight_ih_l0"):
            raw = state[key.replace("module.weight_ih_l0", "weight_hh_l0_raw")]
            out[key.replace("weight_ih_l0", "weight_hh_l0")] = torch.nn.functional.dropout(raw, 0.5)
    return out


def encoder_only(state: dict, prefix: str) -> dict:
    """What `learn.save_encoder` writes: the AWD_LSTM's keys without prefix."""
    return {key.removeprefix(prefix): tensor for key, tensor in state.items() if key.startswith(prefix)}


def data_parallel(state: dict) -> dict:
    return {f"module.{key}": tensor for key, tensor in state.items()}


@torch.no_grad()
def assert_lm_matches(model, cases, without_decoder_bias=0):
    """fastai's logits, first x1 then x2 continuing from x1's state (less a decoder bias the model lacks)."""
    first = model(cases["lm_x1"])
    assert (first.logits - (cases["lm_y1"] - without_decoder_bias)).abs().max() <= TOL
    continued = model(cases["lm_x2"], cache=first.cache).logits
    assert (continued - (cases["lm_y2_continued"] - without_decoder_bias)).abs().max() <= TOL


@torch.no_grad()
def assert_classifier_matches(model, cases):
    x = cases["clas_x"]
    assert (model(x, attention_mask=(x != 1).long()).logits - cases["clas_y_single"]).abs().max() <= TOL


def clas_overrides(cases):
    return dict(bptt=int(cases["clas_seq_len"]), max_len=int(cases["clas_max_len"]))


FORMS = {
    "plain": lambda state, L: state,
    "learn_save": learn_save,
    "data_parallel": lambda state, L: data_parallel(state),
    "v1": lambda state, L: v1_layout(state),
    "v1_learn_save_data_parallel": lambda state, L: learn_save(data_parallel(v1_layout(state)), L),
}


@pytest.mark.parametrize("form", FORMS)
def test_every_file_form_gives_fastai_logits(form, tmp_path, fastai_dir, cases, lm_state, clas_state, fastcore_l,
                                             monkeypatch):
    torch.save(FORMS[form](lm_state, fastcore_l), tmp_path / "lm.pth")
    torch.save(FORMS[form](clas_state, fastcore_l), tmp_path / "clas.pth")
    if "learn_save" in form:  # the file names the globals of a real learn.save: the allow-list is exercised
        pickled = set(torch.serialization.get_unsafe_globals_in_checkpoint(tmp_path / "lm.pth"))
        assert {"fastcore.foundation.L", "numpy.dtype"} < pickled
    monkeypatch.delitem(sys.modules, "fastcore.foundation")  # reading must not need fastcore
    lm = convert_fastai_files(tmp_path / "lm.pth", fastai_dir / "itos.pkl", "lm")
    assert lm.notes == [] and lm.model.config.tie_word_embeddings
    assert_lm_matches(lm.model, cases)
    classifier = convert_fastai_files(tmp_path / "clas.pth", fastai_dir / "itos.pkl", "classification",
                                      **clas_overrides(cases))
    assert classifier.model.config.classifier_hidden_sizes == [50] and classifier.model.config.num_labels == 2
    assert_classifier_matches(classifier.model, cases)


def test_learn_save_files_written_by_fastai_give_its_logits():
    """Real `learn.save` files (fastai 2.8.12, optimizer state after fit_one_cycle: fastcore `L` and
    numpy scalars) from tests/fixtures/fastai_learn_save."""
    cases = torch.load(LEARN_SAVE_FIXTURE / "cases.pt", weights_only=True)
    lm = convert_fastai_files(LEARN_SAVE_FIXTURE / "lm.pth", LEARN_SAVE_FIXTURE / "itos.pkl", "lm").model
    with torch.no_grad():
        assert (lm(cases["lm_x"]).logits - cases["lm_y"]).abs().max() <= TOL
        classifier = convert_fastai_files(LEARN_SAVE_FIXTURE / "clas.pth", LEARN_SAVE_FIXTURE / "itos.pkl",
                                          "classification").model
        assert classifier.config.classifier_hidden_sizes == [6]
        assert (classifier(cases["clas_x"]).logits - cases["clas_y"]).abs().max() <= TOL


@pytest.mark.parametrize("layout", ["default_ps", "last_p0"])
def test_v1_head_with_linear_biases_gives_fastai_logits(layout, tmp_path, fastai_dir, cases, clas_state):
    """fastai v1's `bn_drop_lin` Linears carry a bias: converted into `classifier_bias`, the model gives the
    logits fastai computed with that v1 head (fixtures/fastai_v1_head), also after a save/load round trip."""
    v1 = torch.load(V1_HEAD_FIXTURE / "cases.pt", weights_only=True)
    head = v1["heads"][layout]
    torch.save({**{k: v for k, v in v1_layout(clas_state).items() if k.startswith("0.")}, **head}, tmp_path / "clas.pth")
    model = convert_fastai_files(tmp_path / "clas.pth", fastai_dir / "itos.pkl", "classification",
                                 **clas_overrides(cases)).model
    assert model.config.classifier_bias and model.config.classifier_hidden_sizes == [50]
    last = "1.layers.6" if layout == "default_ps" else "1.layers.5"
    assert torch.equal(model.classifier.blocks[0].linear.bias, head["1.layers.2.bias"])
    assert torch.equal(model.classifier.blocks[1].linear.bias, head[f"{last}.bias"])
    x = cases["clas_x"]
    with torch.no_grad():
        logits = model(x, attention_mask=(x != 1).long()).logits
        assert (logits - v1["clas_y_single"]).abs().max() <= TOL
        model.save_pretrained(tmp_path / "out")
        reloaded = type(model).from_pretrained(tmp_path / "out").eval()
        assert torch.equal(reloaded(x, attention_mask=(x != 1).long()).logits, logits)


def test_v1_head_block_adds_its_bias_after_the_dropout(cases, clas_state):
    """In training too the block is v1's BatchNorm1d, Dropout, Linear(+bias), ReLU: same outputs and
    gradients as those torch modules under the same dropout mask."""
    v1 = torch.load(V1_HEAD_FIXTURE / "cases.pt", weights_only=True)["heads"]["default_ps"]
    model = convert_fastai_checkpoint({**{k: v for k, v in clas_state.items() if k.startswith("0.")}, **v1},
                                      "classification")
    block = model.classifier.blocks[0].train()
    reference = torch.nn.Sequential(torch.nn.BatchNorm1d(96), torch.nn.Dropout(0.3), torch.nn.Linear(96, 50),
                                    torch.nn.ReLU()).train()
    reference.load_state_dict({k.removeprefix("1.layers."): v for k, v in v1.items() if k.split(".")[2] in "02"})
    x = torch.randn(6, 96, requires_grad=True)
    torch.manual_seed(0)
    ours = block(x, 0.3)
    torch.manual_seed(0)
    theirs = reference(x)
    assert (theirs != 0).any() and torch.allclose(ours, theirs, atol=1e-6)
    for ours_param, their_param in ((block.linear.bias, reference[2].bias), (x, x)):
        assert torch.allclose(torch.autograd.grad(ours.square().sum(), ours_param, retain_graph=True)[0],
                              torch.autograd.grad(theirs.square().sum(), their_param, retain_graph=True)[0], atol=1e-5)


def test_encoder_file_as_language_model_has_tied_decoder_and_zero_bias(tmp_path, fastai_dir, cases, lm_state):
    torch.save(encoder_only(lm_state, "0."), tmp_path / "encoder.pth")
    lm = convert_fastai_files(tmp_path / "encoder.pth", fastai_dir / "itos.pkl", "lm")
    assert "decoder is tied" in lm.notes[0] and "bias is zeros" in lm.notes[0]
    assert lm.model.config.tie_word_embeddings and lm.model.config.out_bias
    assert torch.equal(lm.model.lm_head.bias, torch.zeros(200))
    assert_lm_matches(lm.model, cases, without_decoder_bias=lm_state["1.decoder.bias"])


def test_encoder_file_as_classifier_gets_a_fresh_head(tmp_path, fastai_dir, cases, lm_state, capsys):
    """ULMFiT's step: the LM's encoder under a new head. The encoder gives fastai's LM hidden states
    (decoded with the fixture's decoder they are fastai's logits); the head is new, as our model makes it."""
    torch.save(data_parallel(encoder_only(lm_state, "0.")), tmp_path / "encoder.pth")
    assert load_script().main(["--weights", str(tmp_path / "encoder.pth"), "--vocab", str(fastai_dir / "itos.pkl"),
                               "--task", "classification", "--num-labels", "3", "--lin-ftrs", "[7]",
                               "--drop-mult", "0.3", "--out", str(tmp_path / "out")]) == 0
    assert "head is new and untrained" in capsys.readouterr().out
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["classifier_hidden_sizes"] == [7] and len(config["id2label"]) == 3 and config["drop_mult"] == 0.3
    assert "head is new and untrained" in (tmp_path / "out" / "README.md").read_text()
    model = convert_fastai_checkpoint(load_fastai_state_dict(tmp_path / "encoder.pth"), "classification", num_labels=3)
    with torch.no_grad():
        hidden = model.model(cases["lm_x1"]).last_hidden_state
    decoded = hidden @ lm_state["1.decoder.weight"].T + lm_state["1.decoder.bias"]
    assert (decoded - cases["lm_y1"]).abs().max() <= TOL
    blocks = model.classifier.blocks
    assert [tuple(block.linear.weight.shape) for block in blocks] == [(50, 96), (3, 50)]
    assert torch.equal(blocks[0].batch_norm.bias, torch.full((96,), 1e-3))  # fastai's BatchNorm init


def test_dropout_flags_override_fastai_defaults(tmp_path, fastai_dir):
    assert load_script().main(["--weights", str(fastai_dir / "lm_model.pth"), "--vocab", str(fastai_dir / "itos.pkl"),
                               "--task", "lm", "--drop-mult", "0.3", "--output-p", "0.2",
                               "--out", str(tmp_path / "lm")]) == 0
    config = json.loads((tmp_path / "lm" / "config.json").read_text())
    assert (config["drop_mult"], config["output_p"], config["dropout_task"]) == (0.3, 0.2, "causal_lm")


# ----------------------------------------------------------------------------------------------
# Nothing is executed: refused globals and whole pickled Learners
# ----------------------------------------------------------------------------------------------


class RunsACommand:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


class CustomClass:
    pass


@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy"])
def test_pickled_call_is_refused_by_name_and_never_run(tmp_path, lm_state, zip_format):
    marker = tmp_path / "executed"
    path = tmp_path / "evil.pth"
    torch.save({"model": lm_state, "opt": RunsACommand(marker)}, path, _use_new_zipfile_serialization=zip_format)
    with pytest.raises(CheckpointError) as error:
        load_fastai_state_dict(path)
    assert f"{os.system.__module__}.system" in str(error.value) and "nothing was executed" in str(error.value)
    assert not marker.exists()


def test_unknown_class_in_optimizer_state_is_refused_by_name(tmp_path, lm_state, fastcore_l):
    path = tmp_path / "custom.pth"
    torch.save({"model": lm_state, "opt": fastcore_l([CustomClass()])}, path)
    with pytest.raises(CheckpointError, match=f"globals that are not tensors.*{CustomClass.__module__}.CustomClass"):
        load_fastai_state_dict(path)


def test_pickled_learner_is_refused_with_an_explanation(tmp_path, monkeypatch):
    """`learn.export()` pickles the Learner itself (`fastai.text.learner.TextLearner`, verified)."""
    for name in ("fastai", "fastai.text", "fastai.text.learner"):
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    TextLearner = type("TextLearner", (), {"__module__": "fastai.text.learner"})
    sys.modules["fastai.text.learner"].TextLearner = TextLearner
    torch.save(TextLearner(), tmp_path / "export.pkl")
    with pytest.raises(CheckpointError) as error:
        load_fastai_state_dict(tmp_path / "export.pkl")
    message = str(error.value)
    assert "whole pickled fastai Learner" in message and "load_learner" in message and "never does" in message


# ----------------------------------------------------------------------------------------------
# Malformed checkpoints: each error names what is wrong
# ----------------------------------------------------------------------------------------------


MALFORMED = {
    "unknown key": ("lm", lambda lm, clas: {**lm, "0.extra.weight": torch.zeros(2)},
                    "unexpected keys for a fastai AWD-LSTM lm checkpoint: ['0.extra.weight']"),
    "layer shape": ("lm", lambda lm, clas: {**lm, "0.rnns.1.module.weight_ih_l0": torch.zeros(192, 40)},
                    "0.rnns.1.module.weight_ih_l0 has shape (192, 40), expected (192, 48)"),
    "decoder bias shape": ("lm", lambda lm, clas: {**lm, "1.decoder.bias": torch.zeros(199)},
                           "1.decoder.bias has shape (199,), expected (200,)"),
    "missing raw weight": ("lm", lambda lm, clas: {k: v for k, v in lm.items() if k != "0.rnns.0.weight_hh_l0_raw"},
                           "missing key 0.rnns.0.weight_hh_l0_raw"),
    "embedding copy differs": ("lm", lambda lm, clas: {**lm, "0.encoder_dp.emb.weight": torch.zeros(200, 32)},
                               "0.encoder_dp.emb.weight differs from the embedding"),
    "lm as classifier": ("classification", lambda lm, clas: lm, "no classifier head found: expected keys "
                         "'1.layers.N.M.*' (fastai v2) or '1.layers.M.*' (v1); 1.decoder.weight is a language model's "
                         "decoder: convert it with task 'lm'"),
    "batch norm shape": ("classification", lambda lm, clas: {**clas, "1.layers.1.0.running_mean": torch.zeros(49)},
                         "1.layers.1.0.running_mean has shape (49,), expected (50,)"),
    "linear shape": ("classification", lambda lm, clas: {**clas, "1.layers.1.2.weight": torch.zeros(2, 49)},
                     "1.layers.1.2.weight has shape (2, 49), expected (2, 50)"),
    "linear without batch norm": ("classification", lambda lm, clas: {
        k: v for k, v in clas.items() if not k.startswith("1.layers.1.0.")}, "1.layers.1.2.weight: a head Linear "
        "without the BatchNorm1d"),
    "head mixing biased and bias-free Linears": ("classification", lambda lm, clas: {
        k: v for k, v in v1_layout(clas).items() if k != "1.layers.6.bias"}, "1.layers.2.bias exists but "
        "1.layers.6.bias does not: fastai gives every head Linear a bias (v1's bn_drop_lin) or none (v2's LinBnDrop)"),
    "head linear bias shape": ("classification", lambda lm, clas: {**v1_layout(clas), "1.layers.6.bias": torch.ones(3)},
                               "1.layers.6.bias has shape (3,), expected (2,)"),
    # values: floating point (BatchNorm's num_batches_tracked aside) and finite, wherever the tensor is
    "integer LSTM bias": ("lm", lambda lm, clas: {**lm, "0.rnns.0.module.bias_hh_l0": torch.zeros(192, dtype=torch.long)},
                          "0.rnns.0.module.bias_hh_l0 holds torch.int64 values; fastai's weights are floating point"),
    "boolean head weight": ("classification", lambda lm, clas: {**clas, "1.layers.1.2.weight": clas["1.layers.1.2.weight"] > 0},
                            "1.layers.1.2.weight holds torch.bool values; fastai's weights are floating point"),
    "NaN embedding and its copies": ("lm", lambda lm, clas: {**lm, **{key: torch.full((200, 32), float("nan")) for key in (
        "0.encoder.weight", "0.encoder_dp.emb.weight", "1.decoder.weight")}},
        "0.encoder.weight holds NaN or infinite values: the checkpoint is broken"),
    "one infinite decoder bias": ("lm", lambda lm, clas: {**lm, "1.decoder.bias": lm["1.decoder.bias"].index_fill(
        0, torch.tensor([5]), float("inf"))}, "1.decoder.bias holds NaN or infinite values"),
    "NaN BatchNorm statistics": ("classification", lambda lm, clas: {**clas, "1.layers.0.0.running_var": torch.full(
        (96,), float("nan"))}, "1.layers.0.0.running_var holds NaN or infinite values"),
}


@pytest.mark.parametrize("name", MALFORMED)
def test_malformed_checkpoints_name_the_key(name, lm_state, clas_state):
    task, make, message = MALFORMED[name]
    with pytest.raises(CheckpointError) as error:
        convert_fastai_checkpoint(make(lm_state, clas_state), task)
    assert message in str(error.value)


def test_sizes_given_against_the_tensors_are_refused(clas_state, lm_state):
    with pytest.raises(CheckpointError, match=r"num_labels=3 was given, but the checkpoint's tensors say 2"):
        convert_fastai_checkpoint(clas_state, "classification", num_labels=3)
    with pytest.raises(CheckpointError) as error:  # label names count the head's outputs
        convert_fastai_checkpoint(clas_state, "classification", id2label={0: "a", 1: "b", 2: "c"})
    assert str(error.value) == "id2label names 3 labels (a, b, c), but the checkpoint's head has 2"
    with pytest.raises(CheckpointError) as error:  # and a new head's, when both are given
        convert_fastai_checkpoint(encoder_only(lm_state, "0."), "classification", num_labels=2, id2label={0: "a"})
    assert str(error.value) == "id2label names 1 labels (a), but num_labels is 2"


@pytest.mark.parametrize("task, overrides, message", [
    ("classification", {"num_labels": 0}, "num_labels must be at least 1, got 0"),
    ("classification", {"num_labels": -2}, "num_labels must be at least 1, got -2"),
    ("classification", {"classifier_hidden_sizes": [50, 0]}, "classifier_hidden_sizes must be a list of widths of at "
     "least 1 (fastai's lin_ftrs, e.g. [50]), got [50, 0]"),
    ("classification", {"classifier_hidden_sizes": 50}, "classifier_hidden_sizes must be a list of widths of at least "
     "1 (fastai's lin_ftrs, e.g. [50]), got 50"),
    # drop_mult with the task's defaults for the other dropouts: classifier input_p 0.4, LM input_p 0.25
    ("classification", {"drop_mult": 10.0}, "input_p * drop_mult must be [0, 1.0), got 4.0"),
    ("lm", {"drop_mult": 5.0}, "input_p * drop_mult must be [0, 1.0), got 1.25"),
    ("lm", {"drop_mult": 2.0, "embed_p": 0.5}, "embed_p * drop_mult must be [0, 1.0), got 1.0"),
])
def test_values_no_model_can_use_are_refused_before_converting(lm_state, task, overrides, message):
    """What would otherwise be written and fail later (an empty head, a BatchNorm of no features, training's
    first forward with a dropout of 1 or more): refused by the library function, as by the script's flags."""
    with pytest.raises(ValueError) as error:
        convert_fastai_checkpoint(encoder_only(lm_state, "0."), task, **overrides)
    assert str(error.value) == message


def test_file_without_a_state_dict_is_refused(tmp_path):
    torch.save({"model": {"encoder.weight": "not a tensor"}}, tmp_path / "odd.pth")
    with pytest.raises(CheckpointError, match="does not hold a state_dict of tensors"):
        load_fastai_state_dict(tmp_path / "odd.pth")


# ----------------------------------------------------------------------------------------------
# Vocabularies: itos pickle, JSON, text
# ----------------------------------------------------------------------------------------------


def test_vocab_forms_read_the_same_itos(tmp_path, fastai_dir, cases):
    itos = read_itos_pickle(fastai_dir / "itos.pkl")
    (tmp_path / "vocab.json").write_text(json.dumps(itos), encoding="utf-8")
    (tmp_path / "vocab.txt").write_text("\n".join(itos) + "\n", encoding="utf-8")
    for vocab in ("vocab.json", "vocab.txt"):
        conversion = convert_fastai_files(fastai_dir / "lm_model.pth", tmp_path / vocab, "lm")
        assert conversion.tokenizer.itos == itos
        assert_lm_matches(conversion.model, cases)


def test_text_vocab_splits_on_newlines_only(tmp_path, fastai_dir):
    itos = read_itos_pickle(fastai_dir / "itos.pkl")
    itos[-3:] = ["\x85▁", "a\u2028b", "tab\there"]  # str.splitlines would split the first two
    (tmp_path / "vocab.txt").write_text("\n".join(itos), encoding="utf-8")
    assert read_itos(tmp_path / "vocab.txt") == itos


def test_text_vocab_with_line_break_tokens_is_refused(tmp_path, fixtures_dir):
    itos = read_itos_pickle(fixtures_dir / "fastai_vocab" / "itos.pkl")  # holds '\n\n' and '\n\n▁'
    (tmp_path / "vocab.txt").write_text("\n".join(itos) + "\n", encoding="utf-8")
    first = next(index for index, token in enumerate(itos) if "\n" in token)
    assert itos[first].startswith("\n")  # so its own line (first + 1) is the first empty one
    with pytest.raises(ValueError, match=rf"line {first + 1} is empty.*tokens containing line breaks"):
        read_itos(tmp_path / "vocab.txt")


def test_pickled_vocab_with_any_global_is_refused(tmp_path):
    path = tmp_path / "itos.pkl"
    path.write_bytes(pickle.dumps(RunsACommand(tmp_path / "executed")))
    with pytest.raises(ValueError, match=f"refusing to load the global '{os.system.__module__}.system'"):
        read_itos(path)
    assert not (tmp_path / "executed").exists()
