"""ULMFiT on IMDB with transformers' Trainer: stage 1 trains the AWD-LSTM language model on the review
texts, stage 2 the classifier from the stage-1 encoder (gradual unfreezing).

    python scripts/train.py --preset smoke --dataset ../shared/data/imdb --output_dir runs/smoke
    accelerate launch scripts/train.py --preset cpu --output_dir runs/cpu
    # 2 CPU processes (gloo): through mpirun, as Accelerate runs them, or torchrun
    accelerate launch --cpu --num_processes 2 --mpirun_hostfile configs/localhost.hostfile scripts/train.py \
        --preset smoke --output_dir runs/smoke2
    torchrun --nproc_per_node 2 scripts/train.py --preset smoke --output_dir runs/smoke2

Presets are the JSON files in `configs/`; every key can be overridden by the flag of the same name.
`--init_lm DIR_OR_HUB_ID` starts the LM from a pretrained one (ULMFiT's transfer, fastai's vocabulary matching)
and fine-tunes it with the preset's `lm_finetune_stages` (frozen, then unfrozen).
Writes OUTPUT_DIR/lm and OUTPUT_DIR/classifier (complete model folders) and OUTPUT_DIR/metrics.json;
`--push_to_hub --hub_model_id ID` uploads the folders to the Hub repositories ID-lm and ID-classifier.
Each finished stage is recorded in OUTPUT_DIR/checkpoints; with `--save_steps N` a stage also writes a
checkpoint every N steps, and `--resume_from_checkpoint` continues a killed run where it stopped.
"""

import argparse
import json
import logging
import os
import shutil
import sys
import time
from pathlib import Path

import torch
from accelerate import PartialState
from datasets import concatenate_datasets
from transformers import Trainer, TrainingArguments

