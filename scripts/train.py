"""ULMFiT on IMDB with transformers' Trainer: stage 1 trains the AWD-LSTM language model on the review
texts, stage 2 the classifier from the stage-1 encoder (gradual unfreezing).

    python scripts/train.py --preset smoke --dataset ../shared/data/imdb --output_dir runs/smoke
    accelerate launch scripts/train.py --preset cpu --output_dir runs/cpu

Presets are the JSON files in `configs/`; every key can be overridden by the flag of the same name.
Writes OUTPUT_DIR/lm and OUTPUT_DIR/classifier (complete model folders) and OUTPUT_DIR/metrics.json;
`--push_to_hub --hub_model_id ID` uploads the folders to the Hub repositories ID-lm and ID-classifier.
"""

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

import torch
from accelerate import PartialState
from datasets import concatenate_datasets

import awd_lstm_hf  # noqa: F401  (registers the Auto classes)
from awd_lstm_hf import AWDLSTMConfig, AWDLSTMForCausalLM, AWDLSTMForSequenceClassification
from awd_lstm_hf.data import (
    IMDB_HUB_ID,
    ClassificationCollator,
    LMStreamDataset,
    classification_splits,
    count_tokens,
    lm_corpus,
    load_imdb,
    numericalize,
    tokenize_corpus,
)
from awd_lstm_hf.export import IMDB_LIMITS, model_card_text, push_to_hub, save_model_folder
from awd_lstm_hf.tokenization_awd_lstm import AWDLSTMTokenizer
from awd_lstm_hf.training import (
    ClassifierTrainer,
    LMTrainer,
    Stage,
    classification_accuracy,
    describe_precision,
    fit_one_cycle,
    mixed_precision,
)

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"
logger = logging.getLogger("train")


def parse_args(argv=None) -> argparse.Namespace:
    """Two passes: `--preset` picks the JSON file, whose keys then become flags (shown by --help)."""
    first = argparse.ArgumentParser(add_help=False)
    first.add_argument("--preset", default=None, help="smoke, cpu or ulmfit (default: ulmfit with CUDA, else cpu)")
    preset_name = first.parse_known_args(argv)[0].preset or ("ulmfit" if torch.cuda.is_available() else "cpu")
    preset_file = CONFIG_DIR / f"{preset_name}.json"
    if not preset_file.is_file():
        first.error(f"no preset {preset_name!r}: choose one of {sorted(p.stem for p in CONFIG_DIR.glob('*.json'))}")
    preset = json.loads(preset_file.read_text())

    parser = argparse.ArgumentParser(description=__doc__, parents=[first],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default=IMDB_HUB_ID, help="Hub id or local folder laid out like stanfordnlp/imdb")
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--num_proc", type=int, default=os.cpu_count(), help="processes for tokenization")
    parser.add_argument("--push_to_hub", action="store_true", help="upload both folders (token: HF_TOKEN or login)")
    parser.add_argument("--hub_model_id", help="Hub repositories HUB_MODEL_ID-lm and HUB_MODEL_ID-classifier")
    parser.add_argument("--hub_private", action="store_true", default=None, help="create the repositories private")
    settings = parser.add_argument_group(f"preset {preset_name!r} (configs/{preset_name}.json); values are JSON")
    for key, value in preset.items():
        if key != "description":
            settings.add_argument(f"--{key}", type=json.loads, default=json.dumps(value), help=f"(preset: {json.dumps(value)})")
    args = parser.parse_args(argv)
    if args.push_to_hub and not args.hub_model_id:
        parser.error("--push_to_hub needs --hub_model_id")
    args.preset = preset_name
    args.settings = {key: getattr(args, key) for key in preset if key != "description"}
    return args


def prepare_text(dataset, num_proc, tokenizer=None):
    """fastai tokens (cached by datasets), then ids once the vocabulary exists."""
    tokens = tokenize_corpus(dataset, num_proc=num_proc)
    return tokens if tokenizer is None else numericalize(tokens, tokenizer, num_proc=num_proc)


def with_lengths(dataset, sort: bool):
    """A `length` column for length-grouped batching; evaluation sets longest first, like fastai's SortedDL."""
    dataset = dataset.map(lambda batch: {"length": [len(ids) for ids in batch["input_ids"]]}, batched=True)
    dataset = dataset.remove_columns([c for c in ("tokens", "text") if c in dataset.column_names])
    return dataset.sort("length", reverse=True) if sort else dataset


