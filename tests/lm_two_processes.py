"""A tiny stateful-LM `fit_one_cycle` shared by tests/test_resume_and_processes.py, which also runs this
file in 2 CPU processes (gloo) as `tests/lm_two_processes.py OUT` under each launcher: each process then
writes the input windows it trained on (OUT/batches_RANK.pt) and process 0 the final weights (OUT/weights.pt).
"""

import functools
import os
import sys
from pathlib import Path

import numpy as np
import torch
from accelerate import PartialState
from transformers import TrainerCallback

from awd_lstm_hf import AWDLSTMConfig, AWDLSTMForCausalLM
from awd_lstm_hf.data import LMStreamDataset
from awd_lstm_hf.training import LMTrainer, Stage, fit_one_cycle

REPO = Path(__file__).resolve().parents[1]
BPTT = 5
LAUNCHERS = ("accelerate", "torchrun")


def launch_two_cpu_processes(launcher: str, script: Path, *script_args: str) -> tuple[list[str], dict[str, str]]:
    """The command and environment that run SCRIPT in 2 CPU processes: `accelerate launch --cpu` (which starts
    them through Open MPI's mpirun) or torchrun."""
    bin_dir = Path(sys.executable).parent
    if launcher == "accelerate":
        command = [str(bin_dir / "accelerate"), "launch", "--cpu", "--num_processes", "2",
                   "--mpirun_hostfile", str(REPO / "configs" / "localhost.hostfile")]
    else:
        command = [str(bin_dir / "torchrun"), "--nproc_per_node", "2"]
    # mpirun refuses to run as root without these (CI runs as root)
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", PATH=f"{bin_dir}:{os.environ['PATH']}",
               OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
    return command + [str(script), *script_args], env
STAGE = Stage(epochs=2, lr=1e-2, train_last=2)  # discriminative lrs, the first rnn group frozen


def documents(n_tokens: int, seed: int) -> list[list[int]]:
    """Documents of consecutive, never repeated ids (a token id is its corpus position)."""
    lengths = np.random.default_rng(seed).integers(5, 30, n_tokens)
    bounds = np.minimum(np.concatenate([[0], np.cumsum(lengths)]), n_tokens)
    return [list(range(start, end)) for start, end in zip(bounds[:-1], bounds[1:]) if end > start]


TRAIN_DOCS = documents(401, seed=0)  # 4 rows of 100 tokens: 20 windows of 5 an epoch
VALID_DOCS = [[i % 401 for i in doc] for doc in documents(81, seed=1)]


class RecordingLMTrainer(LMTrainer):
    """Records every training micro-batch (its inputs and loss); with `stop_at`, stops after that optimizer
    step (with `save_steps=stop_at`: like a run killed right after its checkpoint)."""

    def __init__(self, *args, stop_at: int | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.batches = []
        if stop_at is not None:
            self.add_callback(StopAfter(stop_at))

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        result = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        if model.training:
            loss = result[0] if return_outputs else result
            self.batches.append((inputs["input_ids"].detach().cpu().clone(), loss.item()))
        return result


class StopAfter(TrainerCallback):
    """Stops training after optimizer step `step` (with `save_steps=step`: like a run killed right after its
    checkpoint)."""

    def __init__(self, step: int):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            control.should_training_stop = True


def tiny_lm(seed: int = 0, **config) -> AWDLSTMForCausalLM:
    torch.manual_seed(seed)
    return AWDLSTMForCausalLM(AWDLSTMConfig(vocab_size=401, embedding_size=8, hidden_size=12,
                                            num_hidden_layers=2, bptt=BPTT, **config))


def fit(output_dir, rows_per_process: int, world_size: int = 1, *, model=None, stop_at=None, resume=None,
        stage=STAGE, train_docs=TRAIN_DOCS, shuffle=True, **overrides) -> RecordingLMTrainer:
    """`fit_one_cycle` of the recipe on the tiny corpus; streams of rows_per_process x world_size rows."""
    rows = rows_per_process * world_size
    trainer, _ = fit_one_cycle(
        tiny_lm() if model is None else model, stage,
        LMStreamDataset(train_docs, rows, BPTT, shuffle=shuffle, seed=3), LMStreamDataset(VALID_DOCS, rows, BPTT),
        trainer_class=functools.partial(RecordingLMTrainer, stop_at=stop_at), sampling="sequential",
        output_dir=str(output_dir), batch_size=rows_per_process, weight_decay=0.1, seed=0,
        resume_from_checkpoint=resume, **{"logging_steps": 1, "disable_tqdm": True, **overrides},
    )
    return trainer


if __name__ == "__main__":
    out = Path(sys.argv[1])
    state = PartialState(cpu=True)
    # fp32 and no dropout: 2 processes of 2 rows then equal 1 process of 4 (DDP averages the two per-process
    # mean losses' gradients, which is the gradient of the mean over all rows)
    trainer = fit(out / "run", rows_per_process=2, world_size=state.num_processes, model=tiny_lm(drop_mult=0.0),
                  precision="fp32")
    torch.save([inputs for inputs, _ in trainer.batches], out / f"batches_{state.process_index}.pt")
    if state.is_main_process:
        torch.save(trainer.model.state_dict(), out / "weights.pt")
