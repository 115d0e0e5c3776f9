"""The ULMFiT training recipe on `transformers.Trainer`, as fastai 2.8.12's text learners run it.

Each fastai concept has one home here:
- `layer_groups`: fastai's splitters (`awd_lstm_lm_split`, `awd_lstm_clas_split`);
- `build_optimizer`: fastai's Adam (beta2 0.99, eps 1e-5, decoupled weight decay and its exemptions),
  one param group per layer group with discriminative learning rates;
- `OneCycleSchedule`: `fit_one_cycle` (cosine pieces, div 25, final div 1e5, beta1 cycled 0.8/0.7/0.8);
- `activation_regularization`: AR/TAR (`RNNRegularizer`, alpha 2, beta 1), training only;
- `LMTrainer`: stateful BPTT, the hidden state carried from batch to batch (fastai's `ModelResetter`
  resets it per epoch and per validation), kept in checkpoints so that a resumed run continues exactly;
- `SortedBatchesSampler`: the classifier's training batches in fastai's `SortedDL` order;
- `require_a_training_batch`: the last incomplete training batch is dropped, as fastai does;
- `fit_one_cycle`: one call = one `Trainer.train()` with its own schedule, after `freeze_to`, like
  fastai's `learn.freeze_to(n); learn.fit_one_cycle(...)`;
- `transfer_language_model`: a pretrained LM moved onto a new vocabulary (`load_pretrained` + `match_embeds`).
"""

import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.utils.data import SequentialSampler
from transformers import Trainer, TrainerCallback, TrainingArguments
from transformers.trainer_pt_utils import LengthGroupedSampler
from transformers.trainer_utils import has_length

from .data import LMStreamDataset
from .modeling_awd_lstm import AWDLSTMCache, AWDLSTMForCausalLM, AWDLSTMForSequenceClassification

logger = logging.getLogger(__name__)

ADAM_BETA2 = 0.99  # fastai Adam sqr_mom
ADAM_EPS = 1e-5  # fastai Adam eps
AR_ALPHA, TAR_BETA = 2.0, 1.0  # fastai TextLearner's RNNRegularizer defaults
DISCRIMINATIVE_FACTOR = 2.6  # ULMFiT's slice(lr / 2.6**4, lr)


def layer_groups(model: nn.Module) -> list[list[nn.Parameter]]:
    """fastai's splitters. LM: [rnn0], [rnn1], ..., [embedding = tied decoder, decoder bias].
    Classifier: [embedding], [rnn0], ..., [head]. `freeze_to(-n)` trains the last n groups."""
    encoder = model.model
    rnn_groups = [list(layer.parameters()) for layer in encoder.rnns]
    if isinstance(model, AWDLSTMForCausalLM):
        embedding_group = list(encoder.encoder.parameters())
        embedding_group += [p for p in model.lm_head.parameters() if all(p is not q for q in embedding_group)]
        return [*rnn_groups, embedding_group]
    if isinstance(model, AWDLSTMForSequenceClassification):
        return [list(encoder.encoder.parameters()), *rnn_groups, list(model.classifier.parameters())]
    raise TypeError(f"no layer groups for {type(model).__name__}")


def freeze_to(model: nn.Module, n_trainable: int | None) -> None:
    """Train only the last `n_trainable` layer groups (None: all, fastai's `unfreeze`). BatchNorm stays
    trainable everywhere (fastai `train_bn=True`)."""
    groups = layer_groups(model)
    n_frozen = 0 if n_trainable is None else max(len(groups) - n_trainable, 0)
    for index, group in enumerate(groups):
        for param in group:
            param.requires_grad_(index >= n_frozen)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm1d):
            module.requires_grad_(True)


def discriminative_lrs(lr: float, n_groups: int, discriminative: bool = True) -> list[float]:
    """fastai `slice(lr / 2.6**(n-1), lr)`: geometric from the first group to the last; or one lr for all."""
    if not discriminative:
        return [lr] * n_groups
    return [lr / DISCRIMINATIVE_FACTOR ** (n_groups - 1 - index) for index in range(n_groups)]