def train_language_model(args, s, state, lm_texts, tokenizer, work_dir):
    lm_train, lm_valid = (prepare_text(d, args.num_proc, tokenizer) for d in lm_texts)
    config = AWDLSTMConfig(
        vocab_size=len(tokenizer),
        embedding_size=s["embedding_size"],
        hidden_size=s["hidden_size"],
        num_hidden_layers=s["num_hidden_layers"],
        bptt=s["bptt"],
        max_len=s["max_len"],
        drop_mult=s["lm_drop_mult"],
    )
    torch.manual_seed(args.seed)
    model = AWDLSTMForCausalLM(config)
    rows = s["lm_batch_size"] * state.num_processes
    train_stream = LMStreamDataset(lm_train["input_ids"], rows, s["bptt"], shuffle=True, seed=args.seed)
    valid_stream = LMStreamDataset(lm_valid["input_ids"], rows, s["bptt"])
    logger.info("LM: %d train tokens, %d valid tokens, %d rows of %d tokens, vocab %d, %s parameters",
                train_stream.n_tokens, valid_stream.n_tokens, rows, train_stream.row_len, len(tokenizer),
                f"{model.num_parameters():,}")
    history = []
    for index, stage in enumerate(Stage(**stage) for stage in s["lm_stages"]):
        trainer, _ = fit_one_cycle(
            model, stage, train_stream, valid_stream, trainer_class=LMTrainer, sampling="sequential",
            output_dir=str(work_dir / f"lm_stage{index}"), batch_size=s["lm_batch_size"],
            weight_decay=s["lm_weight_decay"], seed=args.seed,
        )
        history += last_evaluations(trainer, "eval_perplexity")
    final = history[-1]  # validated at the end of every epoch
    return model, {key: final[f"eval_{key}"] for key in ("loss", "accuracy", "perplexity")}, history


def last_evaluations(trainer, key: str) -> list[dict]:
    """The evaluation logs of a finished `train()` (one per epoch), merged per step."""
    merged: dict[int, dict] = {}
    for entry in trainer.state.log_history:
        if any(name.startswith("eval_") for name in entry):
            merged.setdefault(entry["step"], {}).update(entry)
    return [entry for entry in merged.values() if key in entry]


def train_classifier(args, s, lm_dir, splits, tokenizer, work_dir):
    config = AWDLSTMConfig.from_pretrained(lm_dir).with_task_dropouts("classification")
    config.drop_mult = s["clas_drop_mult"]
    model = AWDLSTMForSequenceClassification.from_pretrained(lm_dir, config=config)
    data = {
        name: with_lengths(prepare_text(split, args.num_proc, tokenizer), sort=name != "train")
        for name, split in splits.items() if split is not None
    }
    collator = ClassificationCollator(pad_token_id=tokenizer.pad_token_id)
    best = {"accuracy": -1.0}
    for index, stage in enumerate(Stage(**stage) for stage in s["clas_stages"]):
        trainer, _ = fit_one_cycle(
            model, stage, data["train"], data.get("valid"), trainer_class=ClassifierTrainer,
            sampling="group_by_length", output_dir=str(work_dir / f"clas_stage{index}"),
            batch_size=s["clas_batch_size"], weight_decay=s["clas_weight_decay"], seed=args.seed,
            data_collator=collator, compute_metrics=classification_accuracy,
        )
        if "valid" in data:  # keep the stage whose model does best on validation (never on test)
            accuracy = last_evaluations(trainer, "eval_accuracy")[-1]["eval_accuracy"]
            logger.info("classifier stage %d: valid accuracy %.4f", index, accuracy)
            if accuracy > best["accuracy"]:
                best = {"accuracy": accuracy, "stage": index,
                        "state": {k: v.detach().clone() for k, v in model.state_dict().items()}}
    if "state" in best:
        model.load_state_dict(best.pop("state"))
        logger.info("classifier: keeping stage %d (valid accuracy %.4f)", best["stage"], best["accuracy"])
    test_metrics = trainer.evaluate(data["test"], metric_key_prefix="test")
    metrics = {"test_accuracy": test_metrics["test_accuracy"], "test_documents": len(data["test"])}
    if "valid" in data:
        metrics |= {"valid_accuracy": best["accuracy"], "chosen_stage": best["stage"]}
    return model, metrics


