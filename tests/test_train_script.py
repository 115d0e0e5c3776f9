"""`scripts/train.py --preset smoke` on the IMDB mirror, end to end, then the demo on its output."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from transformers import pipeline

import awd_lstm_hf  # noqa: F401

REPO = Path(__file__).resolve().parents[1]


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
    settings = metrics["settings"]
    # at least 50 optimizer steps in each stage: LM windows of 32 rows x 72 tokens; classifier batches of 32
    lm_tokens = 0.9 * settings["lm_docs"] * 200  # IMDB reviews are well over 200 tokens each
    assert lm_tokens / (settings["lm_batch_size"] * settings["bptt"]) >= 50
    assert settings["clas_train_docs"] / settings["clas_batch_size"] >= 50
    assert metrics["classifier"]["test_documents"] == 1000
    assert 1 < metrics["lm"]["perplexity"] < metrics["vocab_size"]  # learned something: better than uniform
    assert 0.5 <= metrics["classifier"]["test_accuracy"] <= 1
    card = (out / "classifier" / "README.md").read_text()
    assert f"{metrics['classifier']['test_accuracy']:.4f}" in card

    generated = pipeline("text-generation", model=str(out / "lm"))("I liked this movie", max_new_tokens=10)
    assert generated[0]["generated_text"].startswith("I liked this movie ")
    labels = pipeline("text-classification", model=str(out / "classifier"))("a complete triumph", top_k=None)
    assert {item["label"] for item in labels} == {"neg", "pos"}

    demo = subprocess.run([sys.executable, str(REPO / "scripts" / "demo.py"), "--output_dir", str(out)],
                          capture_output=True, text=True, timeout=600)
    assert demo.returncode == 0, demo.stderr[-3000:]
    assert demo.stdout.count("[generate] I liked this movie") == 1 and "[generate] I hate this movie" in demo.stdout
    assert demo.stdout.count("[classify]") == 2
