"""Learning curves of our ULMFiT run and fastai's, same protocol on both sides, per seed.

For each seed: `scripts/train.py --preset PRESET --seed SEED` (ours), then fastai 2.8.12 itself
(`scripts/fastai_learning_curve.py`, run by the interpreter of a fastai venv) on exactly the reviews our run
used (`train.select_reviews`), with our run's vocabulary and the preset's sizes, epochs, learning rates,
batch sizes, dropouts and weight decays; each classifier starts from its own side's LM encoder. Compares the
LM validation perplexity after every epoch (same held-out reviews) and the classifier validation accuracy
after every epoch (same validation reviews), writes OUTPUT_DIR/learning_curves.json and .md. Finished runs
are read back, so an interrupted comparison continues where it stopped.

    python scripts/learning_curves.py --fastai-python /work/venv-fastai/bin/python \\
        --dataset ../shared/data/imdb --output_dir runs/curves --seeds 0 1
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

from awd_lstm_hf.data import load_imdb
from awd_lstm_hf.tokenization_awd_lstm import AWDLSTMTokenizer

SCRIPTS = Path(__file__).resolve().parent
sys.path.insert(0, str(SCRIPTS))
from train import select_reviews  # noqa: E402

PERPLEXITY_TOLERANCE = 0.05  # relative, final LM epoch, mean over seeds
ACCURACY_TOLERANCE = 0.015  # absolute, final classifier epoch, mean over seeds


def run_ours(args, seed: int) -> Path:
    out = args.output_dir / f"ours_seed{seed}"
    if not (out / "metrics.json").is_file():
        subprocess.run([sys.executable, str(SCRIPTS / "train.py"), "--preset", args.preset, "--dataset", args.dataset,
                        "--output_dir", str(out), "--seed", str(seed)], check=True,
                       env=dict(os.environ, OMP_NUM_THREADS=str(args.threads)))
    return out


def export_for_fastai(imdb, ours: Path, seed: int, data: Path) -> None:
    """The reviews, vocabulary and settings of our run, as fastai_learning_curve.py reads them."""
    settings = json.loads((ours / "metrics.json").read_text())["settings"]
    (lm_train, lm_valid), splits = select_reviews(imdb, settings, seed)
    data.mkdir(parents=True, exist_ok=True)
    for name, dataset in {"lm_train": lm_train, "lm_valid": lm_valid,
                          "clas_train": splits["train"], "clas_valid": splits["valid"]}.items():
        dataset.to_parquet(str(data / f"{name}.parquet"))
    (data / "itos.json").write_text(json.dumps(AWDLSTMTokenizer.from_pretrained(ours / "lm").itos))
    (data / "settings.json").write_text(json.dumps(settings, indent=2))


def run_fastai(args, imdb, ours: Path, seed: int) -> dict:
    result = args.output_dir / f"fastai_seed{seed}.json"
    if not result.is_file():
        data = args.output_dir / f"data_seed{seed}"
        export_for_fastai(imdb, ours, seed, data)
        subprocess.run([args.fastai_python, str(SCRIPTS / "fastai_learning_curve.py"), str(data), "--seed", str(seed),
                        "--threads", str(args.threads), "--json", str(result)], check=True)
    return json.loads(result.read_text())


def curves(ours_metrics: dict, fastai: dict) -> dict:
    """Per epoch, both sides: LM validation perplexity, then classifier validation accuracy."""
    ours_lm = [entry["eval_perplexity"] for entry in ours_metrics["lm"]["history"]]
    ours_clas = [entry["accuracy"] for entry in ours_metrics["classifier"]["valid_history"]]
    stages = [entry["stage"] for entry in ours_metrics["classifier"]["valid_history"]]
    return {
        "lm_perplexity": {"ours": ours_lm, "fastai": [entry["perplexity"] for entry in fastai["lm"]]},
        "classifier_accuracy": {"ours": ours_clas, "fastai": [entry["accuracy"] for entry in fastai["classifier"]],
                                "stage": stages},
        "lm_train_tokens": {"ours": ours_metrics["lm"]["train_tokens"], "fastai": fastai["lm_train_tokens"]},
        "vocab_size": {"ours": ours_metrics["vocab_size"], "fastai": fastai["vocab_size"]},
    }


def summary(by_seed: dict[int, dict]) -> dict:
    final_ppl = {side: statistics.mean(c["lm_perplexity"][side][-1] for c in by_seed.values()) for side in ("ours", "fastai")}
    final_acc = {side: statistics.mean(c["classifier_accuracy"][side][-1] for c in by_seed.values()) for side in ("ours", "fastai")}
    ppl_gap = final_ppl["ours"] / final_ppl["fastai"] - 1
    acc_gap = final_acc["ours"] - final_acc["fastai"]
    return {"final_lm_perplexity": final_ppl, "final_classifier_accuracy": final_acc,
            "perplexity_relative_gap": ppl_gap, "accuracy_gap": acc_gap,
            "within_tolerance": abs(ppl_gap) <= PERPLEXITY_TOLERANCE and abs(acc_gap) <= ACCURACY_TOLERANCE}


def markdown(by_seed: dict[int, dict], result: dict) -> str:
    lines = ["| seed | curve | epoch | ours | fastai | ours / fastai - 1 or ours - fastai |", "|---|---|---|---|---|---|"]
    for seed, c in by_seed.items():
        for epoch, (ours, theirs) in enumerate(zip(c["lm_perplexity"]["ours"], c["lm_perplexity"]["fastai"]), start=1):
            lines.append(f"| {seed} | LM valid perplexity | {epoch} | {ours:.2f} | {theirs:.2f} | {ours / theirs - 1:+.1%} |")
        clas = c["classifier_accuracy"]
        for epoch, (ours, theirs, stage) in enumerate(zip(clas["ours"], clas["fastai"], clas["stage"]), start=1):
            lines.append(f"| {seed} | classifier valid accuracy (stage {stage}) | {epoch} | {ours:.4f} | {theirs:.4f} | "
                         f"{100 * (ours - theirs):+.2f} pts |")
    ppl, acc = result["final_lm_perplexity"], result["final_classifier_accuracy"]
    lines += ["", f"Final, mean over seeds: LM perplexity ours {ppl['ours']:.2f}, fastai {ppl['fastai']:.2f} "
              f"({result['perplexity_relative_gap']:+.1%}; tolerance {PERPLEXITY_TOLERANCE:.0%}); classifier accuracy "
              f"ours {acc['ours']:.4f}, fastai {acc['fastai']:.4f} ({100 * result['accuracy_gap']:+.2f} pts; "
              f"tolerance {100 * ACCURACY_TOLERANCE:.1f} pts): {'within' if result['within_tolerance'] else 'OUTSIDE'}."]
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--fastai-python", required=True, help="the interpreter of a venv with fastai 2.8.12")
    parser.add_argument("--dataset", default="stanfordnlp/imdb")
    parser.add_argument("--output_dir", type=Path, required=True)
    parser.add_argument("--preset", default="parity")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--threads", type=int, default=2, help="torch threads of each side's process")
    args = parser.parse_args(argv)
    imdb = load_imdb(args.dataset)
    by_seed = {}
    for seed in args.seeds:
        ours = run_ours(args, seed)
        by_seed[seed] = curves(json.loads((ours / "metrics.json").read_text()), run_fastai(args, imdb, ours, seed))
    result = summary(by_seed)
    (args.output_dir / "learning_curves.json").write_text(json.dumps({"by_seed": by_seed, **result}, indent=2))
    table = markdown(by_seed, result)
    (args.output_dir / "learning_curves.md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
