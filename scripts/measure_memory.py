"""Peak memory of long inputs: classifying one long document and generating from one long prompt, at the
cpu preset's sizes (configs/cpu.json: embedding 100, hidden 256, 2 layers, 15k vocabulary; random weights).

Each case runs in a fresh Python process, which reports its resident memory before the call (model and
input built) and its peak (`ru_maxrss`) after it; the growth is what the call itself needed. The model reads
a document in bptt chunks and pools only the last max_len tokens, and reads a prompt in windows of max_len
tokens, so the growth should not follow the input's length.

    python scripts/measure_memory.py                                  # the default lengths, table + JSON
    python scripts/measure_memory.py --classify 10000 100000 --generate 1000 --json memory.json
"""

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

CONFIG_FILE = Path(__file__).resolve().parents[1] / "configs" / "cpu.json"
VOCAB_SIZE = 15008  # max_vocab 15000, padded to a multiple of 8 as fastai does


def current_rss_mib() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def worker(case: str, length: int) -> dict:
    """Runs in its own process: build the model and the input, then one call, and report the memory."""
    import torch

    from awd_lstm_hf import AWDLSTMConfig, AWDLSTMForCausalLM, AWDLSTMForSequenceClassification

    torch.set_num_threads(1)
    preset = json.loads(CONFIG_FILE.read_text())
    config = AWDLSTMConfig(vocab_size=VOCAB_SIZE, embedding_size=preset["embedding_size"], hidden_size=preset["hidden_size"],
                           num_hidden_layers=preset["num_hidden_layers"], bptt=preset["bptt"], max_len=preset["max_len"])
    torch.manual_seed(0)
    model_class = AWDLSTMForSequenceClassification if case == "classify" else AWDLSTMForCausalLM
    model = model_class(config).eval()
    ids = torch.randint(9, VOCAB_SIZE, (1, length))
    with torch.no_grad():  # warm up on a short input, so one-time allocations are in the baseline
        model(ids[:, : 2 * config.bptt])
    before = current_rss_mib()
    started = time.perf_counter()
    with torch.no_grad():
        if case == "classify":
            output = model(ids).logits.tolist()
        else:
            output = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=20, do_sample=False,
                                    pad_token_id=config.pad_token_id)[0, length:].tolist()
    seconds = time.perf_counter() - started
    peak = peak_rss_mib()
    return {"case": case, "tokens": length, "rss_before_mib": round(before, 1), "peak_rss_mib": round(peak, 1),
            "growth_mib": round(peak - before, 1), "seconds": round(seconds, 2), "output": output}


def measure(case: str, length: int) -> dict:
    """One case in a fresh process."""
    run = subprocess.run([sys.executable, __file__, "--worker", case, str(length)], capture_output=True, text=True,
                         check=False)
    if run.returncode != 0:
        raise RuntimeError(f"{case} {length}: {run.stderr[-2000:]}")
    return json.loads(run.stdout.strip().splitlines()[-1])


def table(results: list[dict]) -> str:
    lines = ["| case | tokens | RSS before (MiB) | peak RSS (MiB) | growth (MiB) | seconds |", "|---|---:|---:|---:|---:|---:|"]
    lines += [f"| {r['case']} | {r['tokens']:,} | {r['rss_before_mib']} | {r['peak_rss_mib']} | {r['growth_mib']} | "
              f"{r['seconds']} |" for r in results]
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--classify", type=int, nargs="*", default=[10_000, 100_000, 1_000_000],
                        help="document lengths (tokens) to classify")
    parser.add_argument("--generate", type=int, nargs="*", default=[1_000, 10_000, 100_000],
                        help="prompt lengths (tokens) to generate 20 tokens from")
    parser.add_argument("--json", help="also write the results to this file")
    parser.add_argument("--worker", nargs=2, metavar=("CASE", "LENGTH"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args.worker[0], int(args.worker[1]))))
        return
    results = [measure("classify", n) for n in args.classify] + [measure("generate", n) for n in args.generate]
    for result in results:
        result.pop("output")
    print(table(results))
    print(json.dumps(results, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
