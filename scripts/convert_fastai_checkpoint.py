"""Convert a fastai AWD-LSTM checkpoint into a Hugging Face model folder.

    python scripts/convert_fastai_checkpoint.py --weights lm.pth --vocab itos.pkl --task lm --out DIR
    python scripts/convert_fastai_checkpoint.py --weights clas.pth --vocab itos.pkl --task classification \
        --bptt 72 --max-len 1440 --out DIR

`--weights` is any fastai AWD-LSTM checkpoint file: a state_dict (`learn.save(..., with_opt=False)`,
`model.state_dict()`, DataParallel's `module.` keys included), `learn.save`'s `{"model", "opt"}`, or a
`learn.save_encoder` file (an LM gets a tied decoder with zero bias, a classifier a new untrained head of
`--num-labels` / `--lin-ftrs`), in fastai v2 or v1 key layouts. It is read with
`torch.load(weights_only=True)` and an explicit allow-list for fastai's optimizer-state containers;
`--vocab` is fastai's `itos.pkl` (no pickled global allowed), a JSON list or a text file with one token
per line. A whole pickled Learner (`learn.export()`, export.pkl) is refused: reading it would run its
code. Sizes come from the tensors; dropouts cannot, so the folder gets fastai's defaults for the task
unless given (`--drop-mult`, `--embed-p`, ...). The folder loads with `pipeline(...)` (with our package)
or `trust_remote_code=True` (without); `--push_to_hub REPO_ID` also uploads it to that Hub repository
(token: HF_TOKEN or the saved login).
"""

import argparse
import json
import sys
from pathlib import Path

from awd_lstm_hf.configuration_awd_lstm import DROPOUT_KEYS
from awd_lstm_hf.convert import CheckpointError, convert_fastai_files
from awd_lstm_hf.export import model_card_text, push_to_hub, save_model_folder


def convert(weights: Path, vocab: Path, task: str, out: Path, model_id: str | None = None, **config_overrides) -> Path:
    """Write the model folder for `weights` + `vocab`; `config_overrides` are AWDLSTMConfig values. The card
    is titled `model_id` (the Hub repository it is pushed to), else the folder's name."""
    conversion = convert_fastai_files(weights, vocab, task, **config_overrides)
    built = "".join(f" Not in the file: {note}." for note in conversion.notes)
    card = model_card_text(
        conversion.model, model_id=model_id or out.name, provenance=f"Converted from the fastai checkpoint `{weights.name}` "
        f"with awd-lstm-hf's `scripts/convert_fastai_checkpoint.py` (dropouts: fastai's defaults for the task "
        f"unless given).{built}",
        results={},
        limits="- Converted weights: the training data, license, biases and limits are those of the source "
        "fastai checkpoint; check where it came from before use.",
    )
    for note in conversion.notes:
        print(f"note: {note}")
    return save_model_folder(conversion.model, conversion.tokenizer, out, card)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", type=Path, required=True)
    parser.add_argument("--vocab", type=Path, required=True)
    parser.add_argument("--task", choices=["lm", "classification"], required=True)
    parser.add_argument("--bptt", type=int, help="classifier chunk length (fastai seq_len, default 72)")
    parser.add_argument("--max-len", type=int, help="classifier pooled window (fastai max_len, default 1440)")
    parser.add_argument("--num-labels", type=int, help="encoder-only file: classes of the new head (default 2)")
    parser.add_argument("--lin-ftrs", type=json.loads, metavar="JSON",
                        help="encoder-only file: hidden widths of the new head, e.g. '[50]' (fastai's default)")
    for key in DROPOUT_KEYS:
        parser.add_argument(f"--{key.replace('_', '-')}", type=float, help=f"fastai {key} (default: fastai's for the task)")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--push_to_hub", metavar="REPO_ID", help="upload the folder to this Hub model repository")
    args = parser.parse_args(argv)
    overrides = {"bptt": args.bptt, "max_len": args.max_len, "num_labels": args.num_labels,
                 "classifier_hidden_sizes": args.lin_ftrs, **{key: getattr(args, key) for key in DROPOUT_KEYS}}
    try:
        folder = convert(args.weights, args.vocab, args.task, args.out, model_id=args.push_to_hub,
                         **{key: value for key, value in overrides.items() if value is not None})
    except (CheckpointError, ValueError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"wrote {folder}")
    if args.push_to_hub:
        print(f"pushed {push_to_hub(folder, args.push_to_hub)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
