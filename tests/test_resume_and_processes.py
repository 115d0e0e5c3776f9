"""The stateful LM under checkpoint/resume, gradient accumulation, evaluation during training and 2
processes, and the classifier under checkpoint/resume, each against a run computed independently
(uninterrupted, by hand, or on one process)."""

import functools

import subprocess

import pytest
import torch
from lm_two_processes import (
    BPTT,
    LAUNCHERS,
    REPO,
    STAGE,
    TRAIN_DOCS,
    StopAfter,
    fit,
    launch_two_cpu_processes,
    tiny_lm,
)
from test_small_sizes import RecordingClassifierTrainer, documents, labelled, tiny_classifier, train_classifier
from torch.utils.data import default_collate
from transformers import TrainerCallback

from awd_lstm_hf.data import LMStreamDataset
from awd_lstm_hf.training import LMTrainer, Stage, activation_regularization, fit_one_cycle

WINDOWS_PER_EPOCH = 20  # 4 rows of 100 tokens, bptt 5


def assert_same_weights(model, reference, atol=1e-6):
    for (name, value), expected in zip(model.state_dict().items(), reference.state_dict().values(), strict=True):
        torch.testing.assert_close(value, expected, rtol=0, atol=atol, msg=name)


def assert_same_batches(batches, reference):
    assert len(batches) == len(reference)
    for (inputs, loss), (expected_inputs, expected_loss) in zip(batches, reference):
        assert torch.equal(inputs, expected_inputs)
        assert loss == pytest.approx(expected_loss, abs=1e-6)


def assert_same_optimizer(trainer, reference):
    """Per param group: lr and beta1 (one-cycle position), max lr, decay, and each parameter's Adam moments."""
    groups, reference_groups = trainer.optimizer.param_groups, reference.optimizer.param_groups
    assert len(groups) == len(reference_groups)
    for group, expected in zip(groups, reference_groups):
        assert [group[k] for k in ("lr", "betas", "initial_lr", "weight_decay")] == \
            [expected[k] for k in ("lr", "betas", "initial_lr", "weight_decay")]
        for param, expected_param in zip(group["params"], expected["params"], strict=True):
            for moment in ("exp_avg", "exp_avg_sq"):
                torch.testing.assert_close(trainer.optimizer.state[param][moment],
                                           reference.optimizer.state[expected_param][moment], rtol=0, atol=1e-6)


@pytest.mark.parametrize("accumulation, stop_at", [(1, 7), (1, WINDOWS_PER_EPOCH), (1, 27), (2, 13)])
def test_resumed_run_continues_exactly_like_the_uninterrupted_one(tmp_path, accumulation, stop_at):
    """Interrupted after `stop_at` optimizer steps (mid-epoch, at the epoch boundary, mid second epoch),
    resumed in a fresh model and trainer: the next batches, their losses (dropout on), the evaluations, the
    optimizer (discriminative lrs, one-cycle position, frozen group left out) and the weights all match.
    A checkpoint at an epoch's last step is written after that epoch's evaluation, which it keeps."""
    full = fit(tmp_path / "full", 4, gradient_accumulation_steps=accumulation)
    interrupted = fit(tmp_path / "interrupted", 4, stop_at=stop_at, save_strategy="steps", save_steps=stop_at,
                      gradient_accumulation_steps=accumulation)
    checkpoint = tmp_path / "interrupted" / f"checkpoint-{stop_at}"
    resumed = fit(tmp_path / "resumed", 4, model=tiny_lm(seed=1), resume=str(checkpoint),
                  gradient_accumulation_steps=accumulation)

    done = stop_at * accumulation
    assert_same_batches(interrupted.batches, full.batches[:done])
    assert_same_batches(resumed.batches, full.batches[done:])
    assert_same_weights(resumed.model, full.model)
    assert_same_optimizer(resumed, full)
    # rnn1 (decayed) and embedding (decayed, decoder bias exempt) at their two max lrs; rnn0 frozen, left out
    assert [g["initial_lr"] for g in resumed.optimizer.param_groups] == pytest.approx([1e-2 / 2.6, 1e-2, 1e-2])
    evaluations = [[e["eval_loss"] for e in t.state.log_history if "eval_loss" in e] for t in (resumed, full)]
    assert evaluations[0] == pytest.approx(evaluations[1], abs=1e-6) and len(evaluations[1]) == 2
    # the checkpoint kept the state carried into the next batch: none at the end of an epoch
    carried = torch.load(checkpoint / "lm_state_0.pt", weights_only=True)
    assert (carried is None) == (stop_at * accumulation % WINDOWS_PER_EPOCH == 0)