import awd_lstm_hf  # noqa: F401  (registers the Auto classes)
from awd_lstm_hf import AWDLSTMConfig, AWDLSTMForCausalLM, AWDLSTMForSequenceClassification
from awd_lstm_hf.data import (
    IMDB_HUB_ID,
    ClassificationCollator,
    LMStreamDataset,
    class_names,
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
    PRECISIONS,
    ClassifierTrainer,
    LMTrainer,
    Stage,
    classification_accuracy,
    describe_precision,
    fit_one_cycle,
    mixed_precision,
    require_a_training_batch,
    transfer_language_model,
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
    parser.add_argument("--init_lm", metavar="DIR_OR_HUB_ID",
                        help="start the LM from this pretrained AWD-LSTM LM (e.g. fastai's WikiText-103 weights converted "
                             "with convert_fastai_checkpoint.py), moved onto the IMDB vocabulary, and fine-tune it with "
                             "the preset's lm_finetune_stages instead of training lm_stages from scratch")
    parser.add_argument("--num_proc", type=int, default=os.cpu_count(), help="processes for tokenization")
    parser.add_argument("--push_to_hub", action="store_true", help="upload both folders (token: HF_TOKEN or login)")
    parser.add_argument("--hub_model_id", help="Hub repositories HUB_MODEL_ID-lm and HUB_MODEL_ID-classifier")
    parser.add_argument("--hub_private", action="store_true", default=None, help="create the repositories private")
    parser.add_argument("--save_steps", type=int, default=None,
                        help="write a checkpoint every SAVE_STEPS optimizer steps of each stage (default: none)")
    parser.add_argument("--resume_from_checkpoint", action="store_true",
                        help="continue an interrupted run in the same --output_dir: finished stages are read back, "
                             "the interrupted one resumes from its last checkpoint (else starts over)")
    settings = parser.add_argument_group(f"preset {preset_name!r} (configs/{preset_name}.json); values are JSON, "
                                         "strings as plain words")
    for key, value in preset.items():
        if key == "description":
            continue
        if isinstance(value, str):
            choices = PRECISIONS if key == "precision" else None
            settings.add_argument(f"--{key}", default=value, choices=choices, help=f"(preset: {value})")
        else:
            settings.add_argument(f"--{key}", type=json.loads, default=json.dumps(value), help=f"(preset: {json.dumps(value)})")
    args = parser.parse_args(argv)
    if args.push_to_hub and not args.hub_model_id:
        parser.error("--push_to_hub needs --hub_model_id")
    args.preset = preset_name
    args.settings = {key: getattr(args, key) for key in preset if key != "description"}
    return args


def select_reviews(imdb, s: dict, seed: int) -> tuple[tuple, dict]:
    """The reviews a run uses: the LM's (train, valid) texts and the classifier's train/valid/test splits.
    A missing text or a label outside the classes is an error here, naming its split and row."""
    lm_texts = lm_corpus(imdb, max_docs=s["lm_docs"], valid_pct=s["lm_valid_pct"], seed=seed)
    splits = classification_splits(imdb, train_docs=s["clas_train_docs"], test_docs=s["clas_test_docs"],
                                   valid_docs=s["clas_valid_docs"], seed=seed)
    return lm_texts, splits


def prepare_text(dataset, num_proc, tokenizer=None):
    """fastai tokens (cached by datasets), then ids once the vocabulary exists."""
    tokens = tokenize_corpus(dataset, num_proc=num_proc)
    return tokens if tokenizer is None else numericalize(tokens, tokenizer, num_proc=num_proc)


def with_lengths(dataset, sort: bool):
    """A `length` column for length-grouped batching; evaluation sets longest first, like fastai's SortedDL."""
    dataset = dataset.map(lambda batch: {"length": [len(ids) for ids in batch["input_ids"]]}, batched=True)
    dataset = dataset.remove_columns([c for c in ("tokens", "text") if c in dataset.column_names])
    return dataset.sort("length", reverse=True) if sort else dataset


def last_complete_checkpoint(stage_dir: Path) -> str | None:
    """The newest checkpoint that Trainer finished writing (trainer_state.json comes last): a run killed
    while saving leaves an incomplete one."""
    complete = [path for path in stage_dir.glob("checkpoint-*") if (path / "trainer_state.json").is_file()]
    return str(max(complete, key=lambda path: int(path.name.split("-")[-1]))) if complete else None


def finished_weights(stage_dir: Path) -> Path:
    return stage_dir / "finished" / "weights.pt"


def run_stage(args, state, stage_dir: Path, evaluation_key: str, model, stage, *datasets, **fit_arguments) -> dict:
    """One `fit_one_cycle`, recorded when done in STAGE_DIR/finished (weights, optimizer steps, evaluations):
    with --resume_from_checkpoint a finished stage is read back instead of trained again, and an interrupted
    one continues from its last checkpoint. Returns the record: `steps` and `evaluations` (one per epoch)."""
    finished = finished_weights(stage_dir).parent
    if args.resume_from_checkpoint and finished.is_dir():
        model.load_state_dict(torch.load(finished_weights(stage_dir), map_location=model.device, weights_only=True))
        logger.info("%s: finished by an earlier run, read back", stage_dir.name)
        return json.loads((finished / "record.json").read_text())
    checkpoint = last_complete_checkpoint(stage_dir) if args.resume_from_checkpoint else None
    if checkpoint:
        logger.info("%s: resuming from %s", stage_dir.name, checkpoint)
    saving = {"save_strategy": "steps", "save_steps": args.save_steps, "save_total_limit": 2} if args.save_steps else {}
    # fastai v2 does not clip (fit_one_cycle's default); `clip` is its GradientClip(max_norm) callback
    clipping = {"max_grad_norm": args.settings["clip"]} if args.settings["clip"] else {}
    trainer, _ = fit_one_cycle(model, stage, *datasets, output_dir=str(stage_dir), seed=args.seed,
                               resume_from_checkpoint=checkpoint, precision=args.settings["precision"],
                               **saving, **clipping, **fit_arguments)
    record = {"steps": trainer.state.global_step, "evaluations": last_evaluations(trainer, evaluation_key)}
    if state.is_main_process:  # written aside, then renamed: a killed run leaves the record whole or absent
        writing = finished.with_name("finished.writing")
        shutil.rmtree(writing, ignore_errors=True)
        writing.mkdir(parents=True)
        torch.save(model.state_dict(), writing / finished_weights(stage_dir).name)
        (writing / "record.json").write_text(json.dumps(record))
        writing.rename(finished)
        for old in stage_dir.glob("checkpoint-*"):  # the record supersedes them
            shutil.rmtree(old)
    state.wait_for_everyone()
    return record


def train_language_model(args, s, state, lm_texts, tokenizer, work_dir):
    lm_train, lm_valid = (prepare_text(d, args.num_proc, tokenizer) for d in lm_texts)
    torch.manual_seed(args.seed)
    training = {"bptt": s["bptt"], "max_len": s["max_len"], "drop_mult": s["lm_drop_mult"]}
    if args.init_lm:  # ULMFiT's transfer: the pretrained sizes, the IMDB vocabulary, the fine-tuning stages
        pretrained = AWDLSTMForCausalLM.from_pretrained(args.init_lm)
        model = transfer_language_model(pretrained, AWDLSTMTokenizer.from_pretrained(args.init_lm).itos,
                                        tokenizer.itos, **training)
        stages = s["lm_finetune_stages"]
        logger.info("LM: starting from %s (its sizes replace the preset's)", args.init_lm)
    else:
        model = AWDLSTMForCausalLM(AWDLSTMConfig(
            vocab_size=len(tokenizer), embedding_size=s["embedding_size"], hidden_size=s["hidden_size"],
            num_hidden_layers=s["num_hidden_layers"], **training))
        stages = s["lm_stages"]
    rows = s["lm_batch_size"] * state.num_processes
    train_stream = LMStreamDataset(lm_train["input_ids"], rows, s["bptt"], shuffle=True, seed=args.seed)
    valid_stream = LMStreamDataset(lm_valid["input_ids"], rows, s["bptt"])
    logger.info("LM: %d train tokens, %d valid tokens, %d rows of %d tokens, vocab %d, %s parameters",
                train_stream.n_tokens, valid_stream.n_tokens, rows, train_stream.row_len, len(tokenizer),
                f"{model.num_parameters():,}")
    history, steps = [], []
    for index, stage in enumerate(Stage(**stage) for stage in stages):
        record = run_stage(
            args, state, work_dir / f"lm_stage{index}", "eval_perplexity", model, stage, train_stream, valid_stream,
            trainer_class=LMTrainer, sampling="sequential", batch_size=s["lm_batch_size"],
            weight_decay=s["lm_weight_decay"],
        )
        history += record["evaluations"]
        steps.append(record["steps"])
    final = history[-1]  # validated at the end of every epoch
    metrics = {key: final[f"eval_{key}"] for key in ("loss", "accuracy", "perplexity")} | {
        "stage_steps": steps, "train_tokens": train_stream.n_tokens, "rows": rows}
    return model, metrics, history


def last_evaluations(trainer, key: str) -> list[dict]:
    """The evaluation logs of a finished `train()` (one per epoch), merged per step."""
    merged: dict[int, dict] = {}
    for entry in trainer.state.log_history:
        if any(name.startswith("eval_") for name in entry):
            merged.setdefault(entry["step"], {}).update(entry)
    return [entry for entry in merged.values() if key in entry]


def train_classifier(args, s, state, lm_dir, splits, labels, tokenizer, work_dir):
    """The classifier from the LM's encoder, predicting `labels` (the dataset's class names, in id order)."""
    config = AWDLSTMConfig.from_pretrained(lm_dir).with_task_dropouts("classification")
    config.drop_mult = s["clas_drop_mult"]
    config.id2label, config.label2id = dict(enumerate(labels)), {label: index for index, label in enumerate(labels)}
    torch.manual_seed(args.seed)  # the new head's weights: the same whether the LM was trained or read back
    model = AWDLSTMForSequenceClassification.from_pretrained(lm_dir, config=config)
    data = {
        name: with_lengths(prepare_text(split, args.num_proc, tokenizer), sort=name != "train")
        for name, split in splits.items() if split is not None
    }
    collator = ClassificationCollator(pad_token_id=tokenizer.pad_token_id)
    best, steps, valid_history = {"accuracy": -1.0}, [], []
    for index, stage in enumerate(Stage(**stage) for stage in s["clas_stages"]):
        record = run_stage(
            args, state, work_dir / f"clas_stage{index}", "eval_accuracy", model, stage, data["train"],
            data.get("valid"), trainer_class=ClassifierTrainer, sampling="group_by_length",
            batch_size=s["clas_batch_size"], weight_decay=s["clas_weight_decay"],
            data_collator=collator, compute_metrics=classification_accuracy,
        )
        steps.append(record["steps"])
        valid_history += [{"stage": index, "epoch": epoch, "accuracy": evaluation["eval_accuracy"]}
                          for epoch, evaluation in enumerate(record["evaluations"], start=1)]
        if "valid" in data:  # keep the stage whose model does best on validation (never on test)
            accuracy = record["evaluations"][-1]["eval_accuracy"]
            logger.info("classifier stage %d: valid accuracy %.4f", index, accuracy)
            if accuracy > best["accuracy"]:
                best = {"accuracy": accuracy, "stage": index}
    if "stage" in best:
        weights = finished_weights(work_dir / f"clas_stage{best['stage']}")
        model.load_state_dict(torch.load(weights, map_location=model.device, weights_only=True))
        logger.info("classifier: keeping stage %d (valid accuracy %.4f)", best["stage"], best["accuracy"])
    test_metrics = evaluator(model, s, work_dir, collator).evaluate(data["test"], metric_key_prefix="test")
    metrics = {"test_accuracy": test_metrics["test_accuracy"], "test_documents": len(data["test"]), "stage_steps": steps}
    if "valid" in data:
        metrics |= {"valid_accuracy": best["accuracy"], "chosen_stage": best["stage"], "valid_history": valid_history}
    return model, metrics


def evaluator(model, s, work_dir, collator) -> Trainer:
    """A Trainer that only evaluates the classifier (its stages may have been trained by an earlier run)."""
    arguments = TrainingArguments(output_dir=str(work_dir / "evaluation"), per_device_eval_batch_size=s["clas_batch_size"],
                                  report_to="none", remove_unused_columns=False, **mixed_precision(s["precision"]))
    return Trainer(model=model, args=arguments, data_collator=collator, compute_metrics=classification_accuracy)


def start_work_dir(args, state, work_dir: Path, training_settings: dict) -> None:
    """A new run starts from an empty work dir; a resumed one must have the settings of the run it continues."""
    settings_file = work_dir / "training_settings.json"
    if args.resume_from_checkpoint and settings_file.is_file():
        if json.loads(settings_file.read_text()) != training_settings:
            raise SystemExit(f"--resume_from_checkpoint: {settings_file} records other settings than this run's")
    elif state.is_main_process:
        shutil.rmtree(work_dir, ignore_errors=True)
        work_dir.mkdir(parents=True)
        settings_file.write_text(json.dumps(training_settings, indent=2))
    state.wait_for_everyone()


def main(argv=None):
    args = parse_args(argv)
    s = args.settings
    precision = mixed_precision(s["precision"])
    state = PartialState(cpu="use_cpu" in precision)  # without cpu=True, torchrun on CPUs runs N single processes
    logging.basicConfig(level=logging.INFO if state.is_main_process else logging.WARNING,
                        format="%(asctime)s %(name)s: %(message)s", stream=sys.stdout)
    output_dir, started = Path(args.output_dir), time.time()
    work_dir = output_dir / "checkpoints"
    logger.info("preset %s on %d process(es); precision: %s", args.preset, state.num_processes, describe_precision(precision))
    if state.num_processes == 1 and os.environ.get("ACCELERATE_USE_CPU") == "True" and "MASTER_PORT" in os.environ:
        raise SystemExit(  # accelerate sets MASTER_PORT only when asked for several processes
            "`accelerate launch --cpu --num_processes N` started a single process: Accelerate starts several CPU "
            "processes only through mpirun. Add `--mpirun_hostfile configs/localhost.hostfile` (Open MPI: "
            "pip install 'awd-lstm-hf[mpi]'; as root also export OMPI_ALLOW_RUN_AS_ROOT=1 "
            "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1), or run `torchrun --nproc_per_node N scripts/train.py ...`.")

    with state.main_process_first():  # tokenize once, the other processes read the datasets cache
        imdb = load_imdb(args.dataset)
        lm_texts, splits = select_reviews(imdb, s, args.seed)
        labels = class_names(imdb)
        # known before any tokenization or training: refused now rather than after the LM stage
        require_a_training_batch(len(splits["train"]), s["clas_batch_size"], state.num_processes, "--clas_batch_size")
        lm_tokens = [prepare_text(d, args.num_proc) for d in lm_texts]
        for split in splits.values():
            if split is not None:
                prepare_text(split, args.num_proc)
    # fastai builds the vocabulary from every document of the LM data, validation included.
    tokenizer = AWDLSTMTokenizer.from_counts(count_tokens(concatenate_datasets(lm_tokens)),
                                             min_freq=s["min_freq"], max_vocab=s["max_vocab"])
    logger.info("tokenization and vocabulary: %.0f s; classifier classes %s", time.time() - started,
                dict(enumerate(labels)))
    model_ids = {task: f"{args.hub_model_id}-{task}" if args.hub_model_id else f"awd-lstm-imdb-{task}-{args.preset}"
                 for task in ("lm", "classifier")}
    training_settings = {"script": "scripts/train.py", "preset": args.preset, "dataset": args.dataset,
                         "seed": args.seed, "init_lm": args.init_lm, "settings": s}
    start_work_dir(args, state, work_dir, training_settings)

    lm_started = time.time()
    lm, lm_metrics, lm_history = train_language_model(args, s, state, lm_texts, tokenizer, work_dir)
    lm_seconds = time.time() - lm_started
    logger.info("LM: %s in %.0f s", lm_metrics, lm_seconds)
    start = f"Fine-tuned from `{args.init_lm}`" if args.init_lm else "Trained from scratch"
    provenance = (f"{start} with awd-lstm-hf `scripts/train.py --preset {args.preset}` "
                  f"(seed {args.seed}) on IMDB review texts ({s['lm_docs'] or 'all'} reviews, "
                  f"{s['lm_valid_pct']:.0%} held out for validation).")
    if state.is_main_process:
        card = model_card_text(lm, model_id=model_ids["lm"], provenance=provenance,
                               results={"perplexity": lm_metrics["perplexity"], "accuracy": lm_metrics["accuracy"]},
                               limits=IMDB_LIMITS, dataset=IMDB_HUB_ID, license="apache-2.0",
                               base_model=args.init_lm if args.init_lm and not Path(args.init_lm).exists() else None)
        save_model_folder(lm, tokenizer, output_dir / "lm", card, training_settings)
    state.wait_for_everyone()

    clas_started = time.time()
    classifier, clas_metrics = train_classifier(args, s, state, output_dir / "lm", splits, labels, tokenizer, work_dir)
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
            "preset": args.preset, "settings": s, "precision": describe_precision(precision),
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