def _exempt_from_weight_decay(model: nn.Module) -> set[int]:
    """fastai (`wd_bn_bias=False`) skips BatchNorm parameters and the `.bias` of modules whose bias is a
    tensor (the decoder bias). The LSTM biases are decayed, as in fastai (nn.LSTM.bias is a bool)."""
    exempt = set()
    for module in model.modules():
        if isinstance(module, nn.BatchNorm1d):
            exempt |= {id(p) for p in module.parameters(recurse=False)}
        elif isinstance(module, nn.Linear) and module.bias is not None:
            exempt.add(id(module.bias))
    return exempt


def build_optimizer(model: nn.Module, lrs: list[float], weight_decay: float) -> torch.optim.AdamW:
    """fastai's Adam with decoupled weight decay equals AdamW(betas=(beta1, 0.99), eps=1e-5); one decayed
    and one exempt param group per layer group, each with its own max lr. Frozen parameters are left out
    (fastai gives them no gradient and no decay)."""
    exempt = _exempt_from_weight_decay(model)
    param_groups = []
    for group, lr in zip(layer_groups(model), lrs, strict=True):
        trainable = [p for p in group if p.requires_grad]
        for decay in (True, False):
            params = [p for p in trainable if (id(p) in exempt) != decay]
            if params:
                param_groups.append({"params": params, "lr": lr, "weight_decay": weight_decay if decay else 0.0})
    return torch.optim.AdamW(param_groups, betas=(0.9, ADAM_BETA2), eps=ADAM_EPS)


def _cosine(start: float, end: float, fraction: float) -> float:
    return start + (end - start) * (1 - math.cos(math.pi * fraction)) / 2


class OneCycleSchedule(torch.optim.lr_scheduler.LRScheduler):
    """fastai v2 `fit_one_cycle`: lr goes max/div -> max (cosine) over the first `pct_start` of the steps,
    then max -> max/div_final; Adam's beta1 goes 0.8 -> 0.7 -> 0.8 on the same clock. Each param group
    follows the shape scaled by its own max lr."""

    def __init__(self, optimizer, total_steps: int, pct_start=0.25, div=25.0, div_final=1e5, moms=(0.8, 0.7, 0.8)):
        self.total_steps = max(total_steps, 1)
        self.pct_start, self.div, self.div_final, self.moms = pct_start, div, div_final, moms
        super().__init__(optimizer)

    def get_lr(self) -> list[float]:
        position = min(self.last_epoch / self.total_steps, 1.0)  # fraction of steps done before this one
        if position < self.pct_start:
            fraction = position / self.pct_start
            scales, beta1 = (1 / self.div, 1.0), _cosine(self.moms[0], self.moms[1], fraction)
        else:
            fraction = (position - self.pct_start) / (1 - self.pct_start)
            scales, beta1 = (1.0, 1 / self.div_final), _cosine(self.moms[1], self.moms[2], fraction)
        for group in self.optimizer.param_groups:  # beta1 is scheduled together with the lr
            group["betas"] = (beta1, group["betas"][1])
        return [_cosine(base * scales[0], base * scales[1], fraction) for base in self.base_lrs]


