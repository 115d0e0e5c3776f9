"""Benchmarks, written as JSON and as a markdown table.

    python scripts/benchmark.py --out runs/benchmark            # generation speed, cpu-preset sizes
    python scripts/benchmark.py --compare-fastai ../.venv-fastai/bin/python   # and side by side with fastai
    python scripts/benchmark.py --model runs/cpu/classifier --lm runs/cpu/lm --dataset ../shared/data/imdb \
        --out runs/cpu/benchmark --update-card                  # evaluation of trained model folders

Evaluation (`--model` and/or `--lm`, offline with the metric modules of `awd_lstm_hf.metrics`):
- `--model`: `evaluate.evaluator("text-classification")` on the IMDB test split (all 25,000 reviews, or a
  label-stratified sample of `--test_docs` drawn with `--seed`: with train.py's seed and its
  `clas_test_docs`, the very reviews of its test evaluation): accuracy, F1 of `pos`, and reviews/s and
  tokens/s of the pipeline (tokenization included, `--batch_size` reviews per batch). Nothing is
  truncated: the evaluator asks for truncation, and our tokenizer's `model_max_length` is unlimited. The
  accuracy is the model's own in fp32; train.py's runs under its mixed precision (bf16 on some CPUs) and
  can differ by a few reviews.
- `--lm`: perplexity (`awd_lstm_hf.metrics` "perplexity": each review read from a zero state, corpus
  perplexity over all predicted tokens) on the reviews train.py held out from the LM's training, rebuilt
  from the folder's `training_settings.json` (its seed, `lm_docs`, `lm_valid_pct`); for a folder without
  one (e.g. a converted checkpoint), on the classification test reviews above, which the LM may have
  seen. `--heldout_docs N` takes the first N. Plus reviews/s and tokens/s.
- Each folder must hold the head of its flag (config.json's `architectures`), else nothing is evaluated.
- `--update-card` writes each folder's results into its model card (table and `model-index`; an undefined
  value, JSON null, gets no `model-index` entry), after benchmark.json and benchmark.md; a folder without a
  README.md gets a card from the package's template, a README without YAML metadata gets the package's
  metadata. A card that cannot be read is an error before the evaluation.
- The reviews come from the IMDB copy train.py recorded in the folders' `training_settings.json` (the
  held-out and test reviews are defined on it); `--dataset` is needed only for folders without one, and
  a `--dataset` that differs from the recorded one is used with a warning.

Generation: tokens/s of `model.generate` (sampling, temperature 0.75, as fastai's `predict`) at 40 and
400 new tokens, batch 1 and 16, on a model of the `cpu` preset's sizes with random weights (speed does
not depend on the weights). The recurrent state is carried, so the time per token stays flat: the
400-token run must not cost more than 12x the 40-token run.

`--compare-fastai PYTHON` (the interpreter of a venv with fastai 2.8.12, made with
../shared/tools/setup_fastai_venv.sh) measures every hot path against fastai on models of the preset's
sizes with random weights, the same data and the same torch threads on both sides, the two sides
alternating round by round in one sitting (fastai runs in `scripts/fastai_worker.py`), and writes the
medians and ratios with the machine's description to `--doc` (docs/benchmarks.md, JSON beside it):
- LM training tokens/s: train.py's path (`fit_one_cycle` with `LMTrainer`, our mixed precision) vs
  `language_model_learner(...).fit_one_cycle` (fastai autocasts only on CUDA, so fp32 on a CPU), the
  preset's batch, bptt, lr, weight decay and dropouts, one random-token corpus; `--train_steps` timed
  after `--train_warmup` steps. Every run is a fresh process, whose peak RSS (`ru_maxrss`) is the
  training-memory line.
- Classifier docs/s from raw IMDB test reviews (`--clas_docs`): `pipeline("text-classification",
  batch_size=...)` vs `dls.test_dl(texts)` + `get_preds` (both tokenise) and vs `learn.predict` one by one
  (`--predict_docs`), with a vocabulary made from those reviews.
- Generation words/s: `pipeline("text-generation")` vs `learn.predict` at 40 and 400 words (fastai's
  "words" are tokens: both sides produce exactly that many).
- Tokenisation docs/s of the IMDB reviews (`--tokenize_docs`, default all 100,000): `tokenize_corpus`
  (`--num_proc` processes) from a cold datasets cache, and again from the cache, vs fastai's
  `tokenize_texts` with its default workers; the token counts of both sides are recorded.

    python scripts/benchmark.py --compare-fastai ../venv-fastai/bin/python --dataset ../shared/data/imdb
"""

import argparse
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections import Counter
from itertools import chain
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch
from datasets import Dataset, concatenate_datasets
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, TrainerCallback, pipeline

