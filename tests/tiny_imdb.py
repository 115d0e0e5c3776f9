"""A tiny folder laid out like the IMDB mirror, for tests that run train.py or the benchmark in seconds."""

import textwrap
from pathlib import Path

import numpy as np
from datasets import ClassLabel, Dataset, Features, Value

WORDS = ["i", "liked", "this", "movie", "it", "was", "bad", "good", "the", "plot", "actors", "and", "not", "a", "film"]
SPLIT_SIZES = {"train": 60, "test": 40, "unsupervised": 20}


def random_review(rng: np.random.Generator, n_words: int) -> str:
    return " ".join(rng.choice(WORDS, n_words)).capitalize() + "."


def tiny_reviews(seed: int, n_classes: int = 2) -> dict[str, tuple[list, list]]:
    """split -> (texts, labels): random reviews of 5 to 59 words, random labels of `n_classes` (the unsupervised
    split's -1, as IMDB's); the first test review is long (650 words)."""
    rng = np.random.default_rng(seed)
    reviews = {}
    for split, n in SPLIT_SIZES.items():
        texts = [random_review(rng, int(rng.integers(5, 60))) for _ in range(n)]
        if split == "test":
            texts[0] = random_review(rng, 650)
        labels = [-1 if split == "unsupervised" else int(rng.integers(0, n_classes)) for _ in range(n)]
        reviews[split] = texts, labels
    return reviews


def write_imdb_like(root: Path, reviews: dict[str, tuple[list, list]], label_feature=None) -> Path:
    """REVIEWS (split -> (texts, labels)) as the mirror's parquet files and configs; labels are a ClassLabel
    neg/pos unless LABEL_FEATURE says otherwise."""
    features = Features({"text": Value("string"), "label": label_feature or ClassLabel(names=["neg", "pos"])})
    for split, (texts, labels) in reviews.items():
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


def write_tiny_imdb(root: Path, seed: int) -> Path:
    return write_imdb_like(root, tiny_reviews(seed))
