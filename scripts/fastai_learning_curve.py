"""The fastai side of `scripts/learning_curves.py`: fastai 2.8.12's own ULMFiT run on the reviews, vocabulary
and settings that our run used, recording the validation figures after every epoch.

Runs ONLY in a venv with fastai (see ../shared/tools/setup_fastai_venv.sh); the project never imports fastai.
DATA holds lm_train/lm_valid/clas_train/clas_valid.parquet (text, and label for the classifier), itos.json
(our run's vocabulary) and settings.json (the preset's values, as train.py read them). Writes JSON:

    {"lm": [{"epoch": 1, "perplexity": ..., "accuracy": ..., "loss": ...}, ...],
     "classifier": [{"stage": 0, "epoch": 1, "accuracy": ...}, ...], "lm_train_losses": [one per batch],
     "lm_train_tokens": ..., "seconds": ...}

    /work/venv-fastai/bin/python scripts/fastai_learning_curve.py DATA --seed 0 --json OUT.json
"""

import argparse
import json
import time
from pathlib import Path

import pandas as pd
import torch
from fastai.text.all import (
    AWD_LSTM,
    Callback,
    Perplexity,
    TextDataLoaders,
    accuracy,
    awd_lstm_clas_config,
    awd_lstm_lm_config,
    language_model_learner,
    set_seed,
    text_classifier_learner,
)

from fastai_recipe_reference import fit_stage  # this folder: the recipe translated to fastai once


def fit_stages(learn, stages: list[dict], weight_decay: float) -> list[list[float]]:
    """Each stage as `fit_stage`; the recorder's values of each epoch ([train loss, valid loss, metrics...])
    grouped by stage."""
    by_stage = []
    for stage in stages:
        fit_stage(learn, stage, weight_decay)
        by_stage.append([[float(v) for v in values] for values in learn.recorder.values])
    return by_stage


class TrainLosses(Callback):
    """The loss of every training batch (without AR/TAR, as fastai's recorder and our Trainer log it)."""

    def __init__(self):
        self.values = []

    def after_batch(self):
        if self.training:
            self.values.append(float(self.learn.loss))


def with_validity(train: pd.DataFrame, valid: pd.DataFrame) -> pd.DataFrame:
    return pd.concat([train.assign(is_valid=False), valid.assign(is_valid=True)], ignore_index=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("data", type=Path)
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path, required=True)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    s = json.loads((args.data / "settings.json").read_text())
    itos = json.loads((args.data / "itos.json").read_text())
    read = {name: pd.read_parquet(args.data / f"{name}.parquet") for name in ("lm_train", "lm_valid", "clas_train", "clas_valid")}
    sizes = dict(emb_sz=s["embedding_size"], n_hid=s["hidden_size"], n_layers=s["num_hidden_layers"])
    started = time.time()

    set_seed(args.seed)
    dls = TextDataLoaders.from_df(with_validity(read["lm_train"], read["lm_valid"]), text_col="text", is_lm=True,
                                  valid_col="is_valid", text_vocab=itos, bs=s["lm_batch_size"], seq_len=s["bptt"],
                                  path=args.data, seed=args.seed)
    learn = language_model_learner(dls, AWD_LSTM, config=dict(awd_lstm_lm_config, **sizes), drop_mult=s["lm_drop_mult"],
                                   pretrained=False, metrics=[accuracy, Perplexity()], path=args.data)
    train_losses = TrainLosses()
    learn.add_cb(train_losses)
    with learn.no_bar():
        lm_values = fit_stages(learn, s["lm_stages"], s["lm_weight_decay"])
    learn.save_encoder(f"encoder_{args.seed}")
    lm = [{"epoch": epoch, "loss": values[1], "accuracy": values[2], "perplexity": values[3]}
          for epoch, values in enumerate((v for stage in lm_values for v in stage), start=1)]

    set_seed(args.seed)
    clas = read["clas_train"], read["clas_valid"]
    dls_c = TextDataLoaders.from_df(with_validity(*clas).assign(label=lambda df: df.label.map({0: "neg", 1: "pos"})),
                                    text_col="text", label_col="label", valid_col="is_valid", text_vocab=itos,
                                    bs=s["clas_batch_size"], seq_len=s["bptt"], path=args.data, seed=args.seed)
    learn_c = text_classifier_learner(dls_c, AWD_LSTM, config=dict(awd_lstm_clas_config, **sizes),
                                      drop_mult=s["clas_drop_mult"], seq_len=s["bptt"], max_len=s["max_len"], pretrained=False,
                                      metrics=accuracy, path=args.data)
    learn_c.load_encoder(f"encoder_{args.seed}")
    with learn_c.no_bar():
        clas_values = fit_stages(learn_c, s["clas_stages"], s["clas_weight_decay"])
    classifier = [{"stage": stage, "epoch": epoch, "accuracy": values[2]}
                  for stage, stage_values in enumerate(clas_values) for epoch, values in enumerate(stage_values, start=1)]

    result = {"lm": lm, "classifier": classifier, "lm_train_losses": train_losses.values, "lm_train_tokens": int(sum(dls.train.lens)),
              "vocab_size": len(dls.vocab), "seconds": round(time.time() - started, 1)}
    args.json.write_text(json.dumps(result, indent=2))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
