"""`scripts/benchmark.py --compare-fastai`: the table's maths, the shared random-token corpus, our LM training
worker, and the fastai worker's tasks (only where a fastai venv is found: the project never needs fastai)."""

import importlib.util
import json
import os
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = REPO_ROOT / "scripts"
FASTAI_PYTHON = Path(os.environ.get("AWD_LSTM_FASTAI_PYTHON", REPO_ROOT.parent / "venv-fastai" / "bin" / "python"))


@pytest.fixture(scope="module")
def benchmark():
    """scripts/benchmark.py as a module. Its workers set torch's thread count for the process they run in;
    the count is restored afterwards, or later tests would compute with other threads than their subprocesses
    (and differ from them in the last bits)."""
    threads = torch.get_num_threads()
    spec = importlib.util.spec_from_file_location("benchmark", SCRIPTS / "benchmark.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    yield module
    torch.set_num_threads(threads)


def test_median_ratio_row_takes_medians_and_checks_the_target(benchmark):
    speed = benchmark.median_ratio_row("p", "docs/s", [10.0, 30.0, 20.0], [4.0, 8.0, 5.0], 2, docs=7)
    assert speed == {"path": "p", "unit": "docs/s", "ours": 20.0, "fastai": 5.0, "ratio": 4.0, "target": ">= 2",
                     "met": True, "rounds": 3, "docs": 7}
    assert benchmark.median_ratio_row("p", "docs/s", [3.0, 1.0], [2.0, 2.0], 2)["ratio"] == 1.0  # median of two
    assert not benchmark.median_ratio_row("p", "docs/s", [3.0], [2.0], 2)["met"]
    memory = benchmark.median_ratio_row("m", "MiB", [900.0], [1000.0], 1.0, lower_is_better=True)
    assert (memory["ratio"], memory["target"], memory["met"]) == (0.9, "<= 1", True)
    assert not benchmark.median_ratio_row("m", "MiB", [1100.0], [1000.0], 1.0, lower_is_better=True)["met"]


def test_comparison_markdown_has_one_line_per_path_and_the_details(benchmark):
    rows = [benchmark.median_ratio_row("LM training", "tokens/s", [2600.0], [2000.0], 1.3, batch="64 x 72"),
            benchmark.median_ratio_row("tokenisation", "docs/s", [150.0], [100.0], 2)]
    text = benchmark.comparison_markdown({"cpu": "Some CPU", "cores": 2}, {"rounds": 1}, rows)
    assert "Machine: cpu Some CPU, cores 2." in text
    assert "| LM training | tokens/s | 2,600.0 | 2,000.0 | 1.3 | >= 1.3 | yes | 1 |" in text
    assert "| tokenisation | docs/s | 150.0 | 100.0 | 1.5 | >= 2 | no | 1 |" in text
    assert "- LM training: batch 64 x 72" in text and "- tokenisation:" not in text


def test_machine_description_names_cpu_cores_and_threads(benchmark):
    machine = benchmark.machine_description()
    assert machine["cores"] == os.cpu_count() and machine["torch_threads"] >= 1 and machine["cpu"]


def test_random_token_corpus_is_documents_starting_with_xxbos(benchmark, tmp_path):
    corpus = np.load(benchmark.random_token_corpus(tmp_path / "c.npz", vocab_size=50, n_tokens=1000))
    tokens, lengths = corpus["tokens"], corpus["lengths"]
    assert lengths.sum() == len(tokens) >= 1000 and lengths.sum() - lengths[-1] < 1000  # no more than needed
    assert ((lengths >= 100) & (lengths <= 400)).all()
    starts = np.cumsum(lengths) - lengths
    assert (tokens[starts] == 2).all()
    rest = np.delete(tokens, starts)
    assert rest.min() >= 9 and rest.max() < 50
    again = np.load(benchmark.random_token_corpus(tmp_path / "d.npz", vocab_size=50, n_tokens=1000))
    assert np.array_equal(again["tokens"], tokens)  # seeded: both sides and every round read the same stream


def tiny_lm_request(tmp_path, benchmark) -> dict:
    corpus = benchmark.random_token_corpus(tmp_path / "corpus.npz", vocab_size=40, n_tokens=(1 + 2 + 2) * 4 * 8)
    return {"task": "lm_train", "corpus": str(corpus), "vocab_size": 40, "emb": 8, "hid": 12, "layers": 2, "bs": 4,
            "bptt": 8, "lr": 0.01, "wd": 0.1, "drop_mult": 0.3, "warmup": 1, "steps": 2, "threads": 1}


LM_TRAIN_KEYS = {"seconds", "steps", "tokens", "rss_before_mib", "peak_rss_mib"}


def test_our_lm_training_worker_times_the_requested_steps(benchmark, tmp_path):
    answer = benchmark.lm_train_ours(tiny_lm_request(tmp_path, benchmark))
    assert set(answer) == LM_TRAIN_KEYS
    assert answer["steps"] == 2 and answer["tokens"] == 2 * 4 * 8 and answer["seconds"] > 0
    assert answer["peak_rss_mib"] >= answer["rss_before_mib"] > 0


def test_our_lm_training_worker_refuses_a_corpus_too_short(benchmark, tmp_path):
    request = tiny_lm_request(tmp_path, benchmark) | {"steps": 50}
    with pytest.raises(ValueError, match="fewer than warm-up"):
        benchmark.lm_train_ours(request)


@pytest.mark.slow
@pytest.mark.skipif(not FASTAI_PYTHON.is_file(), reason=f"no fastai venv at {FASTAI_PYTHON} (set AWD_LSTM_FASTAI_PYTHON)")
def test_fastai_worker_answers_every_task_with_its_keys(benchmark, tmp_path):
    texts = ["A great film, I loved it.", "Awful. Just AWFUL!!!", "It was ok , I guess"]
    texts_file = tmp_path / "texts.parquet"
    pd.DataFrame({"text": texts}).to_parquet(texts_file)
    itos = benchmark.classifier_vocabulary(texts, 100)
    worker = benchmark.FastaiWorker(str(FASTAI_PYTHON))
    try:
        assert set(worker.ask(**tiny_lm_request(tmp_path, benchmark))) == LM_TRAIN_KEYS
        setup = worker.ask(task="setup_classifier", itos=itos, emb=8, hid=12, layers=2, bptt=8, max_len=16, bs=2, threads=1)
        assert setup["vocab_size"] == len(itos) and setup["threads"] == 1
        batched = worker.ask(task="classify", texts=str(texts_file), bs=2)
        assert batched["docs"] == 3 and batched["seconds"] > 0
        one_by_one = worker.ask(task="classify_one_by_one", texts=str(texts_file), docs=2)
        assert one_by_one["docs"] == 2 and one_by_one["seconds"] > 0
        tokens = worker.ask(task="tokenize", texts=str(texts_file))
        # the same tokens as ours: fastai's rules, spaCy and post-rules on both sides
        ours = benchmark.fastai_tokenize_batch(texts)
        assert (tokens["docs"], tokens["tokens"]) == (3, sum(len(t) for t in ours))
    finally:
        worker.close()


def test_lm_training_worker_runs_as_a_fresh_process(benchmark, tmp_path):
    """The memory figure needs its own process: the hidden --lm-train-worker flag prints one JSON answer."""
    import subprocess

    request = tiny_lm_request(tmp_path, benchmark)
    run = subprocess.run([sys.executable, str(SCRIPTS / "benchmark.py"), "--lm-train-worker", json.dumps(request)],
                         capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, check=True)
    assert set(json.loads(run.stdout.strip().splitlines()[-1])) == LM_TRAIN_KEYS