@pytest.mark.parametrize("stop_at", [2, 6])
def test_resumed_classifier_stage_continues_exactly_like_the_uninterrupted_one(tmp_path, stop_at):
    """A 3-epoch classifier stage (12 documents, 4 length-grouped batches an epoch) interrupted in its first
    or second epoch and resumed in a fresh model: the same next batches (each epoch's order depends only on
    the seed and the epoch) and the same final weights."""
    docs = documents(12, seed=4)
    data = labelled(docs, [i % 2 for i in range(12)])
    full = train_classifier(tmp_path / "full", tiny_classifier(), data, epochs=3)[0]
    interrupted = train_classifier(
        tmp_path / "interrupted", tiny_classifier(), data, epochs=3, save_strategy="steps", save_steps=stop_at,
        trainer_class=functools.partial(RecordingClassifierTrainer, callbacks=[StopAfter(stop_at)]))[0]
    resumed = train_classifier(tmp_path / "resumed", tiny_classifier(seed=1), data, epochs=3,
                               resume_from_checkpoint=str(tmp_path / "interrupted" / f"checkpoint-{stop_at}"))[0]
    assert interrupted.batches == full.batches[:stop_at] and resumed.batches == full.batches[stop_at:]
    assert full.batches[:4] != full.batches[4:8]  # epochs differ in order
    assert_same_weights(resumed.model, full.model)


def test_evaluation_during_training_leaves_training_unchanged(tmp_path):
    """Evaluating every 3 steps changes no training batch, loss or weight; each evaluation starts from zeros
    (its own state), so the last one equals an evaluation of the final model on its own."""
    plain = fit(tmp_path / "plain", 4, eval_strategy="no")
    evaluated = fit(tmp_path / "evaluated", 4, eval_strategy="steps", eval_steps=3)
    assert_same_batches(evaluated.batches, plain.batches)
    assert_same_weights(evaluated.model, plain.model, atol=0)
    losses = [e["eval_loss"] for e in evaluated.state.log_history if "eval_loss" in e]
    assert len(losses) == 2 * WINDOWS_PER_EPOCH // 3 + 1
    assert evaluated.evaluate()["eval_loss"] == pytest.approx(losses[-1], abs=1e-6)


class _RecordGradients(TrainerCallback):
    """Before every optimizer step: the weights it starts from and the accumulated gradients."""

    def __init__(self):
        self.steps = []

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        self.steps.append(({k: v.detach().clone() for k, v in model.state_dict().items()},
                           [p.grad.detach().clone() for p in model.parameters()]))


class GradientRecordingLMTrainer(LMTrainer):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.recorder = _RecordGradients()
        self.add_callback(self.recorder)


