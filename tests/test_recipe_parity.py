"""Our Trainer path against fastai's own training, step by step.

`fixtures/fastai_recipe/recipe.pt` was written by `scripts/fastai_recipe_reference.py` in a fastai 2.8.12
venv: a tiny LM and classifier trained with fastai's learners, callbacks, optimizer and one-cycle,
dropouts off. Here the same initial weights, converted, are trained on the same batches with
`training.fit_one_cycle`, and after every optimizer step the lr and beta1 of every layer group and every
parameter and buffer must equal fastai's.
"""

from pathlib import Path

import pytest
import torch
from transformers import TrainerCallback

from awd_lstm_hf.convert import convert_fastai_checkpoint, fastai_to_hf_state_dict
from awd_lstm_hf.data import ClassificationCollator, LMStreamDataset
from awd_lstm_hf.training import ClassifierTrainer, LMTrainer, Stage, fit_one_cycle, layer_groups

FIXTURE = Path(__file__).parent / "fixtures" / "fastai_recipe" / "recipe.pt"
TOLERANCE = 1e-5
FP32_ON_CPU = dict(precision="fp32")  # fastai's reference ran in fp32 on a CPU


@pytest.fixture(scope="module")
def reference() -> dict:
    return torch.load(FIXTURE, weights_only=True)


class RecordSteps(TrainerCallback):
    """The (layer group, lr, beta1) of every param group each optimizer step uses, and the state after it."""

    def __init__(self, model):
        self.group_of = {id(p): index for index, group in enumerate(layer_groups(model)) for p in group}
        self.hypers, self.states = [], []

    def on_pre_optimizer_step(self, args, state, control, optimizer=None, **kwargs):
        self.hypers.append([(self.group_of[id(g["params"][0])], g["lr"], g["betas"][0]) for g in optimizer.param_groups])

    def on_step_end(self, args, state, control, model=None, **kwargs):
        self.states.append({key: value.detach().clone() for key, value in model.state_dict().items()})


def train_like_fastai(model, recipe, dataset, trainer_class, tmp_path, **fit_arguments) -> RecordSteps:
    recorder = RecordSteps(model)

    class RecordingTrainer(trainer_class):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.add_callback(recorder)

    for index, stage in enumerate(recipe["stages"]):
        fit_one_cycle(
            model, Stage(**stage), dataset, None, trainer_class=RecordingTrainer, output_dir=str(tmp_path / str(index)),
            batch_size=recipe["batch_size"], weight_decay=recipe["weight_decay"], seed=0, sampling="sequential",
            **fit_arguments, **FP32_ON_CPU,
        )
    return recorder


def assert_steps_match(recorder: RecordSteps, fastai_steps: dict, task: str) -> None:
    expected_hypers, stacked = fastai_steps["hypers"], fastai_steps["state_dict"]
    assert len(recorder.states) == len(expected_hypers)
    for step, (hypers, state) in enumerate(zip(recorder.hypers, recorder.states)):
        for group, lr, beta1 in hypers:  # fastai computes the schedule's position in float32
            assert (lr, beta1) == pytest.approx(expected_hypers[step, group, :2].tolist(), rel=1e-6), (step, group)
        expected = fastai_to_hf_state_dict({key: value[step] for key, value in stacked.items()}, task)[0]
        differences = {key: (state[key].double() - value.double()).abs().max().item() for key, value in expected.items()}
        worst = max(differences, key=differences.get)
        assert differences[worst] <= TOLERANCE, f"step {step}: {worst} differs from fastai's by {differences[worst]:.2e}"


def test_language_model_steps_equal_fastai(reference, tmp_path):
    """Frozen then unfrozen (discriminative lrs, two epochs): stateful BPTT over fastai's LMDataLoader
    batches, the state reset at each epoch, AR/TAR, decoupled weight decay with the decoder bias exempt."""
    fastai_run = reference["language_model"]
    recipe = fastai_run["recipe"]
    dataset = LMStreamDataset(fastai_run["documents"], rows=recipe["batch_size"], bptt=recipe["bptt"])
    for index, batch in enumerate(fastai_run["batches"]):
        rows = [dataset[index * recipe["batch_size"] + row] for row in range(recipe["batch_size"])]
        assert torch.equal(torch.stack([row["input_ids"] for row in rows]), batch["input"])
        assert torch.equal(torch.stack([row["shift_labels"] for row in rows]), batch["target"])
    model = convert_fastai_checkpoint(fastai_run["initial"], "lm", drop_mult=0.0)
    recorder = train_like_fastai(model, recipe, dataset, LMTrainer, tmp_path)
    assert_steps_match(recorder, fastai_run["steps"], "lm")


def test_classifier_steps_equal_fastai(reference, tmp_path):
    """Gradual unfreezing (freeze, freeze_to(-2), freeze_to(-3), unfreeze) with slice(lr/2.6**4, lr):
    documents read in bptt chunks with max_len, BatchNorm in the head (trainable, not decayed), AR/TAR."""
    fastai_run = reference["classifier"]
    recipe = fastai_run["recipe"]
    documents = [
        {"input_ids": document, "label": int(label)}
        for batch in fastai_run["batches"]
        for document, label in zip(batch["input"], batch["target"])
    ]
    model = convert_fastai_checkpoint(
        fastai_run["initial"], "classification", drop_mult=0.0, bptt=recipe["bptt"], max_len=recipe["max_len"],
        classifier_dropouts=[0.0] * len(recipe["hidden_sizes"]),
    )
    recorder = train_like_fastai(model, recipe, documents, ClassifierTrainer, tmp_path, data_collator=ClassificationCollator())
    assert_steps_match(recorder, fastai_run["steps"], "classification")
