"""The converter script end to end: fastai checkpoint -> model folder -> Auto classes, pipelines, and
`trust_remote_code` in a process where our package cannot be imported."""

import importlib.util
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from huggingface_hub.utils import HFValidationError, validate_repo_id
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer, pipeline

from awd_lstm_hf import AWDLSTMConfig, AWDLSTMForCausalLM, AWDLSTMTokenizer  # registers the Auto classes
from awd_lstm_hf.tokenization_awd_lstm import SPECIAL_TOKENS

TOL = 1e-5
SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "convert_fastai_checkpoint.py"


def load_script():
    spec = importlib.util.spec_from_file_location("convert_fastai_checkpoint", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def fastai_dir(fixtures_dir):
    return fixtures_dir / "fastai_awd_lstm"


@pytest.fixture(scope="module")
def cases(fastai_dir):
    return torch.load(fastai_dir / "cases.pt", weights_only=True)


@pytest.fixture(scope="module")
def converted(tmp_path_factory, fastai_dir, cases):
    """Both fixtures converted with the script's command line."""
    out = tmp_path_factory.mktemp("converted")
    script = load_script()
    assert script.main(["--weights", str(fastai_dir / "lm_model.pth"), "--vocab", str(fastai_dir / "itos.pkl"),
                        "--task", "lm", "--out", str(out / "lm")]) == 0
    assert script.main(["--weights", str(fastai_dir / "clas_model.pth"), "--vocab", str(fastai_dir / "itos.pkl"),
                        "--task", "classification", "--bptt", str(int(cases["clas_seq_len"])),
                        "--max-len", str(int(cases["clas_max_len"])), "--out", str(out / "classifier")]) == 0
    return out


@torch.no_grad()
def test_converted_folders_match_fastai(converted, cases):
    lm = AutoModelForCausalLM.from_pretrained(converted / "lm").eval()
    first = lm(cases["lm_x1"])
    assert (first.logits - cases["lm_y1"]).abs().max() <= TOL
    assert (lm(cases["lm_x2"], cache=first.cache).logits - cases["lm_y2_continued"]).abs().max() <= TOL
    classifier = AutoModelForSequenceClassification.from_pretrained(converted / "classifier").eval()
    x = cases["clas_x"]
    assert (classifier(x, attention_mask=(x != 1).long()).logits - cases["clas_y_single"]).abs().max() <= TOL
    config = json.loads((converted / "classifier" / "config.json").read_text())
    assert config["dropout_task"] == "classification" and config["drop_mult"] == 0.5
    assert config["id2label"] == {"0": "neg", "1": "pos"}
    for name in ("model.safetensors", "modeling_awd_lstm.py", "configuration_awd_lstm.py",
                 "tokenization_awd_lstm.py", "vocab.json", "README.md"):
        assert (converted / "classifier" / name).exists(), name


def test_pipelines_load_converted_folders(converted):
    tokenizer = AutoTokenizer.from_pretrained(converted / "lm")
    assert len(tokenizer) == 200
    generator = pipeline("text-generation", model=str(converted / "lm"))
    text = generator("the movie", max_new_tokens=5, do_sample=False)[0]["generated_text"]
    assert text.startswith("the movie")
    classifier = pipeline("text-classification", model=str(converted / "classifier"))
    result = classifier("a great film", top_k=None)
    assert {r["label"] for r in result} == {"neg", "pos"}
    assert sum(r["score"] for r in result) == pytest.approx(1.0, abs=1e-6)


def test_trust_remote_code_without_the_package(converted, cases, tmp_path):
    """A fresh interpreter where `import awd_lstm_hf` fails loads the folders with the code they carry,
    and gets fastai's logits."""
    torch.save({"x": cases["clas_x"], "y": cases["clas_y_single"], "x1": cases["lm_x1"], "y1": cases["lm_y1"]},
               tmp_path / "cases.pt")
    code = textwrap.dedent(f"""
        import torch
        from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, pipeline
        c = torch.load({str(tmp_path / "cases.pt")!r}, weights_only=True)
        lm = AutoModelForCausalLM.from_pretrained({str(converted / "lm")!r}, trust_remote_code=True).eval()
        clas = AutoModelForSequenceClassification.from_pretrained({str(converted / "classifier")!r},
                                                                  trust_remote_code=True).eval()
        assert type(lm).__module__.startswith("transformers_modules"), type(lm).__module__
        with torch.no_grad():
            assert (lm(c["x1"]).logits - c["y1"]).abs().max() <= {TOL}
            assert (clas(c["x"], attention_mask=(c["x"] != 1).long()).logits - c["y"]).abs().max() <= {TOL}
        out = pipeline("text-classification", model={str(converted / "classifier")!r}, trust_remote_code=True)("fine")
        assert out[0]["label"] in ("neg", "pos")
    """)
    run_without_the_package(code, tmp_path)


def run_without_the_package(code: str, tmp_path: Path) -> None:
    """Run `code` in a fresh interpreter where `import awd_lstm_hf` fails, offline."""
    code = 'import sys\nsys.modules["awd_lstm_hf"] = None\n' + code + '\nprint("remote code ok")\n'
    env = {"HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp_path / "modules"), "PATH": "/usr/bin:/bin"}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "remote code ok" in result.stdout


@torch.no_grad()
def test_any_saved_folder_loads_as_every_head_without_the_package(tmp_path):
    """Plain `save_pretrained` (not only our scripts) copies the code and maps every Auto class."""
    config = AWDLSTMConfig(vocab_size=16, embedding_size=8, hidden_size=12, num_hidden_layers=2)
    torch.manual_seed(0)
    lm = AWDLSTMForCausalLM(config).eval()
    tokenizer = AWDLSTMTokenizer.from_itos([*SPECIAL_TOKENS, "i", "liked", "this", "movie", "it", ".", "xxfake"])
    lm.save_pretrained(tmp_path / "lm")
    tokenizer.save_pretrained(tmp_path / "lm")
    ids = tokenizer("I liked this movie", return_tensors="pt")["input_ids"]
    torch.save({"ids": ids, "logits": lm(ids).logits, "hidden": lm.model(ids).last_hidden_state}, tmp_path / "cases.pt")
    code = textwrap.dedent(f"""
        import torch
        from transformers import AutoModel, AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer
        folder, c = {str(tmp_path / "lm")!r}, torch.load({str(tmp_path / "cases.pt")!r}, weights_only=True)
        tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=True)
        assert torch.equal(tokenizer("I liked this movie", return_tensors="pt")["input_ids"], c["ids"])
        lm = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True).eval()
        encoder = AutoModel.from_pretrained(folder, trust_remote_code=True).eval()
        clas = AutoModelForSequenceClassification.from_pretrained(folder, trust_remote_code=True).eval()
        assert type(clas).__module__.startswith("transformers_modules"), type(clas).__module__
        with torch.no_grad():
            assert torch.equal(lm(c["ids"]).logits, c["logits"])
            assert torch.equal(encoder(c["ids"]).last_hidden_state, c["hidden"])
            assert clas(c["ids"]).logits.shape == (1, 2)
    """)
    run_without_the_package(code, tmp_path)


def test_vocab_that_does_not_fit_the_weights_is_refused(tmp_path, fastai_dir, fixtures_dir, capsys):
    code = load_script().main(["--weights", str(fastai_dir / "lm_model.pth"),
                               "--vocab", str(fixtures_dir / "fastai_vocab" / "itos.pkl"),
                               "--task", "lm", "--out", str(tmp_path / "out")])
    assert code == 1
    error = capsys.readouterr().err
    assert "8768 entries" in error and "encoder.weight" in error and "200 rows" in error
    assert not (tmp_path / "out").exists()


def test_unreadable_checkpoint_is_a_clear_error(tmp_path, fastai_dir, capsys):
    broken = tmp_path / "broken.pth"
    broken.write_bytes((fastai_dir / "lm_model.pth").read_bytes()[:1000])
    code = load_script().main(["--weights", str(broken), "--vocab", str(fastai_dir / "itos.pkl"),
                               "--task", "lm", "--out", str(tmp_path / "out")])
    assert code == 1
    assert "cannot read" in capsys.readouterr().err


def test_classifier_weights_converted_as_lm_name_the_problem(tmp_path, fastai_dir, capsys):
    code = load_script().main(["--weights", str(fastai_dir / "clas_model.pth"), "--vocab", str(fastai_dir / "itos.pkl"),
                               "--task", "lm", "--out", str(tmp_path / "out")])
    assert code == 1
    assert "1.layers.0.0.weight" in capsys.readouterr().err


@pytest.mark.parametrize(
    "content, message",
    [
        (b"cos\nsystem\n(S'echo pwned'\ntR.", "global"),  # a pickle that would call os.system
        (b"[1, 2", "JSONDecodeError"),
        (b"", "EOFError"),
        (b"garbage\n", "not a readable pickle"),
        (json.dumps([f"w{i}" for i in range(200)]).encode(), "not a fastai vocabulary"),
    ],
    ids=["pickled-global", "broken-json", "empty", "not-a-pickle", "no-special-tokens"],
)
def test_bad_vocab_files_are_clear_errors(tmp_path, fastai_dir, capsys, content, message):
    vocab = tmp_path / ("vocab.json" if content.startswith((b"[", b"{")) else "itos.pkl")
    vocab.write_bytes(content)
    code = load_script().main(["--weights", str(fastai_dir / "lm_model.pth"), "--vocab", str(vocab),
                               "--task", "lm", "--out", str(tmp_path / "out")])
    assert code == 1
    error = capsys.readouterr().err
    assert str(vocab) in error and message in error
    assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------------------------
# Flags: refused before anything is read or written; label names
# ----------------------------------------------------------------------------------------------

WIDTHS = "classifier_hidden_sizes must be a list of widths of at least 1 (fastai's lin_ftrs, e.g. [50]), got"
REFUSED_FLAGS = {
    "no labels": (["--num-labels", "0"], "num_labels must be at least 1, got 0"),
    "negative labels": (["--num-labels", "-2"], "num_labels must be at least 1, got -2"),
    "zero width": (["--lin-ftrs", "[0]"], f"{WIDTHS} [0]"),
    "width without a list": (["--lin-ftrs", "50"], f"{WIDTHS} 50"),
    "width not a number": (["--lin-ftrs", '["a"]'], f"{WIDTHS} ['a']"),
    "width a boolean": (["--lin-ftrs", "[true]"], f"{WIDTHS} [True]"),
    "widths not JSON": (["--lin-ftrs", "[50"],
                        "argument --lin-ftrs: not JSON (Expecting ',' delimiter: line 1 column 4 (char 3)): '[50'"),
    "drop_mult past 1": (["--drop-mult", "10"], "input_p * drop_mult must be [0, 1.0), got 4.0"),
    "dropout of 1": (["--output-p", "1"], "output_p must be [0, 1.0), got 1.0"),
    "empty label": (["--labels", "neg,,pos"],
                    "argument --labels: expected distinct, non-empty names separated by commas, got 'neg,,pos'"),
    "repeated label": (["--labels", "pos,pos"],
                       "argument --labels: expected distinct, non-empty names separated by commas, got 'pos,pos'"),
    "labels and a count": (["--labels", "a,b", "--num-labels", "2"],
                           "argument --num-labels: not allowed with argument --labels"),
}


@pytest.mark.parametrize("name", REFUSED_FLAGS)
def test_flags_no_model_can_use_are_argument_errors_before_anything_is_written(name, tmp_path, fastai_dir, capsys):
    flags, message = REFUSED_FLAGS[name]
    with pytest.raises(SystemExit) as exit_:
        load_script().main(["--weights", str(fastai_dir / "clas_model.pth"), "--vocab", str(fastai_dir / "itos.pkl"),
                            "--task", "classification", "--out", str(tmp_path / "out"), *flags])
    assert exit_.value.code == 2
    assert capsys.readouterr().err.endswith(f"error: {message}\n")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("repo_id", ["bad id", "user/name/extra", "user/" + "x" * 100, "user--name"])
def test_hub_ids_the_hub_refuses_are_argument_errors_before_anything_is_written(repo_id, tmp_path, fastai_dir, capsys):
    with pytest.raises(HFValidationError) as refusal:
        validate_repo_id(repo_id)
    with pytest.raises(SystemExit) as exit_:
        load_script().main(["--weights", str(fastai_dir / "lm_model.pth"), "--vocab", str(fastai_dir / "itos.pkl"),
                            "--task", "lm", "--out", str(tmp_path / "out"), "--push_to_hub", repo_id])
    assert exit_.value.code == 2
    assert capsys.readouterr().err.endswith(f"error: argument --push_to_hub: {refusal.value}\n")
    assert not (tmp_path / "out").exists()


IMDB_LABELS_NOTE = ("label names (fastai keeps them in `dls.vocab[1]`, not in the weights): IMDB's neg, pos "
                    "(fastai's sorted order); give the real ones in order as id2label (the converter's --labels)")


def convert_classifier(tmp_path, weights: Path, vocab: Path, *flags) -> tuple[int, dict, str]:
    """The script on a classifier: exit code, the folder's id2label and its card's text."""
    code = load_script().main(["--weights", str(weights), "--vocab", str(vocab), "--task", "classification",
                               "--out", str(tmp_path / "out"), *flags])
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    return code, config["id2label"], (tmp_path / "out" / "README.md").read_text()


def test_label_names_are_given_or_said_to_be_assumed(tmp_path, fastai_dir, capsys):
    """`--labels` names the head's outputs in order; without it, a 2-output head is IMDB's neg/pos and any
    other LABEL_i, and the output and the card say the names were assumed. The card states the labels and
    claims no meaning for them."""
    weights, vocab = fastai_dir / "clas_model.pth", fastai_dir / "itos.pkl"
    code, id2label, card = convert_classifier(tmp_path / "given", weights, vocab, "--labels", "bad, good")
    assert (code, id2label) == (0, {"0": "bad", "1": "good"})
    assert "AWD-LSTM (text classifier, labels: bad, good)" in card and "label names" not in card
    assert "label names" not in capsys.readouterr().out

    code, id2label, card = convert_classifier(tmp_path / "assumed", weights, vocab)
    assert (code, id2label) == (0, {"0": "neg", "1": "pos"})
    assert f"note: {IMDB_LABELS_NOTE}\n" in capsys.readouterr().out
    assert f"Not in the file: {IMDB_LABELS_NOTE}." in card and "AWD-LSTM (text classifier, labels: neg, pos)" in card

    encoder = tmp_path / "encoder.pth"  # learn.save_encoder: a new head of --num-labels outputs
    state = torch.load(fastai_dir / "lm_model.pth", weights_only=True)
    torch.save({key[2:]: value for key, value in state.items() if key.startswith("0.")}, encoder)
    code, id2label, card = convert_classifier(tmp_path / "three", encoder, vocab, "--num-labels", "3")
    assert (code, id2label) == (0, {"0": "LABEL_0", "1": "LABEL_1", "2": "LABEL_2"})
    assert "AWD-LSTM (text classifier, labels: LABEL_0, LABEL_1, LABEL_2)" in card
    assert "label names (fastai keeps them in `dls.vocab[1]`, not in the weights): LABEL_0, LABEL_1, LABEL_2;" in card
    code, id2label, card = convert_classifier(tmp_path / "named", encoder, vocab, "--labels", "neg,mixed,pos")
    assert (code, id2label) == (0, {"0": "neg", "1": "mixed", "2": "pos"})
    head = AutoModelForSequenceClassification.from_pretrained(tmp_path / "named" / "out").classifier.blocks[-1]
    assert tuple(head.linear.weight.shape) == (3, 50)
    for folder in ("given", "assumed", "three", "named"):
        assert "sentiment" not in (tmp_path / folder / "out" / "README.md").read_text()


def test_label_names_that_do_not_fit_the_head_are_refused(tmp_path, fastai_dir, capsys):
    code = load_script().main(["--weights", str(fastai_dir / "clas_model.pth"), "--vocab", str(fastai_dir / "itos.pkl"),
                               "--task", "classification", "--labels", "a,b,c", "--out", str(tmp_path / "out")])
    assert code == 1
    assert capsys.readouterr().err == "error: id2label names 3 labels (a, b, c), but the checkpoint's head has 2\n"
    assert not (tmp_path / "out").exists()