from awd_lstm_hf import AWDLSTMConfig, AWDLSTMForCausalLM, AWDLSTMForSequenceClassification, AWDLSTMTokenizer, metrics
from awd_lstm_hf.data import (
    IMDB_HUB_ID,
    LMStreamDataset,
    classification_splits,
    lm_corpus,
    load_imdb,
    tokenize_corpus,
)
from awd_lstm_hf.export import PIPELINE_TAGS, TRAINING_SETTINGS, folder_card, pipeline_tag, record_benchmark
from awd_lstm_hf.tokenization_awd_lstm import SPECIAL_TOKENS, build_vocab, fastai_tokenize_batch
from awd_lstm_hf.training import LMTrainer, Stage, describe_precision, fit_one_cycle, mixed_precision

SCRIPTS_DIR = Path(__file__).resolve().parent
CONFIG_DIR = SCRIPTS_DIR.parent / "configs"
PROMPT = "I liked this movie"  # the seed's call: learn.predict(PROMPT, n_words, temperature=0.75)


def preset_model(preset: str, vocab_size: int) -> AWDLSTMForCausalLM:
    settings = json.loads((CONFIG_DIR / f"{preset}.json").read_text())
    config = AWDLSTMConfig(
        vocab_size=vocab_size,
        embedding_size=settings["embedding_size"],
        hidden_size=settings["hidden_size"],
        num_hidden_layers=settings["num_hidden_layers"],
    )
    torch.manual_seed(0)
    return AWDLSTMForCausalLM(config).eval()


@torch.no_grad()
def time_generation(model, batch_size: int, new_tokens: int, repeats: int) -> float:
    """Median seconds of one `generate` call producing exactly `new_tokens` per row."""
    prompt = torch.randint(9, model.config.vocab_size, (batch_size, 5))
    times = []
    for seed in range(repeats):
        torch.manual_seed(seed)
        start = time.perf_counter()
        model.generate(prompt, attention_mask=torch.ones_like(prompt), do_sample=True, temperature=0.75, top_k=0,
                       max_new_tokens=new_tokens, min_new_tokens=new_tokens)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def generation_benchmark(preset: str, vocab_size: int, repeats: int) -> list[dict]:
    model = preset_model(preset, vocab_size)
    time_generation(model, 1, 5, 1)  # warm-up
    rows = []
    for batch_size in (1, 16):
        seconds = {n: time_generation(model, batch_size, n, repeats) for n in (40, 400)}
        for n, s in seconds.items():
            rows.append({
                "benchmark": "generation", "preset_sizes": preset, "vocab_size": vocab_size, "batch_size": batch_size,
                "new_tokens": n, "seconds": round(s, 4), "tokens_per_s": round(batch_size * n / s, 1),
                "ms_per_step": round(1000 * s / n, 3),
            })
        rows[-1]["ratio_400_vs_40"] = round(seconds[400] / seconds[40], 2)
    return rows


def benchmark_vocabulary(vocab_size: int) -> list[str]:
    """fastai's special tokens, the prompt's words, then fillers: a vocabulary of the requested size that
    both sides can read (generation speed depends on its size only)."""
    words = ["i", "liked", "this", "movie", "."]
    return [*SPECIAL_TOKENS, *words, *(f"word{i}" for i in range(vocab_size - len(SPECIAL_TOKENS) - len(words)))]


class FastaiWorker:
    """`scripts/fastai_worker.py` in the fastai venv: one JSON request per line, one JSON answer per line."""

    def __init__(self, python: str):
        self.process = subprocess.Popen([python, str(SCRIPTS_DIR / "fastai_worker.py")], stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, text=True)

    def ask(self, **request) -> dict:
        self.process.stdin.write(json.dumps(request) + "\n")
        self.process.stdin.flush()
        answer = self.process.stdout.readline()
        if not answer:
            raise RuntimeError(f"the fastai worker stopped (exit code {self.process.wait()}); see its stderr above")
        return json.loads(answer)

    def close(self):
        self.process.stdin.close()
        self.process.wait()


TABLE_KEYS = {"path", "unit", "ours", "fastai", "ratio", "target", "met", "rounds"}  # the rest are details


def median_ratio_row(path: str, unit: str, ours: list[float], theirs: list[float], target: float,
                     lower_is_better: bool = False, **details) -> dict:
    """One line of the side-by-side table: the medians of both sides' rounds, ours / fastai, and whether the
    target is met (ratio >= target for speeds, ratio <= target for memory)."""
    ours_median, theirs_median = statistics.median(ours), statistics.median(theirs)
    ratio = ours_median / theirs_median
    met = ratio <= target if lower_is_better else ratio >= target
    return {"path": path, "unit": unit, "ours": round(ours_median, 1), "fastai": round(theirs_median, 1),
            "ratio": round(ratio, 2), "target": f"{'<=' if lower_is_better else '>='} {target:g}", "met": met,
            "rounds": len(ours), **details}


