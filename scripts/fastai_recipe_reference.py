"""Write fastai's own ULMFiT training steps as a fixture for `tests/test_recipe_parity.py`.

Runs ONLY in a venv with fastai 2.8.12 (see /work/shared/tools/setup_fastai_venv.sh); the project never
imports fastai. A tiny AWD-LSTM language model and classifier, every dropout 0 so the runs are
deterministic, are trained for a few steps with fastai's real objects (`language_model_learner`,
`text_classifier_learner`, their splitters, `ModelResetter` / `RNNCallback` / `RNNRegularizer(2, 1)`,
fastai's `Adam`, `freeze` / `freeze_to` / `unfreeze`, `fit_one_cycle` with discriminative slices):
- LM over an `LMDataLoader` stream (stateful BPTT across batches, a short last window, the state reset
  between epochs): frozen, then unfrozen with discriminative lrs for two epochs, wd 0.1;
- classifier on fixed documents longer than `seq_len` (several chunks, `max_len` cutting the first),
  every batch of one length so there is no padding: fastai's padded batches are not reproducible by
  design (see README, fastai issue #3379): freeze, freeze_to(-2), freeze_to(-3), unfreeze.

The fixture holds, per task, the initial fastai state_dict, the training batches, the stages and
hyper-parameters, and after every optimizer step the hyper-parameters fastai used and its state_dict
(stacked: one tensor per key, steps first).

    /work/venv-fastai/bin/python scripts/fastai_recipe_reference.py tests/fixtures/fastai_recipe/recipe.pt
"""

import argparse
import tempfile
from pathlib import Path

import torch
from fastai.text.all import (
    AWD_LSTM,
    Callback,
    CrossEntropyLossFlat,
    DataLoader,
    DataLoaders,
    LMDataLoader,
    TensorCategory,
    TensorText,
    TrainEvalCallback,
    WeightDropout,
    awd_lstm_clas_config,
    awd_lstm_lm_config,
    defaults,
    language_model_learner,
    text_classifier_learner,
)

SEED = 0
VOCAB_SIZE = 40  # the 9 special tokens + 31 words
SIZES = dict(emb_sz=6, n_hid=10, n_layers=3)  # 3 layers: the classifier has ULMFiT's 5 layer groups
NO_DROPOUT = dict(output_p=0.0, hidden_p=0.0, input_p=0.0, embed_p=0.0, weight_p=0.0)
DISCRIMINATIVE_FACTOR = 2.6
FIRST_WORD, XXBOS = 9, 2  # documents never hold xxpad (1): fastai would treat it as padding

LM = dict(
    batch_size=4,
    bptt=5,
    weight_decay=0.1,
    # 74 tokens: rows of 18 tokens, windows 5, 5, 5, 3 (a last window of 1 would make fastai's TAR NaN)
    document_lengths=[9, 7, 12, 5, 11, 8, 10, 6, 6],
    stages=[
        dict(train_last=1, epochs=1, lr=1e-2, discriminative=False),  # freeze(); fit_one_cycle(1, 1e-2)
        dict(train_last=None, epochs=2, lr=2e-3, discriminative=True),  # unfreeze(); slice(2e-3/2.6**3, 2e-3)
    ],
)
CLASSIFIER = dict(
    batch_size=3,
    bptt=5,
    max_len=10,
    weight_decay=0.01,
    hidden_sizes=[4],
    document_lengths=[13, 13, 13, 9, 9, 9, 17, 17, 17],  # one length per batch of 3: no padding
    stages=[  # the ULMFiT tutorial's gradual unfreezing, slice(lr/2.6**4, lr) over the 5 groups
        dict(train_last=1, epochs=1, lr=2e-2, discriminative=True),
        dict(train_last=2, epochs=1, lr=1e-2, discriminative=True),
        dict(train_last=3, epochs=1, lr=5e-3, discriminative=True),
        dict(train_last=None, epochs=2, lr=1e-3, discriminative=True),
    ],
)


def random_documents(lengths: list[int], generator: torch.Generator) -> list[torch.Tensor]:
    """Documents starting with xxbos, like fastai's tokenizer output, then random words."""
    return [
        torch.cat([torch.tensor([XXBOS]), torch.randint(FIRST_WORD, VOCAB_SIZE, (n - 1,), generator=generator)])
        for n in lengths
    ]


def state_copy(model) -> dict[str, torch.Tensor]:
    """The state_dict without EmbeddingDropout's second name for the embedding (the converter allows it)."""
    return {key: value.detach().clone() for key, value in model.state_dict().items() if "encoder_dp." not in key}


class WeightDropoutOff(Callback):
    """Run fastai's WeightDropout through its eval branch (`raw.clone()`), the same computation as p = 0.
    Its training branch with p = 0 hands the Parameter itself to the LSTM (torch's dropout returns its
    input when p = 0), which fastai's next `reset()` then refuses to overwrite."""

    order = TrainEvalCallback.order + 1  # after it has put the model in training mode

    def before_train(self):
        for module in self.learn.model.modules():
            if isinstance(module, WeightDropout):
                module.training = False


class RecordSteps(Callback):
    """After every optimizer step: [lr, mom, wd] of each layer group and the state_dict."""

    def __init__(self):
        self.hypers, self.states = [], []

    def before_step(self):
        self.hypers.append([[group[key] for key in ("lr", "mom", "wd")] for group in self.opt.hypers])

    def after_step(self):
        self.states.append(state_copy(self.learn.model))

    def stacked(self) -> dict:
        """One tensor per key with the steps first (a few tensors instead of one per step and key)."""
        return {
            "hypers": torch.tensor(self.hypers, dtype=torch.float64),
            "state_dict": {key: torch.stack([state[key] for state in self.states]) for key in self.states[0]},
        }


