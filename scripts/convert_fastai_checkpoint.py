"""Convert a fastai AWD-LSTM checkpoint into a Hugging Face model folder.

    python scripts/convert_fastai_checkpoint.py --weights lm.pth --vocab itos.pkl --task lm --out DIR
    python scripts/convert_fastai_checkpoint.py --weights clas.pth --vocab itos.pkl --task classification \
        --bptt 72 --max-len 1440 --out DIR

`--weights` is a fastai state_dict (`learn.save(..., with_opt=False)` or `model.state_dict()`), read with
`torch.load(weights_only=True)`; `--vocab` is fastai's `itos.pkl` (read without allowing any pickled
global) or a JSON list. Dropouts cannot be read from weights: the folder gets fastai's defaults for the
task. The folder loads with `pipeline(...)` (with our package) or `trust_remote_code=True` (without);
`--push_to_hub REPO_ID` also uploads it to that Hub repository (token: HF_TOKEN or the saved login).
"""

import argparse
import json
import pickle
import sys
from pathlib import Path

from awd_lstm_hf.convert import CheckpointError, convert_fastai_checkpoint, load_fastai_state_dict
from awd_lstm_hf.export import model_card_text, push_to_hub, save_model_folder
from awd_lstm_hf.tokenization_awd_lstm import AWDLSTMTokenizer, check_itos, read_itos_pickle


def read_vocab(path: Path) -> list[str]:
    """fastai's `itos.pkl` (no pickled global allowed) or a JSON list of strings."""
    try:
        if path.suffix == ".json":
            return check_itos(json.loads(path.read_text(encoding="utf-8")), str(path))
        return read_itos_pickle(path)
    except (json.JSONDecodeError, pickle.UnpicklingError, UnicodeDecodeError, EOFError, ValueError) as error:
        raise CheckpointError(
            f"cannot read the vocabulary {path} (expected fastai's itos.pkl or a .json list of strings): "
            f"{type(error).__name__}: {error}"
        ) from error


def convert(weights: Path, vocab: Path, task: str, out: Path, bptt: int | None = None, max_len: int | None = None) -> Path:
    itos = read_vocab(vocab)
    overrides = {key: value for key, value in (("bptt", bptt), ("max_len", max_len)) if value is not None}
    model = convert_fastai_checkpoint(load_fastai_state_dict(weights), task, **overrides)
    if model.config.vocab_size != len(itos):
        raise CheckpointError(
            f"the vocabulary {vocab} has {len(itos)} entries but the checkpoint's embedding "
            f"(encoder.weight) has {model.config.vocab_size} rows: they do not belong together"
        )
    card = model_card_text(
        model, model_id=out.name, provenance=f"Converted from the fastai checkpoint `{weights.name}` with "
        f"awd-lstm-hf's `scripts/convert_fastai_checkpoint.py` (fastai's default dropouts for the task).",
        results={},
        limits="- Converted weights: the training data, license, biases and limits are those of the source "
        "fastai checkpoint; check where it came from before use.",
    )
    return save_model_folder(model, AWDLSTMTokenizer.from_itos(itos), out, card)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", type=Path, required=True)
    parser.add_argument("--vocab", type=Path, required=True)
    parser.add_argument("--task", choices=["lm", "classification"], required=True)
    parser.add_argument("--bptt", type=int, help="classifier chunk length (fastai seq_len, default 72)")
    parser.add_argument("--max-len", type=int, help="classifier pooled window (fastai max_len, default 1440)")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--push_to_hub", metavar="REPO_ID", help="upload the folder to this Hub model repository")
    args = parser.parse_args(argv)
    try:
        folder = convert(args.weights, args.vocab, args.task, args.out, args.bptt, args.max_len)
    except (CheckpointError, ValueError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"wrote {folder}")
    if args.push_to_hub:
        print(f"pushed {push_to_hub(folder, args.push_to_hub)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
