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
unless given (`--drop-mult`, `--embed-p`, ...). A classifier's class names are not in the weights either
(fastai keeps them in `dls.vocab[1]`): `--labels neg,pos` gives them in the order of the head's outputs;
without it a 2-output head is labelled neg, pos (an IMDB classifier: fastai sorts the folder names) and
others LABEL_0, LABEL_1, ..., and the card says the names were assumed. The folder loads with
`pipeline(...)` (with our package) or `trust_remote_code=True` (without); `--push_to_hub REPO_ID` also
uploads it to that Hub repository (token: HF_TOKEN or the saved login). Flags no model could use (a
label count or head width below 1, a dropout that `--drop-mult` takes to 1 or more, a repository id the
Hub refuses) are argument errors, before anything is read or written.
"""

import argparse
import json
import sys
from pathlib import Path

from huggingface_hub.utils import HFValidationError, validate_repo_id

from awd_lstm_hf.configuration_awd_lstm import DROPOUT_KEYS
from awd_lstm_hf.convert import CheckpointError, check_config_overrides, convert_fastai_files
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


def label_names(value: str) -> dict[int, str]:
    """`--labels neg,pos`: the classes in the order of the head's outputs, as id2label."""
    names = [name.strip() for name in value.split(",")]
    if "" in names or len(set(names)) != len(names):
        raise argparse.ArgumentTypeError(f"expected distinct, non-empty names separated by commas, got {value!r}")
    return dict(enumerate(names))


def json_value(value: str):
    """`--lin-ftrs '[50]'` (AWDLSTMConfig checks that it is a list of widths)."""
    try:
        return json.loads(value)
    except json.JSONDecodeError as error:
        raise argparse.ArgumentTypeError(f"not JSON ({error}): {value!r}") from error


def hub_repo_id(value: str) -> str:
    """huggingface_hub's rules for a repository id, checked before anything is converted or written."""
    try:
        validate_repo_id(value)
    except HFValidationError as error:
        raise argparse.ArgumentTypeError(str(error)) from error
    return value


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", type=Path, required=True)
    parser.add_argument("--vocab", type=Path, required=True)
    parser.add_argument("--task", choices=["lm", "classification"], required=True)
    parser.add_argument("--bptt", type=int, help="classifier chunk length (fastai seq_len, default 72)")
    parser.add_argument("--max-len", type=int, help="classifier pooled window (fastai max_len, default 1440)")
    labels = parser.add_mutually_exclusive_group()
    labels.add_argument("--labels", type=label_names, metavar="NAME,NAME,...",
                        help="the classes in the order of the head's outputs (fastai's dls.vocab[1]); default: "
                        "neg,pos for 2 outputs (IMDB), else LABEL_0, LABEL_1, ...")
    labels.add_argument("--num-labels", type=int, help="encoder-only file: classes of the new head (default 2)")
    parser.add_argument("--lin-ftrs", type=json_value, metavar="JSON",
                        help="encoder-only file: hidden widths of the new head, e.g. '[50]' (fastai's default)")
    for key in DROPOUT_KEYS:
        parser.add_argument(f"--{key.replace('_', '-')}", type=float, help=f"fastai {key} (default: fastai's for the task)")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--push_to_hub", metavar="REPO_ID", type=hub_repo_id,
                        help="upload the folder to this Hub model repository")
    args = parser.parse_args(argv)
    overrides = {"bptt": args.bptt, "max_len": args.max_len, "num_labels": args.num_labels, "id2label": args.labels,
                 "classifier_hidden_sizes": args.lin_ftrs, **{key: getattr(args, key) for key in DROPOUT_KEYS}}
    overrides = {key: value for key, value in overrides.items() if value is not None}
    try:
        check_config_overrides(args.task, **overrides)
    except ValueError as error:
        parser.error(str(error))
    try:
        folder = convert(args.weights, args.vocab, args.task, args.out, model_id=args.push_to_hub, **overrides)
    except (CheckpointError, ValueError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"wrote {folder}")
    if args.push_to_hub:
        print(f"pushed {push_to_hub(folder, args.push_to_hub)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