def main(argv=None):
    args = parse_args(argv)
    s = args.settings
    state = PartialState()
    logging.basicConfig(level=logging.INFO if state.is_main_process else logging.WARNING,
                        format="%(asctime)s %(name)s: %(message)s", stream=sys.stdout)
    output_dir, started = Path(args.output_dir), time.time()
    work_dir = output_dir / "checkpoints"
    logger.info("preset %s on %d process(es); precision: %s", args.preset, state.num_processes, describe_precision(mixed_precision()))

    with state.main_process_first():  # tokenize once, the other processes read the datasets cache
        imdb = load_imdb(args.dataset)
        lm_texts = lm_corpus(imdb, max_docs=s["lm_docs"], valid_pct=s["lm_valid_pct"], seed=args.seed)
        lm_tokens = [prepare_text(d, args.num_proc) for d in lm_texts]
        splits = classification_splits(imdb, train_docs=s["clas_train_docs"], test_docs=s["clas_test_docs"],
                                       valid_docs=s["clas_valid_docs"], seed=args.seed)
        for split in splits.values():
            if split is not None:
                prepare_text(split, args.num_proc)
    # fastai builds the vocabulary from every document of the LM data, validation included.
    tokenizer = AWDLSTMTokenizer.from_counts(count_tokens(concatenate_datasets(lm_tokens)),
                                             min_freq=s["min_freq"], max_vocab=s["max_vocab"])
    logger.info("tokenization and vocabulary: %.0f s", time.time() - started)
    model_ids = {task: f"{args.hub_model_id}-{task}" if args.hub_model_id else f"awd-lstm-imdb-{task}-{args.preset}"
                 for task in ("lm", "classifier")}
    training_settings = {"script": "scripts/train.py", "preset": args.preset, "dataset": args.dataset,
                         "seed": args.seed, "settings": s}

    lm_started = time.time()
    lm, lm_metrics, lm_history = train_language_model(args, s, state, lm_texts, tokenizer, work_dir)
    lm_seconds = time.time() - lm_started
    logger.info("LM: %s in %.0f s", lm_metrics, lm_seconds)
    provenance = (f"Trained from scratch with awd-lstm-hf `scripts/train.py --preset {args.preset}` "
                  f"(seed {args.seed}) on IMDB review texts ({s['lm_docs'] or 'all'} reviews, "
                  f"{s['lm_valid_pct']:.0%} held out for validation).")
    if state.is_main_process:
        card = model_card_text(lm, model_id=model_ids["lm"], provenance=provenance,
                               results={"perplexity": lm_metrics["perplexity"], "accuracy": lm_metrics["accuracy"]},
                               limits=IMDB_LIMITS, dataset=IMDB_HUB_ID, license="apache-2.0")
        save_model_folder(lm, tokenizer, output_dir / "lm", card, training_settings)
    state.wait_for_everyone()

    clas_started = time.time()
    classifier, clas_metrics = train_classifier(args, s, output_dir / "lm", splits, tokenizer, work_dir)
    clas_seconds = time.time() - clas_started
    logger.info("classifier: %s in %.0f s", clas_metrics, clas_seconds)
    if state.is_main_process:
        card = model_card_text(
            classifier, model_id=model_ids["classifier"],
            provenance=provenance + " The classifier starts from that encoder and is fine-tuned with gradual "
            f"unfreezing on {len(splits['train'])} labelled train reviews; accuracy is on "
            f"{clas_metrics['test_documents']} test reviews.",
            results={"accuracy": clas_metrics["test_accuracy"]},
            limits=IMDB_LIMITS, dataset=IMDB_HUB_ID, license="apache-2.0",
            base_model=model_ids["lm"] if args.hub_model_id else None,
        )
        save_model_folder(classifier, tokenizer, output_dir / "classifier", card, training_settings)
        summary = {
            "preset": args.preset, "settings": s, "precision": describe_precision(mixed_precision()),
            "processes": state.num_processes, "vocab_size": len(tokenizer),
            "lm": lm_metrics | {"seconds": round(lm_seconds, 1), "history": lm_history},
            "classifier": clas_metrics | {"seconds": round(clas_seconds, 1)},
            "wall_seconds": round(time.time() - started, 1),
        }
        (output_dir / "metrics.json").write_text(json.dumps(summary, indent=2))
        logger.info("done in %.0f s: LM perplexity %.2f, LM accuracy %.4f, classifier test accuracy %.4f",
                    summary["wall_seconds"], lm_metrics["perplexity"], lm_metrics["accuracy"], clas_metrics["test_accuracy"])
        if args.push_to_hub:
            for task, repo_id in model_ids.items():
                logger.info("pushed %s: %s", task, push_to_hub(output_dir / task, repo_id, private=args.hub_private))


if __name__ == "__main__":
    main()
