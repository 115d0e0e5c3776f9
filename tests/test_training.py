"""The recipe's numbers against fastai's (reference notes, section 6), worked by hand."""

import math

import numpy as np
import pytest
import torch

from awd_lstm_hf import AWDLSTMConfig, AWDLSTMForCausalLM, AWDLSTMForSequenceClassification
from awd_lstm_hf.data import LMStreamDataset
from awd_lstm_hf.training import (
    OneCycleSchedule,
    SortedBatchesSampler,
    Stage,
    activation_regularization,
    build_optimizer,
    discriminative_lrs,
    fit_one_cycle,
    freeze_to,
    layer_groups,
    mixed_precision,
)
from test_resume_and_processes import GradientRecordingLMTrainer

CONFIG = dict(vocab_size=40, embedding_size=6, hidden_size=10, num_hidden_layers=3)


def test_one_cycle_follows_fastai():
    """fastai 2.8.12, 130 iterations at lr_max 1e-2 (verified there): first lr 4e-4, peak at iteration 33,
    last about 2.7e-6; beta1 0.8 -> 0.7 -> 0.8."""
    weight = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.AdamW([{"params": [weight], "lr": 1e-2}], betas=(0.9, 0.99))
    schedule = OneCycleSchedule(optimizer, total_steps=130)
    lrs, betas = [], []
    for _ in range(130):
        lrs.append(optimizer.param_groups[0]["lr"])
        betas.append(optimizer.param_groups[0]["betas"][0])
        optimizer.step()
        schedule.step()
    assert lrs[0] == pytest.approx(4e-4)
    assert max(range(130), key=lrs.__getitem__) == 33
    assert lrs[-1] == pytest.approx(2.7e-6, rel=0.05)
    assert betas[0] == pytest.approx(0.8) and min(betas) == pytest.approx(0.7, abs=1e-3)
    assert betas[-1] == pytest.approx(0.8, abs=1e-3)
    # by hand: iteration 10 is in the warm-up, x = (10/130)/0.25
    x = (10 / 130) / 0.25
    assert lrs[10] == pytest.approx(4e-4 + (1e-2 - 4e-4) * (1 - math.cos(math.pi * x)) / 2)


def test_discriminative_lrs_are_fastai_slices():
    assert discriminative_lrs(1e-2, 5) == pytest.approx([2.19e-4, 5.69e-4, 1.48e-3, 3.85e-3, 1e-2], rel=2e-3)
    assert discriminative_lrs(1e-3, 4, discriminative=False) == [1e-3] * 4


def test_layer_groups_match_fastai_splitters():
    lm = AWDLSTMForCausalLM(AWDLSTMConfig(**CONFIG))
    groups = layer_groups(lm)
    assert len(groups) == 4
    assert groups[3][0] is lm.model.encoder.weight is lm.lm_head.weight  # tied matrix listed once
    assert groups[3][1] is lm.lm_head.bias and len(groups[3]) == 2
    assert sum(p.numel() for g in groups for p in g) == lm.num_parameters()
    classifier = AWDLSTMForSequenceClassification(AWDLSTMConfig(**CONFIG))
    groups = layer_groups(classifier)
    assert len(groups) == 5 and groups[0] == [classifier.model.encoder.weight]
    assert sum(p.numel() for g in groups for p in g) == classifier.num_parameters()


def test_freeze_to_and_weight_decay_exemptions():
    classifier = AWDLSTMForSequenceClassification(AWDLSTMConfig(**CONFIG))
    freeze_to(classifier, 2)  # fastai freeze_to(-2): last LSTM + head
    trainable = {name for name, p in classifier.named_parameters() if p.requires_grad}
    assert trainable == {n for n, _ in classifier.named_parameters() if n.startswith(("model.rnns.2.", "classifier."))}
    freeze_to(classifier, 1)
    assert all(p.requires_grad for p in classifier.classifier.parameters())
    optimizer = build_optimizer(classifier, discriminative_lrs(1e-2, 5), weight_decay=0.01)
    decayed = {id(p) for g in optimizer.param_groups if g["weight_decay"] > 0 for p in g["params"]}
    batch_norm = {id(p) for b in classifier.classifier.blocks for p in b.batch_norm.parameters()}
    assert not decayed & batch_norm  # BatchNorm is exempt (fastai wd_bn_bias=False)
    assert {g["lr"] for g in optimizer.param_groups} == {1e-2}  # only the head group is trainable
    freeze_to(classifier, None)
    lm = AWDLSTMForCausalLM(AWDLSTMConfig(**CONFIG))
    optimizer = build_optimizer(lm, [1e-3] * 4, weight_decay=0.1)
    exempt = [p for g in optimizer.param_groups if g["weight_decay"] == 0 for p in g["params"]]
    assert len(exempt) == 1 and exempt[0] is lm.lm_head.bias  # decoder bias exempt, LSTM biases decayed
    assert optimizer.defaults["eps"] == 1e-5 and optimizer.param_groups[0]["betas"][1] == 0.99


def test_activation_regularization_by_hand():
    raw = torch.tensor([[[1.0, 2.0], [3.0, 5.0], [0.0, 0.0]]])
    dropped = torch.tensor([[[2.0, 0.0], [0.0, 4.0], [1.0, 1.0]]])
    # AR = 2 * mean(dropped^2) = 2 * (4+16+1+1)/6; TAR = 1 * mean of squared steps = (4+9+9+25)/4
    assert activation_regularization(raw, dropped) == pytest.approx(2 * 22 / 6 + 47 / 4)
    mask = torch.tensor([[True, True, False]])  # only the first two positions are real
    assert activation_regularization(raw, dropped, mask) == pytest.approx(2 * 20 / 4 + 13 / 2)