def generation_vs_fastai(fastai: FastaiWorker, preset: str, vocab_size: int, rounds: int) -> list[dict]:
    """Words/s of our text-generation pipeline and of fastai's `learn.predict`, same sizes, vocabulary,
    prompt and sampling (temperature 0.75, no top-k, `xxunk` never drawn), alternating round by round."""
    settings = json.loads((CONFIG_DIR / f"{preset}.json").read_text())
    itos = benchmark_vocabulary(vocab_size)
    generator = pipeline("text-generation", model=preset_model(preset, vocab_size),
                         tokenizer=AWDLSTMTokenizer.from_itos(itos))
    fastai.ask(task="setup_lm", itos=itos, emb=settings["embedding_size"], hid=settings["hidden_size"],
               layers=settings["num_hidden_layers"], threads=torch.get_num_threads())
    words = {(side, n): [] for side in ("ours", "fastai") for n in (40, 400)}
    for round_index in range(rounds + 1):  # round 0 warms both sides up and is not counted
        for n in (40, 400):
            torch.manual_seed(round_index)
            start = time.perf_counter()
            generator(PROMPT, max_new_tokens=n, min_new_tokens=n, do_sample=True, temperature=0.75, top_k=0)
            ours = time.perf_counter() - start
            theirs = fastai.ask(task="predict", text=PROMPT, n_words=n, temperature=0.75, seed=round_index)["seconds"]
            if round_index:
                words["ours", n].append(n / ours)
                words["fastai", n].append(n / theirs)
    return [median_ratio_row(f"generation, {n} words (pipeline vs learn.predict)", "words/s", words["ours", n],
                             words["fastai", n], 20, vocab_size=vocab_size) for n in (40, 400)]


