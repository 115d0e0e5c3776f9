"""`scripts/train.py --preset smoke` on the IMDB mirror, end to end, then the demo on its output; on tiny
IMDB-like folders, the checks that stop it before anything is tokenized and the classes of its classifier."""

import json
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest
from datasets import ClassLabel, Value
from test_hub_and_metrics import TINY_TRAINING
from tiny_imdb import tiny_reviews, write_imdb_like
from transformers import pipeline, set_seed

import awd_lstm_hf  # noqa: F401

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))
from demo import GENERATION  # noqa: E402
from lm_two_processes import launch_two_cpu_processes  # noqa: E402


@pytest.mark.slow
@pytest.mark.integration
def test_smoke_preset_trains_both_stages_and_pipelines_load(imdb_path, tmp_path):
    out = tmp_path / "smoke"
    run = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "train.py"), "--preset", "smoke", "--dataset", str(imdb_path),
         "--output_dir", str(out)],
        capture_output=True, text=True, timeout=1500,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    # at least 50 optimizer steps in each stage, as the steps the trainers took say
    assert len(metrics["lm"]["stage_steps"]) == len(metrics["settings"]["lm_stages"])
    assert len(metrics["classifier"]["stage_steps"]) == len(metrics["settings"]["clas_stages"])
    assert min(metrics["lm"]["stage_steps"] + metrics["classifier"]["stage_steps"]) >= 50
    assert metrics["classifier"]["test_documents"] == 1000
    assert 1 < metrics["lm"]["perplexity"] < metrics["vocab_size"]  # learned something: better than uniform
    assert 0.5 <= metrics["classifier"]["test_accuracy"] <= 1
    card = (out / "classifier" / "README.md").read_text()
    assert f"{metrics['classifier']['test_accuracy']:.4f}" in card

    generated = pipeline("text-generation", model=str(out / "lm"))("I liked this movie", max_new_tokens=10)
    assert generated[0]["generated_text"].startswith("I liked this movie ")
    labels = pipeline("text-classification", model=str(out / "classifier"))("a complete triumph", top_k=None)
    assert {item["label"] for item in labels} == {"neg", "pos"}

    demos = [subprocess.run([sys.executable, str(REPO / "scripts" / "demo.py"), "--output_dir", str(out)],
                            capture_output=True, text=True, timeout=600) for _ in range(2)]
    assert demos[0].returncode == 0, demos[0].stderr[-3000:]
    assert demos[0].stdout == demos[1].stdout  # fixed seed: the same samples every time
    assert demos[0].stdout.count("[generate] I liked this movie") == 1 and "[generate] I hate this movie" in demos[0].stdout
    probabilities = [float(p) for p in re.findall(r"\b(?:neg|pos)=([0-9.]+)", demos[0].stdout)]
    assert len(probabilities) == 4 and sum(probabilities) == pytest.approx(2, abs=2e-4)

    # the demo's sampling: exactly 40 new tokens, never xxunk (id 0), as fastai's predict
    generate = pipeline("text-generation", model=str(out / "lm"))
    for seed in range(3):
        set_seed(seed)
        ids = generate("I hate this movie", return_tensors=True, **GENERATION)[0]["generated_token_ids"]
        prompt = generate.tokenizer("I hate this movie")["input_ids"]
        assert len(ids) == len(prompt) + 40 and 0 not in ids[len(prompt):]


