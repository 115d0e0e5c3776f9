"""The fastai side of `scripts/benchmark.py --compare-fastai PYTHON`: run by PYTHON (a venv with fastai
2.8.12, see ../shared/tools/setup_fastai_venv.sh), never imported by the project.

It reads one JSON request per line on stdin and answers one JSON line on stdout, so the benchmark can
alternate our runs and fastai's in one sitting, each side in its own warm process. Data too large for a
line (token streams, review texts) comes as a file the benchmark wrote, so both sides read the same bytes.

    {"task": "setup_lm", "itos": [...], "emb": 100, "hid": 256, "layers": 2, "threads": 2}
    {"task": "predict", "text": "I liked this movie", "n_words": 40, "temperature": 0.75, "seed": 0}
      -> {"seconds": 1.23, "words": 40, "text": "..."}
    {"task": "lm_train", "corpus": "corpus.npz", "vocab_size": 15008, "emb": 100, "hid": 256, "layers": 2,
     "bs": 64, "bptt": 72, "lr": 0.01, "wd": 0.1, "drop_mult": 0.3, "warmup": 5, "steps": 30, "threads": 2}
      -> {"seconds": 9.8, "steps": 30, "tokens": 138240, "peak_rss_mib": 900.0, "rss_before_mib": 700.0}
    {"task": "setup_classifier", "itos": [...], "emb": 100, "hid": 256, "layers": 2, "bptt": 72,
     "max_len": 1440, "bs": 32, "threads": 2}
    {"task": "classify", "texts": "reviews.parquet", "bs": 32}  -> {"seconds": ..., "docs": ...}
    {"task": "classify_one_by_one", "texts": "reviews.parquet", "docs": 50}  -> {"seconds": ..., "docs": 50}
    {"task": "tokenize", "texts": "reviews.parquet"}  -> {"seconds": ..., "docs": ..., "tokens": ...}
"""

import json
import resource
import sys
import time

import numpy as np
import pandas as pd
import torch
from fastai.text.all import (
    AWD_LSTM,
    Callback,
    CancelFitException,
    DataLoaders,
    LMDataLoader,
    TextDataLoaders,
    awd_lstm_clas_config,
    awd_lstm_lm_config,
    defaults,
    language_model_learner,
    text_classifier_learner,
    tokenize_texts,
)


def current_rss_mib() -> float:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) / 1024 for line in status if line.startswith("VmRSS:"))


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def read_texts(path: str) -> list[str]:
    return pd.read_parquet(path)["text"].tolist()


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


class StepTimer(Callback):
    """Times training batches `warmup`+1 .. `warmup`+`steps` (optimizer step included, as fastai's batch
    loop runs it: data, forward, loss, AR/TAR, backward, step) and then ends the fit."""

    order = 100  # after every other callback of the batch

    def __init__(self, warmup: int, steps: int):
        self.warmup, self.steps, self.count, self.started, self.seconds = warmup, steps, 0, None, None

    def after_batch(self):
        if not self.training:
            return
        self.count += 1
        if self.count == self.warmup:
            self.started = time.perf_counter()
        elif self.count == self.warmup + self.steps:
            self.seconds = time.perf_counter() - self.started
            raise CancelFitException()


