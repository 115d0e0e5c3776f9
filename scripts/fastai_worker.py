"""The fastai side of `scripts/benchmark.py --compare-fastai PYTHON`: run by PYTHON (a venv with fastai
2.8.12, see ../shared/tools/setup_fastai_venv.sh), never imported by the project.

It reads one JSON request per line on stdin and answers one JSON line on stdout, so the benchmark can
alternate our runs and fastai's in one sitting, each side in its own warm process:

    {"task": "setup_lm", "itos": [...], "emb": 100, "hid": 256, "layers": 2, "threads": 2}
    {"task": "predict", "text": "I liked this movie", "n_words": 40, "temperature": 0.75, "seed": 0}
      -> {"seconds": 1.23, "words": 40, "text": "..."}
"""

import json
import sys
import time

import pandas as pd
import torch
from fastai.text.all import AWD_LSTM, TextDataLoaders, awd_lstm_lm_config, language_model_learner


def setup_lm(request: dict) -> dict:
    """A fastai language model learner of the requested sizes with random weights over the given
    vocabulary, as `language_model_learner(..., pretrained=False)` builds it."""
    torch.set_num_threads(request["threads"])
    torch.manual_seed(0)
    # A few throwaway documents: fastai's learner needs DataLoaders, which carry the vocabulary.
    df = pd.DataFrame({"text": ["a short review of a movie ."] * 16})
    dls = TextDataLoaders.from_df(df, text_col="text", is_lm=True, text_vocab=request["itos"], bs=2, seq_len=4,
                                  valid_pct=0.25, seed=0, n_workers=0)
    config = dict(awd_lstm_lm_config, emb_sz=request["emb"], n_hid=request["hid"], n_layers=request["layers"])
    state["learn"] = language_model_learner(dls, AWD_LSTM, config=config, pretrained=False)
    return {"vocab_size": len(dls.vocab), "threads": torch.get_num_threads()}


def predict(request: dict) -> dict:
    """One timed `learn.predict(text, n_words, temperature)`, the seed's call (no_unk on by default)."""
    torch.manual_seed(request["seed"])
    start = time.perf_counter()
    text = state["learn"].predict(request["text"], request["n_words"], temperature=request["temperature"])
    return {"seconds": time.perf_counter() - start, "words": request["n_words"], "text": text}


TASKS = {"setup_lm": setup_lm, "predict": predict}
state: dict = {}


def main():
    answers, sys.stdout = sys.stdout, sys.stderr  # whatever fastai prints stays off the answer channel
    for line in sys.stdin:
        request = json.loads(line)
        answers.write(json.dumps(TASKS[request["task"]](request)) + "\n")
        answers.flush()


if __name__ == "__main__":
    main()