def random_token_corpus(path: Path, vocab_size: int, n_tokens: int, seed: int = 0) -> Path:
    """Documents of 100-400 random ids (each starting with `xxbos`) totalling at least `n_tokens`, saved as
    flat `tokens` + `lengths` for both sides. Training speed does not depend on the tokens' values."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(100, 401, n_tokens // 100 + 1)
    lengths = lengths[: int(np.searchsorted(np.cumsum(lengths), n_tokens)) + 1]
    tokens = rng.integers(9, vocab_size, int(lengths.sum()))
    tokens[np.cumsum(lengths) - lengths] = SPECIAL_TOKENS.index("xxbos")
    np.savez(path, tokens=tokens, lengths=lengths)
    return path


class _StepTimer(TrainerCallback):
    """Times optimizer steps `warmup`+1 .. `warmup`+`steps` (dataloader, forward, loss, AR/TAR, backward,
    optimizer and schedule) and then stops training."""

    def __init__(self, warmup: int, steps: int):
        self.warmup, self.steps, self.started, self.seconds = warmup, steps, None, None

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.warmup:
            self.started = time.perf_counter()
        elif state.global_step == self.warmup + self.steps:
            self.seconds = time.perf_counter() - self.started
            control.should_training_stop = True


def lm_train_ours(request: dict) -> dict:
    """Our side of `lm_train` (the fastai worker's request, run in a fresh process): train.py's LM path,
    `fit_one_cycle` with `LMTrainer` over a shuffled `LMStreamDataset`, under `mixed_precision()`."""
    torch.set_num_threads(request["threads"])
    corpus = np.load(request["corpus"])
    documents = np.split(corpus["tokens"], np.cumsum(corpus["lengths"])[:-1])
    stream = LMStreamDataset(documents, request["bs"], request["bptt"], shuffle=True, seed=0)
    if stream.n_windows < request["warmup"] + request["steps"]:
        raise ValueError(f"the corpus gives {stream.n_windows} batches, fewer than warm-up + timed steps")
    torch.manual_seed(0)
    model = AWDLSTMForCausalLM(AWDLSTMConfig(
        vocab_size=request["vocab_size"], embedding_size=request["emb"], hidden_size=request["hid"],
        num_hidden_layers=request["layers"], bptt=request["bptt"], drop_mult=request["drop_mult"]))
    timer = _StepTimer(request["warmup"], request["steps"])

    class TimedLMTrainer(LMTrainer):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.add_callback(timer)

    before = current_rss_mib()
    with tempfile.TemporaryDirectory() as output_dir:
        fit_one_cycle(model, Stage(epochs=1, lr=request["lr"], discriminative=False), stream, None,
                      trainer_class=TimedLMTrainer, output_dir=output_dir, batch_size=request["bs"],
                      weight_decay=request["wd"], seed=0, sampling="sequential", disable_tqdm=True,
                      logging_strategy="no")
    steps = request["steps"]
    return {"seconds": timer.seconds, "steps": steps, "tokens": steps * request["bs"] * request["bptt"],
            "rss_before_mib": round(before, 1), "peak_rss_mib": round(peak_rss_mib(), 1)}


def current_rss_mib() -> float:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) / 1024 for line in status if line.startswith("VmRSS:"))


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def lm_training_vs_fastai(python: str, settings: dict, vocab_size: int, rounds: int, warmup: int, steps: int,
                          work_dir: Path) -> list[dict]:
    """LM training tokens/s and peak RSS, ours vs fastai's `language_model_learner(...).fit_one_cycle`: the
    preset's sizes, batch, bptt, lr, weight decay and dropouts, the same random-token corpus. Every run is a
    fresh process (so `ru_maxrss` is that run's peak), alternating ours and fastai's round by round."""
    n_tokens = (warmup + steps + 2) * settings["lm_batch_size"] * settings["bptt"]
    stage = settings["lm_stages"][0]
    request = {
        "task": "lm_train", "corpus": str(random_token_corpus(work_dir / "corpus.npz", vocab_size, n_tokens)),
        "vocab_size": vocab_size, "emb": settings["embedding_size"], "hid": settings["hidden_size"],
        "layers": settings["num_hidden_layers"], "bs": settings["lm_batch_size"], "bptt": settings["bptt"],
        "lr": stage["lr"], "wd": settings["lm_weight_decay"], "drop_mult": settings["lm_drop_mult"],
        "warmup": warmup, "steps": steps, "threads": torch.get_num_threads(),
    }
    runs = {"ours": [], "fastai": []}
    for _ in range(rounds):
        ours = subprocess.run([sys.executable, __file__, "--lm-train-worker", json.dumps(request)],
                              capture_output=True, text=True, check=False)
        if ours.returncode != 0:
            raise RuntimeError(f"our LM training run failed:\n{ours.stderr[-3000:]}")
        runs["ours"].append(json.loads(ours.stdout.strip().splitlines()[-1]))
        fastai = FastaiWorker(python)
        try:
            runs["fastai"].append(fastai.ask(**request))
        finally:
            fastai.close()
    speed = {side: [run["tokens"] / run["seconds"] for run in side_runs] for side, side_runs in runs.items()}
    memory = {side: [run["peak_rss_mib"] for run in side_runs] for side, side_runs in runs.items()}
    before = {side: statistics.median(run["rss_before_mib"] for run in side_runs) for side, side_runs in runs.items()}
    sizes = {"vocab_size": vocab_size, "batch": f"{request['bs']} x {request['bptt']}", "timed_steps": steps,
             "precision_ours": describe_precision(mixed_precision()), "precision_fastai": "fp32"}
    return [
        median_ratio_row("LM training (fit_one_cycle)", "tokens/s", speed["ours"], speed["fastai"], 1.3, **sizes),
        median_ratio_row(f"LM training peak RSS ({warmup + steps} steps, fresh process)", "MiB", memory["ours"],
                         memory["fastai"], 1.0, lower_is_better=True, rss_before_training_ours=before["ours"],
                         rss_before_training_fastai=before["fastai"]),
    ]


def classifier_vocabulary(texts: list[str], vocab_size: int) -> list[str]:
    """fastai's `make_vocab` over the benchmark's own reviews (so ids are real words on both sides),
    at most `vocab_size` entries."""
    return build_vocab(Counter(chain.from_iterable(fastai_tokenize_batch(texts))), max_vocab=vocab_size)


def classification_vs_fastai(fastai: FastaiWorker, settings: dict, texts_file: Path, rounds: int,
                             predict_docs: int) -> list[dict]:
    """Docs/s from raw text to class probabilities: our `pipeline("text-classification", batch_size=...)` vs
    fastai's `dls.test_dl(texts)` + `get_preds` (tokenisation included on both sides) and vs one-by-one
    `learn.predict`, the same reviews, sizes, bptt, max_len and batch size, alternating round by round."""
    texts = pq.read_table(texts_file).column("text").to_pylist()
    itos = classifier_vocabulary(texts, settings["max_vocab"])
    config = AWDLSTMConfig(vocab_size=len(itos), embedding_size=settings["embedding_size"],
                           hidden_size=settings["hidden_size"], num_hidden_layers=settings["num_hidden_layers"],
                           bptt=settings["bptt"], max_len=settings["max_len"], num_labels=2,
                           id2label={0: "neg", 1: "pos"}, label2id={"neg": 0, "pos": 1})
    torch.manual_seed(0)
    batch_size = settings["clas_batch_size"]
    classifier = pipeline("text-classification", model=AWDLSTMForSequenceClassification(config).eval(),
                          tokenizer=AWDLSTMTokenizer.from_itos(itos), batch_size=batch_size)
    fastai.ask(task="setup_classifier", itos=itos, emb=settings["embedding_size"], hid=settings["hidden_size"],
               layers=settings["num_hidden_layers"], bptt=settings["bptt"], max_len=settings["max_len"],
               bs=batch_size, threads=torch.get_num_threads())
    docs_per_s = {"ours": [], "get_preds": [], "predict": []}
    for round_index in range(rounds + 1):  # round 0 warms both sides up and is not counted
        start = time.perf_counter()
        classifier(texts, top_k=None)
        ours = len(texts) / (time.perf_counter() - start)
        batched = fastai.ask(task="classify", texts=str(texts_file), bs=batch_size)
        one_by_one = fastai.ask(task="classify_one_by_one", texts=str(texts_file), docs=predict_docs)
        if round_index:
            docs_per_s["ours"].append(ours)
            docs_per_s["get_preds"].append(batched["docs"] / batched["seconds"])
            docs_per_s["predict"].append(one_by_one["docs"] / one_by_one["seconds"])
    details = {"docs": len(texts), "batch_size": batch_size, "vocab_size": len(itos)}
    return [
        median_ratio_row("classifier inference (pipeline vs test_dl + get_preds)", "docs/s", docs_per_s["ours"],
                         docs_per_s["get_preds"], 2, **details),
        median_ratio_row(f"classifier inference (pipeline vs learn.predict, {predict_docs} docs)", "docs/s",
                         docs_per_s["ours"], docs_per_s["predict"], 5, **details),
    ]


def tokenization_vs_fastai(fastai: FastaiWorker, texts_file: Path, rounds: int, num_proc: int,
                           work_dir: Path) -> list[dict]:
    """Reviews/s of tokenisation: our `tokenize_corpus` (datasets `map`, `num_proc` processes) from a cold
    cache, then again served from the datasets cache, vs fastai's `tokenize_texts` with its default workers.
    Each of our rounds reads the reviews into a new cache folder, so its first pass computes everything."""
    docs_per_s = {"cold": [], "cached": [], "fastai": []}
    counts = {}
    for round_index in range(rounds):
        dataset = Dataset.from_parquet(str(texts_file), cache_dir=str(work_dir / f"tokenize_cache_{round_index}"))
        for run in ("cold", "cached"):
            start = time.perf_counter()
            tokens = tokenize_corpus(dataset, num_proc=num_proc)
            docs_per_s[run].append(len(dataset) / (time.perf_counter() - start))
        counts["ours"] = pc.sum(pc.list_value_length(tokens.data.column("tokens"))).as_py()
        theirs = fastai.ask(task="tokenize", texts=str(texts_file))
        docs_per_s["fastai"].append(theirs["docs"] / theirs["seconds"])
        counts["fastai"] = theirs["tokens"]
    details = {"docs": len(dataset), "num_proc": num_proc, "tokens_ours": counts["ours"],
               "tokens_fastai": counts["fastai"]}
    return [
        median_ratio_row("tokenisation (tokenize_corpus vs tokenize_texts)", "docs/s", docs_per_s["cold"],
                         docs_per_s["fastai"], 2, **details),
        median_ratio_row("tokenisation, second run (datasets cache)", "docs/s", docs_per_s["cached"],
                         docs_per_s["fastai"], 2, **details),
    ]


def imdb_texts(dataset: str | None, n_docs: int | None, split: str | None, path: Path, seed: int = 0) -> Path:
    """The reviews a comparison reads, as one parquet file both sides load: `n_docs` of them drawn at random
    (seeded) from `split` (None: all splits, the LM corpus), all when `n_docs` is None."""
    imdb = load_imdb(dataset or IMDB_HUB_ID)
    reviews = concatenate_datasets([imdb[s].select_columns(["text"]) for s in ([split] if split else imdb)])
    if n_docs is not None and n_docs < len(reviews):
        reviews = reviews.shuffle(seed=seed).select(range(n_docs))
    reviews.select_columns(["text"]).flatten_indices().to_parquet(str(path))
    return path


def machine_description() -> dict:
    """What the figures were measured on: CPU model, cores, torch threads, versions, our precision."""
    cpu = "unknown"
    if Path("/proc/cpuinfo").is_file():
        cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                    if line.startswith("model name")), cpu)
    return {"cpu": cpu or platform.processor(), "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__, "python": platform.python_version(),
            "our_precision": describe_precision(mixed_precision())}


def comparison_markdown(machine: dict, settings: dict, rows: list[dict]) -> str:
    """docs/benchmarks.md: the machine, the settings, and one line per hot path (medians, ours / fastai)."""
    lines = [
        "# Side by side with fastai 2.8.12",
        "",
        "Written by `python scripts/benchmark.py --compare-fastai PYTHON` (see its docstring for what each line "
        "times). Medians over the rounds; the two sides alternate round by round on the same machine, with the "
        "same number of torch threads, the same data and the cpu preset's model sizes (random weights).",
        "",
        "Machine: " + ", ".join(f"{key} {value}" for key, value in machine.items()) + ".",
        "",
        "Settings: " + ", ".join(f"{key} {value}" for key, value in settings.items()) + ".",
        "",
        "| path | unit | ours | fastai | ours / fastai | target | met | rounds |",
        "|---|---|---:|---:|---:|---|---|---:|",
    ]
    lines += [f"| {r['path']} | {r['unit']} | {r['ours']:,} | {r['fastai']:,} | {r['ratio']} | {r['target']} | "
              f"{'yes' if r['met'] else 'no'} | {r['rounds']} |" for r in rows]
    lines += ["", "Details:", ""]
    lines += [f"- {r['path']}: " + ", ".join(f"{key} {value}" for key, value in r.items() if key not in TABLE_KEYS)
              for r in rows if set(r) - TABLE_KEYS]
    return "\n".join(lines) + "\n"


def compare_with_fastai(args) -> tuple[dict, list[dict]]:
    """Every hot path against fastai, in one sitting: LM training (speed and memory, fresh processes),
    classifier inference, generation, tokenisation."""
    settings = json.loads((CONFIG_DIR / f"{args.preset}.json").read_text())
    rows = []
    with tempfile.TemporaryDirectory() as work:
        work_dir = Path(work)
        rows += lm_training_vs_fastai(args.compare_fastai, settings, args.vocab_size, args.rounds,
                                      args.train_warmup, args.train_steps, work_dir)
        test_reviews = imdb_texts(args.dataset, args.clas_docs, "test", work_dir / "test_reviews.parquet", args.seed)
        all_reviews = imdb_texts(args.dataset, args.tokenize_docs, None, work_dir / "all_reviews.parquet", args.seed)
        fastai = FastaiWorker(args.compare_fastai)
        try:
            rows += classification_vs_fastai(fastai, settings, test_reviews, args.rounds, args.predict_docs)
            rows += generation_vs_fastai(fastai, args.preset, args.vocab_size, args.rounds)
            rows += tokenization_vs_fastai(fastai, all_reviews, args.rounds, args.num_proc, work_dir)
        finally:
            fastai.close()
    run_settings = {"preset": args.preset, "rounds": args.rounds, "LM warm-up steps": args.train_warmup,
                    "LM timed steps": args.train_steps, "classified reviews": args.clas_docs,
                    "predict reviews": args.predict_docs, "tokenised reviews": args.tokenize_docs or "all",
                    "tokenisation processes": args.num_proc}
    return run_settings, rows


def imdb_test_reviews(imdb, test_docs: int | None, seed: int):
    """The IMDB test split, or train.py's label-stratified sample of `test_docs` reviews for `seed`."""
    reviews = classification_splits(imdb, test_docs=test_docs, seed=seed)["test"]
    sample = f"label-stratified sample, seed {seed}" if test_docs else "the whole split"
    return reviews, f"IMDB test: {len(reviews)} reviews ({sample})"


def heldout_reviews(lm_dir: Path, imdb, fallback, heldout_docs: int | None):
    """The reviews train.py held out from the LM's training (from the folder's training settings), else
    `fallback` = (reviews, description); the first `heldout_docs` of them. Returns reviews, split, description."""
    settings_file = lm_dir / TRAINING_SETTINGS
    if settings_file.is_file():
        training = json.loads(settings_file.read_text())
        s = training["settings"]
        reviews = lm_corpus(imdb, max_docs=s["lm_docs"], valid_pct=s["lm_valid_pct"], seed=training["seed"])[1]
        split, about = "validation", (f"train.py's held-out LM reviews ({s['lm_valid_pct']:.0%} of "
                                      f"{s['lm_docs'] or 'all'} reviews, seed {training['seed']})")
    else:
        (reviews, about), split = fallback, "test"
        about += "; the LM's training data is unknown"
    if heldout_docs is not None and heldout_docs < len(reviews):
        reviews, about = reviews.select(range(heldout_docs)), f"first {heldout_docs} of {about}"
    return reviews, split, about


def defined(value: float, digits: int) -> float | None:
    """`value` rounded, or None (JSON null, no model-index entry) when it is undefined: NaN, e.g. the
    perplexity of reviews that give no prediction."""
    return None if math.isnan(value) else round(value, digits)


def classification_benchmark(model_dir: Path, reviews, about: str, batch_size: int, num_proc: int) -> dict:
    """`evaluate`'s text-classification evaluator with our accuracy and F1; throughput from its timing."""
    import evaluate  # here, not at the top: the LM training worker's peak RSS should not carry it

    evaluator = evaluate.evaluator("text-classification")
    evaluator.PIPELINE_KWARGS = {**evaluator.PIPELINE_KWARGS, "batch_size": batch_size}  # truncation=True stays
    dataset_labels = reviews.features["label"].names
    model_labels = AutoConfig.from_pretrained(model_dir).id2label.values()
    results = evaluator.compute(
        model_or_pipeline=str(model_dir), data=reviews,
        metric=evaluate.combine([metrics.load("accuracy"), metrics.load("f1")]),
        label_mapping={label: dataset_labels.index(label) for label in model_labels},
    )
    tokens = sum(len(tokens) for tokens in tokenize_corpus(reviews, num_proc=num_proc)["tokens"])
    return {
        "benchmark": "text-classification", "model": str(model_dir), "data": about,
        "accuracy": defined(results["accuracy"], 4), "f1": defined(results["f1"], 4),
        "docs_per_s": round(results["samples_per_second"], 1),
        "tokens_per_s": round(tokens / results["total_time_in_seconds"], 1), "batch_size": batch_size,
    }


def perplexity_benchmark(lm_dir: Path, reviews, about: str, batch_size: int) -> dict:
    """Perplexity of the language model on `reviews`; throughput includes tokenization."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model, tokenizer = AutoModelForCausalLM.from_pretrained(lm_dir).to(device), AutoTokenizer.from_pretrained(lm_dir)
    started = time.perf_counter()
    results = metrics.load("perplexity").compute(predictions=reviews["text"], model=model, tokenizer=tokenizer,
                                                 batch_size=batch_size)
    seconds = time.perf_counter() - started
    return {
        "benchmark": "lm-perplexity", "model": str(lm_dir), "data": about,
        "perplexity": defined(results["perplexity"], 2), "mean_perplexity": defined(results["mean_perplexity"], 2),
        "predicted_tokens": results["predicted_tokens"], "docs_per_s": round(len(reviews) / seconds, 1),
        "tokens_per_s": round((results["predicted_tokens"] + len(reviews)) / seconds, 1), "batch_size": batch_size,
    }


def recorded_dataset(folder: Path | None) -> str | None:
    """The `--dataset` train.py was given for the model folder, from its training settings (None without)."""
    settings_file = folder / TRAINING_SETTINGS if folder else None
    if settings_file is None or not settings_file.is_file():
        return None
    return json.loads(settings_file.read_text()).get("dataset")


def _is_local_path(dataset: str) -> bool:
    """A folder name rather than a Hub id (`owner/name`, at most one slash)."""
    return Path(dataset).expanduser().is_absolute() or dataset.startswith((".", "~")) or dataset.count("/") > 1


def same_dataset(a: str, b: str) -> bool:
    """The same Hub id, or paths to the same folder (a relative one read from the working directory)."""
    if a == b:
        return True
    a_path, b_path = Path(a).expanduser(), Path(b).expanduser()
    return a_path.is_dir() and b_path.is_dir() and a_path.resolve() == b_path.resolve()


def evaluation_dataset(args) -> str:
    """The IMDB copy to evaluate on: the one train.py recorded for the folders, since their held-out LM
    reviews and test sample are drawn from it; an explicit `--dataset` that differs wins, with a warning."""
    recorded = {folder: dataset for folder in dict.fromkeys(f for f in (args.lm, args.model) if f)
                if (dataset := recorded_dataset(folder)) is not None}
    if args.dataset is not None:
        for folder, dataset in recorded.items():
            if not same_dataset(dataset, args.dataset):
                warnings.warn(
                    f"--dataset {args.dataset} differs from the dataset {dataset!r} that train.py recorded in "
                    f"{folder / TRAINING_SETTINGS}: evaluating on {args.dataset}, so the held-out LM reviews and "
                    "the test sample are drawn from it and may not be those the model was held out from or "
                    "tested on (leave out --dataset to use the recorded one)", UserWarning, stacklevel=2)
        return args.dataset
    datasets = list(dict.fromkeys(recorded.values()))
    if len(datasets) > 1:
        raise SystemExit(f"the model folders record different datasets ({recorded}); choose one with --dataset")
    if not datasets:
        return IMDB_HUB_ID
    if _is_local_path(datasets[0]) and not Path(datasets[0]).expanduser().is_dir():
        raise SystemExit(f"the dataset recorded in {next(iter(recorded)) / TRAINING_SETTINGS}, {datasets[0]!r}, is "
                         f"not a folder seen from {Path.cwd()} (train.py ran elsewhere?); give it with --dataset")
    return datasets[0]


def check_folders(args) -> None:
    """Before any evaluation: `--model` is a classifier folder and `--lm` a language model's (another head
    would be evaluated with a freshly initialised head or decoder bias), and with `--update-card` their
    cards can take the results. Raises ValueError."""
    for flag, folder, expected in (("--model", args.model, "text-classification"), ("--lm", args.lm, "text-generation")):
        if folder is None:
            continue
        config = AutoConfig.from_pretrained(folder)
        try:
            tag = pipeline_tag(config)
        except ValueError as error:
            raise ValueError(f"{flag} {folder}: {error}") from error
        if tag != expected:
            wanted = next(name for name, task in PIPELINE_TAGS.items() if task == expected)
            raise ValueError(f"{flag} {folder} is a {tag} model (its config's architectures: {config.architectures}); "
                             f"{flag} takes a {expected} folder ({wanted})")
        if args.update_card:
            folder_card(folder)


def evaluation_benchmark(args) -> tuple[list[dict], list[dict]]:
    """The result rows, and for `--update-card` what `record_benchmark` writes into each folder's card (after
    the rows are saved: a card that fails to update loses no evaluation)."""
    imdb = load_imdb(evaluation_dataset(args))
    reviews, about = imdb_test_reviews(imdb, args.test_docs, args.seed)
    rows, cards = [], []
    if args.model:
        rows.append(classification_benchmark(args.model, reviews, about, args.batch_size, args.num_proc))
        cards.append(dict(folder=args.model, results={key: rows[-1][key] for key in ("accuracy", "f1")},
                          dataset=IMDB_HUB_ID, split="test", table=card_table(rows[-1])))
    if args.lm:
        heldout, split, heldout_about = heldout_reviews(args.lm, imdb, (reviews, about), args.heldout_docs)
        rows.append(perplexity_benchmark(args.lm, heldout, heldout_about, args.batch_size))
        cards.append(dict(folder=args.lm, results={"perplexity": rows[-1]["perplexity"]}, dataset=IMDB_HUB_ID,
                          split=split, table=card_table(rows[-1])))
    return rows, cards if args.update_card else []


def markdown_table(rows: list[dict]) -> str:
    def cell(value) -> str:
        return "undefined" if value is None else str(value)  # None: a NaN result, null in the JSON

    columns = list(dict.fromkeys(key for row in rows for key in row))
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(row.get(c, "")) for c in columns) + " |" for row in rows]
    return "\n".join(lines)


def card_table(row: dict) -> str:
    """A result row for the model card of its folder: the card is the folder's, so no local path in it."""
    return markdown_table([{key: value for key, value in row.items() if key != "model"}])


