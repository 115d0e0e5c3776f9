"""A tiny folder laid out like the IMDB mirror, for tests that run train.py or the benchmark in seconds."""

import textwrap
from pathlib import Path

import numpy as np
from datasets import ClassLabel, Dataset, Features, Value

WORDS = ["i", "liked", "this", "movie", "it", "was", "bad", "good", "the", "plot", "actors", "and", "not", "a", "film"]


def random_review(rng: np.random.Generator, n_words: int) -> str:
    return " ".join(rng.choice(WORDS, n_words)).capitalize() + "."


def write_tiny_imdb(root: Path, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    features = Features({"text": Value("string"), "label": ClassLabel(names=["neg", "pos"])})
    for split, n, label in (("train", 60, None), ("test", 40, None), ("unsupervised", 20, -1)):
        texts = [random_review(rng, int(rng.integers(5, 60))) for _ in range(n)]
        if split == "test":
            texts[0] = random_review(rng, 650)
        labels = [label if label is not None else int(rng.integers(0, 2)) for _ in range(n)]
        Dataset.from_dict({"text": texts, "label": labels}, features=features).to_parquet(
            str(root / "plain_text" / f"{split}-00000-of-00001.parquet"))
    (root / "README.md").write_text(textwrap.dedent("""\
        ---
        configs:
        - config_name: plain_text
          data_files:
          - split: train
            path: plain_text/train-*
          - split: test
            path: plain_text/test-*
          - split: unsupervised
            path: plain_text/unsupervised-*
          default: true
        ---
        """))
    return root