def activation_regularization(raw: torch.Tensor, dropped: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """AR (alpha * mean of the dropped last-layer output squared) + TAR (beta * mean squared change of
    the raw output between consecutive time steps), as fastai's RNNRegularizer, in float32. With a mask,
    only real positions (and pairs of consecutive real positions) count."""
    raw, dropped = raw.float(), dropped.float()
    if mask is None:
        ar = dropped.pow(2).mean()
        tar = (raw[:, 1:] - raw[:, :-1]).pow(2).mean() if raw.shape[1] > 1 else raw.new_zeros(())
    else:
        weights = mask.unsqueeze(-1).float()
        ar = (dropped.pow(2) * weights).sum() / (weights.sum() * raw.shape[-1]).clamp(min=1)
        pair_weights = weights[:, 1:] * weights[:, :-1]
        tar = ((raw[:, 1:] - raw[:, :-1]).pow(2) * pair_weights).sum() / (pair_weights.sum() * raw.shape[-1]).clamp(min=1)
    return AR_ALPHA * ar + TAR_BETA * tar


def _with_hidden_regularizer(loss: torch.Tensor, regularizer: torch.Tensor) -> torch.Tensor:
    """Add AR/TAR to the gradient but not to the reported value (fastai logs the loss without them)."""
    return loss + (regularizer - regularizer.detach())


@dataclass
class Stage:
    """One `fit_one_cycle` call: `train_last` layer groups trainable (None: all), max lr of the last group,
    discriminative (`slice(lr/2.6**k, lr)`) or one lr for all, epochs."""

    epochs: float
    lr: float
    train_last: int | None = None
    discriminative: bool = True
    pct_start: float = 0.25


class _SaveAfterEpochEvaluation(TrainerCallback):
    """Trainer writes a checkpoint due at the last step of an epoch before that epoch's evaluation, so a
    run resumed from it would never log the evaluation: write it after."""

    def __init__(self):
        self.deferred = False

    def on_step_end(self, args, state, control, **kwargs):
        if control.should_save and args.eval_strategy == "epoch" and state.epoch.is_integer():
            control.should_save, self.deferred = False, True

    def on_epoch_end(self, args, state, control, **kwargs):
        if self.deferred:
            control.should_save, self.deferred = True, False


class SortedBatchesSampler(torch.utils.data.Sampler):
    """fastai's `SortedDL` training order: documents shuffled, sorted by length (longest first) within
    chunks of 50 batches and cut into batches, so a batch holds documents of similar length (little
    padding); the batch with the longest document comes first (memory fails at once, if at all), the last
    (shortest, possibly incomplete) stays last, and all others come in random order.

    transformers' `LengthGroupedSampler` keeps each chunk's batches sorted, so training sweeps from long to
    short documents 50 batches at a time; those correlated streaks cost the classifier accuracy. The order
    is drawn from a generator seeded by (seed, epoch), so a run resumed in a later epoch draws it again."""

    CHUNK_BATCHES = 50  # fastai SortedDL: sz = bs * 50

    def __init__(self, batch_size: int, lengths: Sequence[int], seed: int):
        self.batch_size, self.lengths, self.seed = batch_size, np.asarray(lengths), seed
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        """Called by Accelerate's DataLoaderShard before each pass."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.lengths)

    def __iter__(self):
        n, size = len(self.lengths), self.batch_size
        if n == 0:
            return iter([])
        rng = np.random.default_rng([self.seed, self.epoch])
        order = rng.permutation(n)
        first = int(np.flatnonzero(order == int(np.argmax(self.lengths)))[0])
        order[[0, first]] = order[[first, 0]]
        chunk = size * self.CHUNK_BATCHES
        order = np.concatenate([part[np.argsort(-self.lengths[part], kind="stable")]
                                for part in np.split(order, range(chunk, n, chunk))])
        batches = np.split(order, range(size, n, size))
        middle = [batches[1 + index] for index in rng.permutation(max(len(batches) - 2, 0))]
        ends = [batches[-1]] if len(batches) > 1 else []
        return iter(np.concatenate([batches[0], *middle, *ends]).tolist())


def require_a_training_batch(n_documents: int, batch_size: int, processes: int = 1,
                             batch_size_name: str = "batch_size") -> None:
    """fastai drops the last incomplete batch of every training epoch, and Accelerate deals whole batches to
    the processes in turn, dropping an incomplete last round: each process trains on
    n_documents // (batch_size x processes) batches an epoch. None at all would leave Trainer an empty
    DataLoader (its error, about `max_steps`, names neither size), so it is refused here with both."""
    if n_documents < batch_size * processes:
        per_process = f" x {processes} processes" if processes > 1 else ""
        smaller = f"a {batch_size_name} of at most {n_documents // processes}, or " if n_documents >= processes else ""
        raise ValueError(
            f"{n_documents} training documents do not fill one batch of {batch_size_name} {batch_size}{per_process}: "
            "the last incomplete batch of an epoch is dropped (as fastai does), so there would be nothing to train "
            f"on. Use {smaller}more training documents.")


class ULMFiTTrainer(Trainer):
    """A Trainer running one `Stage`: fastai's optimizer over the layer groups with the stage's
    (discriminative) max lrs, and the one-cycle schedule."""

    def __init__(self, *args, stage: Stage, **kwargs):
        self.stage = stage
        super().__init__(*args, **kwargs)
        self.add_callback(_SaveAfterEpochEvaluation())

    def create_optimizer(self, model=None):
        if self.optimizer is None:
            lrs = discriminative_lrs(self.stage.lr, len(layer_groups(self.model)), self.stage.discriminative)
            self.optimizer = build_optimizer(self.model, lrs, self.args.weight_decay)
        return self.optimizer

    def create_scheduler(self, num_training_steps, optimizer=None):
        if self.lr_scheduler is None:
            self.lr_scheduler = OneCycleSchedule(optimizer or self.optimizer, num_training_steps, pct_start=self.stage.pct_start)
        return self.lr_scheduler

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix="eval"):
        """Evaluation in the middle of training leaves training as it was: its DataLoader would otherwise draw
        a seed from the global CPU generator and shift every later dropout mask."""
        with torch.random.fork_rng(devices=[]):
            return super().evaluate(eval_dataset, ignore_keys, metric_key_prefix)

    def get_train_dataloader(self):
        """fastai drops the last incomplete batch of every training epoch (a BatchNorm head would otherwise
        normalise a batch of one row); evaluation keeps every document (Trainer has one flag for both)."""
        if has_length(self.train_dataset):
            require_a_training_batch(len(self.train_dataset), self.args.per_device_train_batch_size,
                                     self.args.world_size, "per-device batch size")
        drop_last, self.args.dataloader_drop_last = self.args.dataloader_drop_last, True
        try:
            return super().get_train_dataloader()
        finally:
            self.args.dataloader_drop_last = drop_last

    def _get_train_sampler(self, train_dataset=None):
        sampler = super()._get_train_sampler(train_dataset)
        if isinstance(sampler, LengthGroupedSampler):
            return SortedBatchesSampler(sampler.batch_size, sampler.lengths, self.args.seed)
        return sampler

    def _get_eval_sampler(self, eval_dataset):
        """Evaluation and `predict` in dataset order, as fastai's `get_preds` returns them (train.py sorts its
        evaluation sets by length itself); Trainer would group them by length like the training batches."""
        if eval_dataset is None or not has_length(eval_dataset):
            return None
        return SequentialSampler(eval_dataset) if self.args.world_size <= 1 else None


class _ResetLMState(TrainerCallback):
    def __init__(self, trainer: "LMTrainer"):
        self.trainer = trainer

    def on_epoch_begin(self, args, state, control, **kwargs):
        self.trainer.lm_state["train"] = None


class LMTrainer(ULMFiTTrainer):
    """Stateful BPTT: batches are consecutive windows of the same rows (see `data.LMStreamDataset`), so the
    state after batch k is the starting state of batch k+1, detached. Evaluation starts from zeros, and
    reports token accuracy and perplexity without gathering vocabulary-sized logits.

    With gradient accumulation the micro-batches are consecutive windows too, and the step's gradient is
    the mean of their (per-window mean) losses' gradients, as fastai's `GradientAccumulation`. Checkpoints
    hold each process's carried state, so `train(resume_from_checkpoint=...)` continues exactly."""

    # compute_loss returns a per-micro-batch mean: Trainer divides it by the accumulation steps.
    loss_is_scaled_for_ga = False

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        for dataset, per_device in ((self.train_dataset, self.args.per_device_train_batch_size),
                                    (self.eval_dataset, self.args.per_device_eval_batch_size)):
            rows = per_device * self.args.world_size
            if isinstance(dataset, LMStreamDataset) and dataset.rows != rows:
                raise ValueError(f"the LM stream has {dataset.rows} rows, but a batch of all processes has {rows} "
                                 f"({per_device} per device x {self.args.world_size} processes): build the stream "
                                 "with rows = per-device batch size x processes (not x accumulation steps)")
        self.lm_state = {"train": None, "eval": None}
        self._eval_counts = None
        self.add_callback(_ResetLMState(self))

    def _lm_state_file(self, checkpoint: str) -> str:
        return os.path.join(checkpoint, f"lm_state_{self.args.process_index}.pt")

    def _save_rng_state(self, output_dir: str) -> None:
        """Beside each process's RNG state, the state its rows carry into the next batch (none after the
        last batch of an epoch: the next epoch starts from zeros)."""
        super()._save_rng_state(output_dir)
        carried = self.lm_state["train"]
        saved = None if carried is None or self.state.epoch.is_integer() else {
            "states": carried.states, "seen_tokens": carried.seen_tokens}
        torch.save(saved, self._lm_state_file(output_dir))

    def _load_rng_state(self, checkpoint: str | None) -> None:
        """Trainer calls this where a resumed run starts again: after skipping the batches already trained."""
        super()._load_rng_state(checkpoint)
        if checkpoint is None or self.args.ignore_data_skip:
            return
        path = self._lm_state_file(checkpoint)
        if not os.path.isfile(path):
            raise ValueError(f"{checkpoint} has no carried LM state for process {self.args.process_index} ({path}): "
                             "resume with the number of processes that wrote it")
        saved = torch.load(path, map_location=self.args.device, weights_only=True)
        self.lm_state["train"] = None if saved is None else AWDLSTMCache(**saved)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        mode = "train" if model.training else "eval"
        outputs = model(**inputs, cache=self.lm_state[mode], use_cache=True)
        self.lm_state[mode] = outputs.cache.detach_()
        loss = outputs.loss
        if model.training:
            loss = _with_hidden_regularizer(loss, activation_regularization(outputs.last_hidden_state, outputs.dropped_hidden_state))
        elif self._eval_counts is not None:
            predictions = outputs.logits.argmax(-1)
            self._eval_counts += torch.stack(
                [(predictions == inputs["shift_labels"]).sum(), inputs["shift_labels"].new_tensor(predictions.numel())]
            ).to(self._eval_counts)
        return (loss, outputs) if return_outputs else loss

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix="eval"):
        self.lm_state["eval"] = None
        self._eval_counts = torch.zeros(2, dtype=torch.long, device=self.args.device)
        try:
            metrics = super().evaluate(eval_dataset, ignore_keys, metric_key_prefix)
        finally:
            counts, self._eval_counts = self.accelerator.reduce(self._eval_counts, reduction="sum"), None
        metrics[f"{metric_key_prefix}_accuracy"] = counts[0].item() / max(counts[1].item(), 1)
        metrics[f"{metric_key_prefix}_perplexity"] = math.exp(metrics[f"{metric_key_prefix}_loss"])
        self.log({key: metrics[key] for key in (f"{metric_key_prefix}_accuracy", f"{metric_key_prefix}_perplexity")})
        return metrics


