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
- `--update-card` writes each folder's results into its model card (table and `model-index`).
- The reviews come from the IMDB copy train.py recorded in the folders' `training_settings.json` (the
  held-out and test reviews are defined on it); `--dataset` is needed only for folders without one, and
  a `--dataset` that differs from the recorded one is used with a warning.

Generation: tokens/s of `model.generate` (sampling, temperature 0.75, as fastai's `predict`) at 40 and
400 new tokens, batch 1 and 16, on a model of the `cpu` preset's sizes with random weights (speed does
not depend on the weights). The recurrent state is carried, so the time per token stays flat: the
400-token run must not cost more than 12x the 40-token run.

`--compare-fastai PYTHON` (the interpreter of a venv with fastai 2.8.12, made with
../shared/tools/setup_fastai_venv.sh) also times our `pipeline("text-generation")` against fastai's
`learn.predict` on models of the same sizes and vocabulary, the seed's prompt and settings, alternating
the two sides round by round in one sitting (fastai runs in `scripts/fastai_worker.py`, its own warm
process), and reports medians and ratios. fastai's "words" are tokens: both sides produce exactly
`n_words` tokens.
"""

import argparse
import json
import os
import statistics
import subprocess
import time
import warnings
from pathlib import Path

import evaluate
import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, pipeline

from awd_lstm_hf import AWDLSTMConfig, AWDLSTMForCausalLM, AWDLSTMTokenizer, metrics
from awd_lstm_hf.data import IMDB_HUB_ID, classification_splits, lm_corpus, load_imdb, tokenize_corpus
from awd_lstm_hf.export import TRAINING_SETTINGS, record_benchmark
from awd_lstm_hf.tokenization_awd_lstm import SPECIAL_TOKENS

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


def generation_vs_fastai(python: str, preset: str, vocab_size: int, rounds: int) -> list[dict]:
    """Words/s of our text-generation pipeline and of fastai's `learn.predict`, same sizes, vocabulary,
    prompt and sampling (temperature 0.75, no top-k, `xxunk` never drawn), alternating round by round."""
    settings = json.loads((CONFIG_DIR / f"{preset}.json").read_text())
    itos = benchmark_vocabulary(vocab_size)
    generator = pipeline("text-generation", model=preset_model(preset, vocab_size),
                         tokenizer=AWDLSTMTokenizer.from_itos(itos))
    fastai = FastaiWorker(python)
    try:
        fastai.ask(task="setup_lm", itos=itos, emb=settings["embedding_size"], hid=settings["hidden_size"],
                   layers=settings["num_hidden_layers"], threads=torch.get_num_threads())
        times = {(side, n): [] for side in ("ours", "fastai") for n in (40, 400)}
        for round_index in range(rounds + 1):  # round 0 warms both sides up and is not counted
            for n in (40, 400):
                torch.manual_seed(round_index)
                start = time.perf_counter()
                generator(PROMPT, max_new_tokens=n, min_new_tokens=n, do_sample=True, temperature=0.75, top_k=0)
                ours = time.perf_counter() - start
                theirs = fastai.ask(task="predict", text=PROMPT, n_words=n, temperature=0.75, seed=round_index)["seconds"]
                if round_index:
                    times["ours", n].append(ours)
                    times["fastai", n].append(theirs)
    finally:
        fastai.close()
    rows = []
    for n in (40, 400):
        ours, theirs = (statistics.median(times[side, n]) for side in ("ours", "fastai"))
        rows.append({
            "benchmark": "generation_vs_fastai_predict", "preset_sizes": preset, "vocab_size": vocab_size,
            "words": n, "rounds": rounds, "ours_words_per_s": round(n / ours, 1),
            "fastai_words_per_s": round(n / theirs, 1), "speedup": round(theirs / ours, 1),
        })
    return rows


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


def classification_benchmark(model_dir: Path, reviews, about: str, batch_size: int, num_proc: int) -> dict:
    """`evaluate`'s text-classification evaluator with our accuracy and F1; throughput from its timing."""
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
        "accuracy": round(results["accuracy"], 4), "f1": round(results["f1"], 4),
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
        "perplexity": round(results["perplexity"], 2), "mean_perplexity": round(results["mean_perplexity"], 2),
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