def lm_train(request: dict) -> dict:
    """`language_model_learner(...).fit_one_cycle(1, lr)` on the benchmark's token stream (fastai's
    `LMDataLoader`, shuffled documents, as `TextDataLoaders(is_lm=True)` builds it), a fresh model each call;
    the steps after the warm-up are timed."""
    torch.set_num_threads(request["threads"])
    torch.manual_seed(0)
    corpus = np.load(request["corpus"])
    documents = [torch.from_numpy(d) for d in np.split(corpus["tokens"], np.cumsum(corpus["lengths"])[:-1])]
    train = LMDataLoader(documents, bs=request["bs"], seq_len=request["bptt"], shuffle=True)
    valid = LMDataLoader(documents[:2], bs=request["bs"], seq_len=request["bptt"])
    dls = DataLoaders(train, valid)
    dls.vocab = [f"w{i}" for i in range(request["vocab_size"])]
    if len(train) < request["warmup"] + request["steps"]:
        raise ValueError(f"the corpus gives {len(train)} batches, fewer than warm-up + timed steps")
    config = dict(awd_lstm_lm_config, emb_sz=request["emb"], n_hid=request["hid"], n_layers=request["layers"])
    learn = language_model_learner(dls, AWD_LSTM, config=config, pretrained=False, drop_mult=request["drop_mult"])
    timer = StepTimer(request["warmup"], request["steps"])
    before = current_rss_mib()
    with learn.no_bar(), learn.no_logging():
        learn.fit_one_cycle(1, request["lr"], wd=request["wd"], cbs=[timer])
    steps = request["steps"]
    return {"seconds": timer.seconds, "steps": steps, "tokens": steps * request["bs"] * request["bptt"],
            "rss_before_mib": round(before, 1), "peak_rss_mib": round(peak_rss_mib(), 1)}


def setup_classifier(request: dict) -> dict:
    """`text_classifier_learner(..., pretrained=False)` of the requested sizes over the given vocabulary,
    random weights; its DataLoaders (two labels, `bptt` as seq_len, fastai's default workers) serve `test_dl`."""
    torch.set_num_threads(request["threads"])
    torch.manual_seed(0)
    df = pd.DataFrame({"text": ["a good movie .", "a bad movie ."] * 8, "label": ["pos", "neg"] * 8})
    dls = TextDataLoaders.from_df(df, text_col="text", label_col="label", text_vocab=request["itos"],
                                  seq_len=request["bptt"], bs=request["bs"], valid_pct=0.25, seed=0)
    config = dict(awd_lstm_clas_config, emb_sz=request["emb"], n_hid=request["hid"], n_layers=request["layers"])
    state["classifier"] = text_classifier_learner(dls, AWD_LSTM, config=config, pretrained=False,
                                                  seq_len=request["bptt"], max_len=request["max_len"])
    return {"vocab_size": len(dls.vocab[0]), "threads": torch.get_num_threads(), "n_workers": dls.train.num_workers}


def classify(request: dict) -> dict:
    """Raw texts to class probabilities the batched way: `dls.test_dl(texts)` (which tokenises and
    numericalises) + `learn.get_preds(dl=...)`, both timed."""
    learn, texts = state["classifier"], read_texts(request["texts"])
    start = time.perf_counter()
    with learn.no_bar():
        predictions = learn.get_preds(dl=learn.dls.test_dl(texts, bs=request["bs"]))[0]
    return {"seconds": time.perf_counter() - start, "docs": len(predictions)}


def classify_one_by_one(request: dict) -> dict:
    """`learn.predict(text)` for the first `docs` texts, one call each."""
    learn, texts = state["classifier"], read_texts(request["texts"])[: request["docs"]]
    start = time.perf_counter()
    with learn.no_bar():
        for text in texts:
            learn.predict(text)
    return {"seconds": time.perf_counter() - start, "docs": len(texts)}


def tokenize(request: dict) -> dict:
    """fastai's tokenisation of the training path (`tokenize_texts`: its rules, spaCy, the post-rules), with
    its default number of worker processes (`defaults.cpus`)."""
    texts = read_texts(request["texts"])
    start = time.perf_counter()
    tokens = tokenize_texts(texts)
    return {"seconds": time.perf_counter() - start, "docs": len(tokens), "tokens": sum(len(t) for t in tokens),
            "n_workers": defaults.cpus}


TASKS = {"setup_lm": setup_lm, "predict": predict, "lm_train": lm_train, "setup_classifier": setup_classifier,
         "classify": classify, "classify_one_by_one": classify_one_by_one, "tokenize": tokenize}
state: dict = {}


def main():
    answers, sys.stdout = sys.stdout, sys.stderr  # whatever fastai prints stays off the answer channel
    for line in sys.stdin:
        request = json.loads(line)
        answers.write(json.dumps(TASKS[request["task"]](request)) + "\n")
        answers.flush()


if __name__ == "__main__":
    main()