@pytest.mark.parametrize("clip", [None, 0.05])
def test_gradients_are_clipped_only_when_asked(tmp_path, clip):
    """fastai v2's fit_one_cycle does not clip (Trainer would clip at 1.0 by default); `max_grad_norm` (the
    presets' `clip`, fastai's GradientClip) bounds the total gradient norm the optimizer sees."""
    torch.manual_seed(0)
    model = AWDLSTMForCausalLM(AWDLSTMConfig(**CONFIG, drop_mult=0.0))
    stream = LMStreamDataset([list(range(9, 40)) * 8], rows=4, bptt=5)
    clipping = {"max_grad_norm": clip} if clip else {}
    trainer, _ = fit_one_cycle(model, Stage(epochs=1, lr=0.5), stream, None, trainer_class=GradientRecordingLMTrainer,
                               output_dir=str(tmp_path), batch_size=4, weight_decay=0.01, seed=0,
                               sampling="sequential", precision="fp32", **clipping)
    # the gradients the optimizer steps with (recorded after Trainer's clipping)
    norms = [torch.linalg.vector_norm(torch.stack([g.norm() for g in grads])).item() for _, grads in trainer.recorder.steps]
    assert len(norms) == stream.n_windows
    if clip:
        assert max(norms) <= clip * (1 + 1e-4)
    else:
        assert max(norms) > 1.0  # above Trainer's default bound: nothing clipped it


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU choices")
def test_precision_choices_on_cpu():
    """fp32 (fastai's default) and bf16 on request; auto picks bf16 only where the CPU has it natively;
    fp16 (CUDA's loss scaling) and unknown names are refused rather than silently replaced."""
    assert mixed_precision("fp32") == {"use_cpu": True}
    assert mixed_precision("bf16") == {"use_cpu": True, "bf16": True}
    native = torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    assert mixed_precision("auto") == mixed_precision("bf16" if native else "fp32")
    for refused in ("fp16", "half"):
        with pytest.raises(ValueError, match="fp16|precision"):
            mixed_precision(refused)


def test_sorted_batches_are_fastai_sorted_dl_batches_in_random_order():
    """fastai's SortedDL: batches of similar lengths (cut from length-sorted chunks of 50 batches), the one
    with the longest document first, then the others in random order, not in the long-to-short streaks of
    transformers' LengthGroupedSampler (those cost the classifier accuracy); reproducible per (seed, epoch)."""
    rng = np.random.default_rng(0)
    lengths = rng.integers(5, 3000, 4000)
    batch_size = 8
    sampler = SortedBatchesSampler(batch_size, lengths.tolist(), seed=3)
    order = list(sampler)
    assert sorted(order) == list(range(len(lengths)))
    batches = [np.array(order[i:i + batch_size]) for i in range(0, len(order), batch_size)]
    assert int(np.argmax(lengths)) in batches[0]
    batch_lengths = [lengths[batch] for batch in batches]
    assert all((np.diff(b) <= 0).all() for b in batch_lengths)  # each batch a slice of a sorted chunk
    # similar lengths: a batch's spread is a small part of the whole range (random batches: ~3/4 of it)
    assert np.mean([b.max() - b.min() for b in batch_lengths]) < 0.1 * (lengths.max() - lengths.min())
    # random batch order: about half the consecutive pairs go up (sorted streaks: one per chunk of 50)
    firsts = np.array([b[0] for b in batch_lengths])
    ascents = int((np.diff(firsts) > 0).sum())
    assert 0.4 * len(batches) < ascents < 0.6 * len(batches)
    assert list(SortedBatchesSampler(batch_size, lengths.tolist(), seed=3)) == order
    sampler.set_epoch(1)
    assert list(sampler) != order
    sampler.set_epoch(0)
    assert list(sampler) == order


@pytest.mark.parametrize("n", [0, 1, 7, 8, 9, 17])
def test_sorted_batches_cover_small_datasets(n):
    """Fewer documents than a batch, exactly one or two batches, a short last batch: each index once, the
    shortest (last) batch last, as fastai's drop_last then drops it."""
    lengths = list(range(1, n + 1))
    order = list(SortedBatchesSampler(8, lengths, seed=0))
    assert sorted(order) == list(range(n))
    if n:
        assert order[0] == n - 1  # the longest document opens the first batch
    if n > 8:
        last = order[-(n % 8 or 8):]
        assert max(lengths[i] for i in last) <= min(lengths[i] for i in order[:8])


def test_classifier_trainer_draws_length_grouped_batches_in_fastai_order(tmp_path):
    from transformers import TrainingArguments

    from awd_lstm_hf.training import ClassifierTrainer

    train = [{"input_ids": list(range(9, 9 + n)), "labels": n % 2} for n in (3, 12, 5, 9, 20, 7)]
    arguments = TrainingArguments(str(tmp_path), per_device_train_batch_size=2, train_sampling_strategy="group_by_length",
                                  seed=5, report_to="none", use_cpu=True)
    trainer = ClassifierTrainer(model=AWDLSTMForSequenceClassification(AWDLSTMConfig(**CONFIG)), args=arguments,
                                train_dataset=train, stage=Stage(epochs=1, lr=1e-2))
    sampler = trainer._get_train_sampler()
    assert isinstance(sampler, SortedBatchesSampler)
    assert list(sampler) == list(SortedBatchesSampler(2, [3, 12, 5, 9, 20, 7], seed=5))
