"""`evaluate` metric modules shipped in the package, so they load offline: `evaluate.load("accuracy")`
fetches its script from the Hub, `awd_lstm_hf.metrics.load("accuracy")` reads it from here.

- `accuracy`, `f1`: classification metrics (F1 `average="binary"` with `pos_label`, or `"macro"`).
- `perplexity`: an awd-lstm-hf language model's perplexity on given texts (the Hub's "perplexity" loads
  gpt2), the same for any batch size and padding side.
"""

from pathlib import Path

import evaluate

METRICS_DIR = Path(__file__).resolve().parent
NAMES = sorted(path.name for path in METRICS_DIR.iterdir() if (path / f"{path.name}.py").is_file())


def load(name: str, **kwargs) -> evaluate.EvaluationModule:
    """`evaluate.load` of the metric script `name` shipped in this package (keyword arguments pass through)."""
    if name not in NAMES:
        raise ValueError(f"no metric {name!r} in awd_lstm_hf.metrics; choose one of {NAMES}")
    return evaluate.load(str(METRICS_DIR / name), **kwargs)
