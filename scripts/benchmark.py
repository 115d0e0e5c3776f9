"""Benchmarks, written as JSON and as a markdown table.

    python scripts/benchmark.py --out runs/benchmark            # generation speed, cpu-preset sizes

Generation: tokens/s of `model.generate` (sampling, temperature 0.75, as fastai's `predict`) at 40 and
400 new tokens, batch 1 and 16, on a model of the `cpu` preset's sizes with random weights (speed does
not depend on the weights). The recurrent state is carried, so the time per token stays flat: the
400-token run must not cost more than 12x the 40-token run.
"""

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from awd_lstm_hf import AWDLSTMConfig, AWDLSTMForCausalLM

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"


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


def markdown_table(rows: list[dict]) -> str:
    columns = list(dict.fromkeys(key for row in rows for key in row))
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(str(row.get(c, "")) for c in columns) + " |" for row in rows]
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("runs/benchmark"))
    parser.add_argument("--preset", default="cpu", help="model sizes from configs/PRESET.json")
    parser.add_argument("--vocab_size", type=int, default=15008)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    rows = generation_benchmark(args.preset, args.vocab_size, args.repeats)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "benchmark.json").write_text(json.dumps({"torch_threads": torch.get_num_threads(), "results": rows}, indent=2))
    table = markdown_table(rows)
    (args.out / "benchmark.md").write_text(table + "\n")
    print(table)


if __name__ == "__main__":
    main()