def evaluation_benchmark(args) -> list[dict]:
    imdb = load_imdb(evaluation_dataset(args))
    reviews, about = imdb_test_reviews(imdb, args.test_docs, args.seed)
    rows = []
    if args.model:
        rows.append(classification_benchmark(args.model, reviews, about, args.batch_size, args.num_proc))
        if args.update_card:
            record_benchmark(args.model, {key: rows[-1][key] for key in ("accuracy", "f1")}, dataset=IMDB_HUB_ID,
                             split="test", table=card_table(rows[-1]))
    if args.lm:
        heldout, split, heldout_about = heldout_reviews(args.lm, imdb, (reviews, about), args.heldout_docs)
        rows.append(perplexity_benchmark(args.lm, heldout, heldout_about, args.batch_size))
        if args.update_card:
            record_benchmark(args.lm, {"perplexity": rows[-1]["perplexity"]}, dataset=IMDB_HUB_ID, split=split,
                             table=card_table(rows[-1]))
    return rows


def markdown_table(rows: list[dict]) -> str:
    columns = list(dict.fromkeys(key for row in rows for key in row))
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(str(row.get(c, "")) for c in columns) + " |" for row in rows]
    return "\n".join(lines)


def card_table(row: dict) -> str:
    """A result row for the model card of its folder: the card is the folder's, so no local path in it."""
    return markdown_table([{key: value for key, value in row.items() if key != "model"}])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("runs/benchmark"))
    parser.add_argument("--preset", default="cpu", help="model sizes from configs/PRESET.json")
    parser.add_argument("--vocab_size", type=int, default=15008)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--compare-fastai", metavar="PYTHON", help="a fastai 2.8.12 venv's interpreter")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds against fastai")
    evaluation = parser.add_argument_group("evaluation of model folders (instead of generation speed)")
    evaluation.add_argument("--model", type=Path, help="a classifier folder: accuracy, F1, throughput on IMDB test")
    evaluation.add_argument("--lm", type=Path, help="a language-model folder: perplexity on held-out reviews")
    evaluation.add_argument("--dataset", help="IMDB: Hub id or a local copy (default: the one the folders' "
                            f"training_settings.json records, else {IMDB_HUB_ID})")
    evaluation.add_argument("--test_docs", type=int, help="a sample of this many test reviews (default: all)")
    evaluation.add_argument("--heldout_docs", type=int, help="perplexity on the first N held-out reviews (default: all)")
    evaluation.add_argument("--seed", type=int, default=42, help="of the test sample (train.py's default seed)")
    evaluation.add_argument("--batch_size", type=int, default=16)
    evaluation.add_argument("--num_proc", type=int, default=os.cpu_count(), help="processes for counting tokens")
    evaluation.add_argument("--update-card", action="store_true", help="write the results into the folders' model cards")
    args = parser.parse_args(argv)
    if args.model or args.lm:
        rows = evaluation_benchmark(args)
    else:
        rows = generation_benchmark(args.preset, args.vocab_size, args.repeats)
    if args.compare_fastai:
        rows += generation_vs_fastai(args.compare_fastai, args.preset, args.vocab_size, args.rounds)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "benchmark.json").write_text(json.dumps({"torch_threads": torch.get_num_threads(), "results": rows}, indent=2))
    tables = [markdown_table([row for row in rows if row["benchmark"] == name])
              for name in dict.fromkeys(row["benchmark"] for row in rows)]
    (args.out / "benchmark.md").write_text("\n\n".join(tables) + "\n")
    print("\n\n".join(tables))


if __name__ == "__main__":
    main()