@pytest.mark.slow
@pytest.mark.integration
def test_smoke_preset_under_accelerate_launch_cpu_runs_two_processes(imdb_path, tmp_path):
    """`accelerate launch --cpu --num_processes 2` (through mpirun): 2 processes, each with its own rows of
    the LM stream (rows = 2 x lm_batch_size, one optimizer step per window) and half of each classifier
    epoch's batches."""
    out = tmp_path / "smoke2"
    command, env = launch_two_cpu_processes("accelerate", REPO / "scripts" / "train.py", "--preset", "smoke",
                                            "--dataset", str(imdb_path), "--output_dir", str(out))
    run = subprocess.run(command, capture_output=True, text=True, timeout=1500, env=env)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    settings, lm = metrics["settings"], metrics["lm"]
    assert metrics["processes"] == 2 and lm["rows"] == 2 * settings["lm_batch_size"]
    windows = math.ceil((lm["train_tokens"] - 1) // lm["rows"] / settings["bptt"])
    assert lm["stage_steps"] == [windows * stage["epochs"] for stage in settings["lm_stages"]]
    batches = settings["clas_train_docs"] // settings["clas_batch_size"] // 2  # full batches only, as fastai
    assert metrics["classifier"]["stage_steps"] == [batches * stage["epochs"] for stage in settings["clas_stages"]]
    assert metrics["classifier"]["test_documents"] == 1000
    # each process takes half the smoke preset's classifier steps: its accuracy may sit at chance, so only
    # that it is a count of the 1,000 test reviews (the single-process smoke test checks it learned)
    accuracy = metrics["classifier"]["test_accuracy"]
    assert 1 < lm["perplexity"] < metrics["vocab_size"] and 0 <= accuracy <= 1 and round(accuracy * 1000, 6).is_integer()


def test_accelerate_launch_cpu_without_mpi_says_how_to_start_several_processes(tmp_path):
    """Without a hostfile, `accelerate launch --cpu --num_processes 2` starts one process: train.py stops
    with the two ways to get two instead of silently training in one."""
    command = [str(Path(sys.executable).with_name("accelerate")), "launch", "--cpu", "--num_processes", "2",
               str(REPO / "scripts" / "train.py"), "--preset", "smoke", "--output_dir", str(tmp_path / "out")]
    run = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert run.returncode != 0
    assert "--mpirun_hostfile configs/localhost.hostfile" in run.stderr and "torchrun --nproc_per_node" in run.stderr
    assert not (tmp_path / "out").exists()


def test_precision_flag_takes_a_plain_word_and_refuses_others(capsys):
    import train

    args = train.parse_args(["--preset", "parity", "--output_dir", "unused", "--precision", "bf16"])
    assert args.settings["precision"] == "bf16"
    assert train.parse_args(["--preset", "parity", "--output_dir", "unused"]).settings["precision"] == "fp32"
    with pytest.raises(SystemExit):
        train.parse_args(["--preset", "parity", "--output_dir", "unused", "--precision", "half"])
    assert "invalid choice" in capsys.readouterr().err


def tiny_run(dataset: Path, output_dir: Path, **overrides) -> list[str]:
    """train.py's arguments for a run of a few seconds (TINY_TRAINING, changed by OVERRIDES)."""
    settings = TINY_TRAINING | overrides
    return ["--preset", "smoke", "--dataset", str(dataset), "--output_dir", str(output_dir), "--num_proc", "1",
            *(arg for key, value in settings.items() for arg in (f"--{key}", json.dumps(value)))]


@pytest.fixture()
def train_before_tokenizing(monkeypatch):
    """train.py's module, failing the test if it gets as far as tokenizing."""
    import train

    monkeypatch.setattr(train, "prepare_text", lambda *args, **kwargs: pytest.fail("train.py tokenized the reviews"))
    return train


@pytest.mark.parametrize("split, row, column, value, label_feature, message", [
    ("train", 17, "text", None, None, "split 'train', row 17: text is None"),
    ("test", 39, "text", None, None, "split 'test', row 39: text is None"),
    ("unsupervised", 0, "text", None, None, "split 'unsupervised', row 0: text is None"),
    ("train", 5, "label", -1, None, "split 'train', row 5: label -1 is not one of the classes {0: 'neg', 1: 'pos'}"),
    ("test", 0, "label", 2, Value("int64"),  # plain integers: the classes are 0..1, the train split's
     "split 'test', row 0: label 2 is not one of the classes {0: 'LABEL_0', 1: 'LABEL_1'}"),
])
def test_a_bad_row_stops_train_py_before_anything_is_tokenized(train_before_tokenizing, tmp_path, split, row, column,
                                                              value, label_feature, message):
    """The row as loaded (train row 17, not its place in the shuffled LM corpus), before the LM stage."""
    reviews = tiny_reviews(seed=0)
    reviews[split][["text", "label"].index(column)][row] = value
    dataset = write_imdb_like(tmp_path / "data", reviews, label_feature)
    with pytest.raises(ValueError, match=re.escape(message)):
        train_before_tokenizing.main(tiny_run(dataset, tmp_path / "out"))
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("overrides, n_train", [
    ({"clas_train_docs": 7, "clas_batch_size": 8}, 7),
    ({"clas_train_docs": None, "clas_valid_docs": 55, "clas_batch_size": 8}, 60 - 55),  # valid carved from train
])
def test_a_classifier_training_set_smaller_than_a_batch_stops_train_py_before_the_lm_stage(
        train_before_tokenizing, tiny_imdb, tmp_path, overrides, n_train):
    """Its last incomplete batch would be dropped, leaving the classifier stage nothing to train on."""
    message = (f"{n_train} training documents do not fill one batch of --clas_batch_size 8: the last incomplete "
               "batch of an epoch is dropped (as fastai does), so there would be nothing to train on. Use a "
               f"--clas_batch_size of at most {n_train}, or more training documents.")
    with pytest.raises(ValueError, match=re.escape(message)):
        train_before_tokenizing.main(tiny_run(tiny_imdb, tmp_path / "out", **overrides))
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("label_feature, names", [
    (ClassLabel(names=["positive", "negative"]), ["positive", "negative"]),  # 0 = positive: not IMDB's order
    (ClassLabel(names=["bad", "fine", "good"]), ["bad", "fine", "good"]),
    (Value("int64"), ["LABEL_0", "LABEL_1", "LABEL_2"]),  # plain integers 0..2: transformers' names
])
def test_the_classifier_predicts_the_classes_of_the_dataset(tmp_path, label_feature, names):
    """id2label and label2id are the dataset's (never IMDB's neg/pos by default), as are the pipeline's labels
    and the model card's description."""
    import train

    dataset = write_imdb_like(tmp_path / "data", tiny_reviews(seed=0, n_classes=len(names)), label_feature)
    train.main(tiny_run(dataset, tmp_path / "out"))
    folder = tmp_path / "out" / "classifier"
    config = json.loads((folder / "config.json").read_text())
    assert config["id2label"] == {str(index): name for index, name in enumerate(names)}
    assert config["label2id"] == {name: index for index, name in enumerate(names)}
    scores = pipeline("text-classification", model=str(folder))("a good movie", top_k=None)
    assert sorted(item["label"] for item in scores) == sorted(names)
    card = (folder / "README.md").read_text()
    assert f"An AWD-LSTM (text classifier, labels: {', '.join(names)})" in card
    assert "labels: neg, pos" not in card