def test_gradient_accumulation_averages_consecutive_windows_like_fastai(tmp_path):
    """GA 2 over a stream of 5 windows: steps of windows (0, 1), (2, 3), (4). Each step's gradient is the
    mean of the per-window gradients (loss + AR/TAR) with the state carried from window to window, as
    fastai's GradientAccumulation gives, not their sum; the rows stay those of one micro-batch."""
    rows, row_len = 3, 23
    stream = LMStreamDataset([list(range(rows * row_len + 1))], rows, BPTT)
    assert stream.n_windows == 5
    model = tiny_lm(drop_mult=0.0)  # no dropout, fp32 and no clipping: the reference below is exact
    trainer, _ = fit_one_cycle(
        model, Stage(epochs=1, lr=1e-2), stream, None, trainer_class=GradientRecordingLMTrainer,
        sampling="sequential", output_dir=str(tmp_path), batch_size=rows, weight_decay=0.1, seed=0,
        gradient_accumulation_steps=2, max_grad_norm=0.0, precision="fp32",
    )
    windows = [default_collate([stream[w * rows + r] for r in range(rows)]) for w in range(stream.n_windows)]
    reference, state = tiny_lm(drop_mult=0.0).train(), None
    steps = trainer.recorder.steps
    assert len(steps) == 3
    for (weights, gradients), step_windows in zip(steps, [windows[0:2], windows[2:4], windows[4:]]):
        reference.load_state_dict(weights)
        reference.zero_grad()
        for batch in step_windows:
            out = reference(**batch, cache=state, use_cache=True)
            loss = out.loss + activation_regularization(out.last_hidden_state, out.dropped_hidden_state)
            (loss / len(step_windows)).backward()
            state = out.cache.detach_()
        for gradient, parameter in zip(gradients, reference.parameters(), strict=True):
            torch.testing.assert_close(gradient, parameter.grad, rtol=1e-5, atol=1e-7)


def test_stream_rows_must_be_one_micro_batch_of_all_processes(tmp_path):
    """A stream cut into per-device batch x accumulation steps rows would not continue from batch to batch."""
    stream = LMStreamDataset(TRAIN_DOCS, rows=4, bptt=BPTT)
    with pytest.raises(ValueError, match="rows = per-device batch size x processes"):
        fit_one_cycle(tiny_lm(), STAGE, stream, None, trainer_class=LMTrainer, sampling="sequential",
                      output_dir=str(tmp_path), batch_size=2, weight_decay=0.1, seed=0, gradient_accumulation_steps=2)


@pytest.mark.slow
@pytest.mark.parametrize("launcher", LAUNCHERS)
def test_two_processes_train_disjoint_rows_covering_the_corpus_like_one_process(tmp_path, launcher):
    """Two CPU processes, 2 rows each: in each epoch process p trains on rows 2p, 2p+1 of that epoch's
    shuffled stream, window after window; the two see no token twice and together everything but the < 4-token
    remainder. The weights equal one process training all 4 rows."""
    command, env = launch_two_cpu_processes(launcher, REPO / "tests" / "lm_two_processes.py", str(tmp_path))
    run = subprocess.run(command, capture_output=True, text=True, timeout=300,
                         env=env | {"PYTHONPATH": str(REPO / "tests")})
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]

    stream = LMStreamDataset(TRAIN_DOCS, 4, BPTT, shuffle=True, seed=3)
    row_len = stream.row_len
    per_process = [torch.load(tmp_path / f"batches_{p}.pt", weights_only=True) for p in range(2)]
    for epoch in range(2):
        stream.set_epoch(epoch)
        seen = []
        for process, batches in enumerate(per_process):
            rows = torch.cat(batches[epoch * stream.n_windows:(epoch + 1) * stream.n_windows], dim=1)
            expected = stream.stream[2 * process * row_len:(2 * process + 2) * row_len].reshape(2, row_len)
            assert rows.tolist() == expected.tolist()
            seen.append(rows.flatten().tolist())
        assert not set(seen[0]) & set(seen[1])
        assert sorted(seen[0] + seen[1]) == sorted(stream.stream[: 4 * row_len].tolist())
        assert len(stream.stream) - 1 - 4 * row_len < 4

    single = fit(tmp_path / "single", 4, model=tiny_lm(drop_mult=0.0), precision="fp32")
    assert_same_weights(single.model, _loaded(torch.load(tmp_path / "weights.pt", weights_only=True)), atol=1e-5)


def _loaded(state_dict):
    model = tiny_lm()
    model.load_state_dict(state_dict)
    return model