def fastai_lr(stage: dict, n_groups: int):
    """ULMFiT's discriminative rate: lr / 2.6 per layer group below the last (slice(lr/2.6**4, lr) for 5)."""
    if stage.get("discriminative", True):  # our Stage's default
        return slice(stage["lr"] / DISCRIMINATIVE_FACTOR ** (n_groups - 1), stage["lr"])
    return stage["lr"]


def fit_stage(learn, stage: dict, weight_decay: float) -> None:
    """One of our `Stage`s (a dict of its fields) the fastai way: `freeze_to(-train_last)` or `unfreeze()`,
    then `fit_one_cycle`. Also used by fastai_learning_curve.py."""
    if stage.get("train_last") is None:
        learn.unfreeze()
    else:
        learn.freeze_to(-stage["train_last"])
    learn.fit_one_cycle(stage["epochs"], fastai_lr(stage, len(learn.splitter(learn.model))), wd=weight_decay)


def run_stages(learn, recipe: dict) -> dict:
    recorder = RecordSteps()
    learn.add_cbs([WeightDropoutOff(), recorder])
    with learn.no_bar(), learn.no_logging():
        for stage in recipe["stages"]:
            fit_stage(learn, stage, recipe["weight_decay"])
    return recorder.stacked()


def train_language_model(generator: torch.Generator, path: Path) -> dict:
    documents = random_documents(LM["document_lengths"], generator)
    train = LMDataLoader(documents, bs=LM["batch_size"], seq_len=LM["bptt"], shuffle=False)
    valid = LMDataLoader(documents[:3], bs=LM["batch_size"], seq_len=LM["bptt"], shuffle=False)
    dls = DataLoaders(train, valid, path=path)
    dls.vocab = [f"token{index}" for index in range(VOCAB_SIZE)]
    config = {**awd_lstm_lm_config, **SIZES, **NO_DROPOUT}
    learn = language_model_learner(dls, AWD_LSTM, config=config, pretrained=False, path=path)
    initial = state_copy(learn.model)
    batches = [{"input": x.as_subclass(torch.Tensor).clone(), "target": y.clone()} for x, y in train]
    steps = run_stages(learn, LM)
    recipe = {key: value for key, value in LM.items() if key != "document_lengths"}
    return {"recipe": recipe, "documents": documents, "batches": batches, "initial": initial, "steps": steps}


def train_classifier(generator: torch.Generator, path: Path) -> dict:
    documents = random_documents(CLASSIFIER["document_lengths"], generator)
    labels = torch.randint(0, 2, (len(documents),), generator=generator)
    items = [(TensorText(doc), TensorCategory(label)) for doc, label in zip(documents, labels)]
    train = DataLoader(items, bs=CLASSIFIER["batch_size"], shuffle=False)
    valid = DataLoader(items[:3], bs=CLASSIFIER["batch_size"], shuffle=False)
    dls = DataLoaders(train, valid, path=path)
    dls.vocab = [f"token{index}" for index in range(VOCAB_SIZE)]
    config = {**awd_lstm_clas_config, **SIZES, **NO_DROPOUT}
    learn = text_classifier_learner(
        dls, AWD_LSTM, seq_len=CLASSIFIER["bptt"], max_len=CLASSIFIER["max_len"], config=config, pretrained=False,
        n_out=2, lin_ftrs=CLASSIFIER["hidden_sizes"], ps=[0.0] * len(CLASSIFIER["hidden_sizes"]),
        loss_func=CrossEntropyLossFlat(), path=path,
    )
    # fastai's embedding init (uniform +-0.1) leaves the documents' pooled features within ~1e-5 of each
    # other, and the head's BatchNorm divides their differences by ~sqrt(eps): float32 rounding would be
    # amplified past the test's tolerance. A wider embedding (and batches of 3) keep it well conditioned.
    torch.nn.init.normal_(learn.model[0].module.encoder.weight, generator=generator)
    initial = state_copy(learn.model)
    batches = [{"input": x.as_subclass(torch.Tensor).clone(), "target": y.as_subclass(torch.Tensor).clone()} for x, y in train]
    steps = run_stages(learn, CLASSIFIER)
    recipe = {key: value for key, value in CLASSIFIER.items() if key != "document_lengths"}
    return {"recipe": recipe, "batches": batches, "initial": initial, "steps": steps}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("output", type=Path, help="the fixture file to write (.pt)")
    args = parser.parse_args()
    torch.manual_seed(SEED)
    torch.use_deterministic_algorithms(True)
    defaults.cpus = 0  # fastai DataLoaders load in this process (no worker processes)
    generator = torch.Generator().manual_seed(SEED)
    with tempfile.TemporaryDirectory() as work:
        fixture = {
            "language_model": train_language_model(generator, Path(work)),
            "classifier": train_classifier(generator, Path(work)),
        }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    torch.save(fixture, args.output)
    torch.load(args.output, weights_only=True)  # the test reads it so
    for task, data in fixture.items():
        print(f"{task}: {len(data['batches'])} batches per epoch, {len(data['steps']['hypers'])} optimizer steps")
    print(f"wrote {args.output} ({args.output.stat().st_size / 1024:.0f} KiB)")


if __name__ == "__main__":
    main()