class ClassifierTrainer(ULMFiTTrainer):
    """Adds AR/TAR on the pooled-window encoder outputs in training, as fastai's TextLearner does."""

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        outputs = model(**inputs)
        loss = outputs.loss
        if model.training:
            hidden = outputs.last_hidden_state
            loss = _with_hidden_regularizer(loss, activation_regularization(hidden, hidden, outputs.pooled_mask))
        return (loss, outputs) if return_outputs else loss


def classification_accuracy(eval_prediction) -> dict[str, float]:
    logits, labels = eval_prediction.predictions, eval_prediction.label_ids
    return {"accuracy": float((np.asarray(logits).argmax(-1) == np.asarray(labels)).mean())}


PRECISIONS = ("auto", "fp32", "bf16", "fp16")


def mixed_precision(precision: str = "auto") -> dict:
    """TrainingArguments for PRECISION. "auto": fp16 with loss scaling on CUDA; bf16 on a CPU with native bf16
    (AVX512-BF16 or AMX), else fp32. "fp32" is fastai's own default (it trains in fp32 unless told otherwise)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, not {precision!r}")
    on_cpu = {} if torch.cuda.is_available() else {"use_cpu": True}
    if precision == "fp16" and not torch.cuda.is_available():
        raise ValueError("precision fp16 needs CUDA; on CPU use bf16 or fp32")
    if precision == "auto":
        native_bf16 = torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
        precision = "fp16" if torch.cuda.is_available() else "bf16" if native_bf16 else "fp32"
    return on_cpu | ({} if precision == "fp32" else {precision: True})


def describe_precision(precision: dict) -> str:
    if precision.get("fp16"):
        return "fp16 mixed precision with loss scaling (CUDA)"
    if precision.get("bf16"):
        return "bf16 autocast"
    return "fp32"


def fit_one_cycle(
    model: nn.Module,
    stage: Stage,
    train_dataset,
    eval_dataset,
    *,
    trainer_class: type[ULMFiTTrainer],
    output_dir: str,
    batch_size: int,
    weight_decay: float,
    seed: int,
    data_collator=None,
    compute_metrics=None,
    sampling: str = "random",
    resume_from_checkpoint: str | None = None,
    precision: str = "auto",
    **argument_overrides,
) -> tuple[Trainer, dict]:
    """fastai `freeze_to(-train_last); fit_one_cycle(epochs, lr)` as one `Trainer.train()`: a fresh
    optimizer (fastai clears its state at every freeze change) and a fresh one-cycle schedule. Freezing
    happens before the Trainer wraps the model, so DDP sees a fixed set of trainable parameters.
    `argument_overrides` replace any of the TrainingArguments below (e.g. `save_strategy`);
    `resume_from_checkpoint` continues an interrupted call from one of its checkpoints; `precision` is
    `mixed_precision`'s."""
    freeze_to(model, stage.train_last)
    use_cache = model.config.use_cache
    arguments = dict(
        output_dir=output_dir,
        per_device_train_batch_size=batch_size,
        per_device_eval_batch_size=batch_size,
        num_train_epochs=stage.epochs,
        weight_decay=weight_decay,
        max_grad_norm=0.0,  # fastai v2 does not clip gradients; Trainer's default would clip at 1.0
        seed=seed,
        train_sampling_strategy=sampling,
        eval_strategy="epoch" if eval_dataset is not None else "no",
        save_strategy="no",
        report_to="none",
        logging_steps=25,
        remove_unused_columns=False,
        prediction_loss_only=compute_metrics is None,
        **mixed_precision(precision),
    )
    trainer = trainer_class(
        model=model,
        args=TrainingArguments(**(arguments | argument_overrides)),
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        data_collator=data_collator,
        compute_metrics=compute_metrics,
        stage=stage,
    )
    result = trainer.train(resume_from_checkpoint=resume_from_checkpoint)
    model.config.use_cache = use_cache  # Trainer sets it to its own (False) value, which would be saved
    freeze_to(model, None)
    return trainer, result.metrics


