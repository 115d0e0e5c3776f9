"""`scripts/train.py --preset smoke` on the IMDB mirror, end to end, then the demo on its output."""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from transformers import pipeline, set_seed

import awd_lstm_hf  # noqa: F401

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))
from demo import GENERATION  # noqa: E402


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
