"""Shared fixtures: where the fastai ground truth and the IMDB mirror live.

Integration data is looked up beside the repository (``../shared``), as laid out on the
development machines and in CI. Under CI (``CI=true``) a missing mirror is a failure;
elsewhere the tests that need it skip and say why.
"""
import os
from pathlib import Path

import pytest
from tiny_imdb import write_tiny_imdb

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("AWD_LSTM_SHARED", REPO_ROOT.parent / "shared"))
FIXTURES = SHARED / "fixtures"
IMDB_MIRROR = SHARED / "data" / "imdb"


def _require(path: Path, what: str) -> Path:
    if path.exists():
        return path
    message = f"{what} not found at {path}"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message + " (required under CI)")
    pytest.skip(message)


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    return _require(FIXTURES, "fastai fixtures")


@pytest.fixture(scope="session")
def imdb_path() -> Path:
    return _require(IMDB_MIRROR, "IMDB mirror")


@pytest.fixture(scope="module")
def tiny_imdb(tmp_path_factory) -> Path:
    """A folder laid out like the IMDB mirror (train/test/unsupervised parquet files and its configs), with
    random reviews; one test review is long (over 600 tokens), so truncation would show."""
    return write_tiny_imdb(tmp_path_factory.mktemp("tiny_imdb"), seed=0)