def transfer_language_model(pretrained: AWDLSTMForCausalLM, old_vocab: Sequence[str], new_vocab: Sequence[str],
                            **config_overrides) -> AWDLSTMForCausalLM:
    """fastai's `match_embeds`: a copy of PRETRAINED (vocabulary OLD_VOCAB) for NEW_VOCAB. A word's embedding
    row (= tied decoder row) and decoder bias are copied when OLD_VOCAB has the word (looked up by string;
    the last of repeated strings, like fastai's dict); a new word gets the mean row and the mean bias, so that
    it starts as an average word rather than as noise. Everything else is copied as is; CONFIG_OVERRIDES
    (bptt, max_len, dropouts) change the new model's config, never its sizes."""
    sizes = {"vocab_size", "embedding_size", "hidden_size", "num_hidden_layers"} & config_overrides.keys()
    if sizes:
        raise ValueError(f"transfer_language_model keeps the pretrained sizes; it cannot change {sorted(sizes)}")
    if len(old_vocab) != pretrained.config.vocab_size:
        raise ValueError(f"The pretrained model has {pretrained.config.vocab_size} embedding rows but its vocabulary "
                         f"{len(old_vocab)} words")
    config = pretrained.config.__class__.from_dict({**pretrained.config.to_dict(), **config_overrides,
                                                    "vocab_size": len(new_vocab)})
    model = AWDLSTMForCausalLM(config)
    old_index = {word: index for index, word in enumerate(old_vocab)}
    rows = torch.tensor([old_index.get(word, -1) for word in new_vocab])
    known = rows >= 0

    def matched(old: torch.Tensor) -> torch.Tensor:
        new = old.mean(0).expand(len(new_vocab), *old.shape[1:]).clone()
        new[known] = old[rows[known]]
        return new

    state_dict = dict(pretrained.state_dict())
    embedding_key = "model.encoder.weight"
    state_dict[embedding_key] = state_dict["lm_head.weight"] = matched(state_dict[embedding_key])
    if "lm_head.bias" in state_dict:
        state_dict["lm_head.bias"] = matched(state_dict["lm_head.bias"])
    model.load_state_dict(state_dict)
    logger.info("vocabulary transfer: %d of %d words found in the pretrained vocabulary (the others start at "
                "the mean embedding)", int(known.sum()), len(new_vocab))
    return model