def at_least_one(value: str) -> int:
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {number}")
    return number


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("runs/benchmark"))
    parser.add_argument("--preset", default="cpu", help="model sizes from configs/PRESET.json")
    parser.add_argument("--vocab_size", type=int, default=15008)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, help="torch threads, on both sides (default: torch's own)")
    comparison = parser.add_argument_group("side by side with fastai")
    comparison.add_argument("--compare-fastai", metavar="PYTHON", help="a fastai 2.8.12 venv's interpreter")
    comparison.add_argument("--rounds", type=int, default=3, help="alternating rounds against fastai")
    comparison.add_argument("--train_warmup", type=int, default=5, help="LM training steps before the timing")
    comparison.add_argument("--train_steps", type=int, default=30, help="timed LM training steps")
    comparison.add_argument("--clas_docs", type=int, default=1000, help="IMDB test reviews to classify")
    comparison.add_argument("--predict_docs", type=int, default=50, help="of them, for fastai's one-by-one predict")
    comparison.add_argument("--tokenize_docs", type=int, help="reviews to tokenise (default: all 100,000)")
    comparison.add_argument("--doc", type=Path, default=Path("docs/benchmarks.md"),
                            help="the side-by-side table (markdown; JSON beside it with the same name)")
    comparison.add_argument("--lm-train-worker", metavar="REQUEST", help=argparse.SUPPRESS)
    evaluation = parser.add_argument_group("evaluation of model folders (instead of generation speed)")
    evaluation.add_argument("--model", type=Path, help="a classifier folder: accuracy, F1, throughput on IMDB test")
    evaluation.add_argument("--lm", type=Path, help="a language-model folder: perplexity on held-out reviews")
    evaluation.add_argument("--dataset", help="IMDB: Hub id or a local copy (default: the one the folders' "
                            f"training_settings.json records, else {IMDB_HUB_ID})")
    evaluation.add_argument("--test_docs", type=at_least_one, help="a sample of this many test reviews (default: all)")
    evaluation.add_argument("--heldout_docs", type=at_least_one,
                            help="perplexity on the first N held-out reviews (default: all)")
    evaluation.add_argument("--seed", type=int, default=42, help="of the test sample (train.py's default seed)")
    evaluation.add_argument("--batch_size", type=at_least_one, default=16)
    evaluation.add_argument("--num_proc", type=int, default=os.cpu_count(), help="processes for tokenising")
    evaluation.add_argument("--update-card", action="store_true", help="write the results into the folders' model cards")
    args = parser.parse_args(argv)
    if args.lm_train_worker:
        print(json.dumps(lm_train_ours(json.loads(args.lm_train_worker))))
        return
    if args.threads:
        torch.set_num_threads(args.threads)
    cards = []
    if args.model or args.lm:
        try:
            check_folders(args)
        except (OSError, ValueError) as error:
            parser.error(str(error))
        rows, cards = evaluation_benchmark(args)
    else:
        rows = generation_benchmark(args.preset, args.vocab_size, args.repeats)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "benchmark.json").write_text(json.dumps({"torch_threads": torch.get_num_threads(), "results": rows},
                                                        indent=2, allow_nan=False))
    tables = [markdown_table([row for row in rows if row["benchmark"] == name])
              for name in dict.fromkeys(row["benchmark"] for row in rows)]
    (args.out / "benchmark.md").write_text("\n\n".join(tables) + "\n")
    print("\n\n".join(tables))
    for card in cards:
        try:
            record_benchmark(**card)
        except (OSError, ValueError) as error:
            raise SystemExit(f"the results are saved in {args.out}, but the model card of {card['folder']} could not "
                             f"be updated: {error}") from error
    if args.compare_fastai:
        machine = machine_description()
        run_settings, comparison_rows = compare_with_fastai(args)
        document = comparison_markdown(machine, run_settings, comparison_rows)
        args.doc.parent.mkdir(parents=True, exist_ok=True)
        args.doc.write_text(document)
        args.doc.with_suffix(".json").write_text(json.dumps(
            {"machine": machine, "settings": run_settings, "results": comparison_rows}, indent=2))
        print(document)


if __name__ == "__main__":
    main()
