"""Faulty files and interrupted runs: a truncated or corrupted weights file, a config and a tokenizer of
different vocabularies, a tokenizer without its vocabulary, a config of another model type each give an
error naming the file and the problem (never a deep torch error or a silently different model), and a
training run killed with SIGKILL resumes to exactly the result of an uninterrupted run."""

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, pipeline

import awd_lstm_hf  # noqa: F401  (registers the Auto classes)
from awd_lstm_hf import AWDLSTMConfig, AWDLSTMForCausalLM, AWDLSTMForSequenceClassification
from awd_lstm_hf.modeling_awd_lstm import WEIGHTS_DIGEST_KEY
from awd_lstm_hf.tokenization_awd_lstm import SPECIAL_TOKENS, AWDLSTMTokenizer

REPO = Path(__file__).resolve().parents[1]
ITOS = [*SPECIAL_TOKENS, *(f"word{i}" for i in range(31))]  # 40 ids, like a fastai vocabulary (multiple of 8)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A complete LM folder (weights, config, tokenizer) and the model it was saved from."""
    folder = tmp_path_factory.mktemp("faults") / "good"
    torch.manual_seed(0)
    model = AWDLSTMForCausalLM(AWDLSTMConfig(vocab_size=len(ITOS), embedding_size=8, hidden_size=12,
                                             num_hidden_layers=2)).eval()
    model.save_pretrained(folder)
    AWDLSTMTokenizer.from_itos(ITOS).save_pretrained(folder)
    return folder, model


def copy_of(saved, tmp_path) -> Path:
    folder = tmp_path / "copy"
    shutil.copytree(saved[0], folder)
    return folder


def header_length(data: bytes) -> int:
    return int.from_bytes(data[:8], "little")


def test_saved_weights_carry_the_sha256_of_their_tensor_bytes(saved):
    """The digest in the header is the SHA-256 of everything after it, and the file still reads as the model."""
    path = saved[0] / "model.safetensors"
    data = path.read_bytes()
    header = json.loads(data[8 : 8 + header_length(data)])
    assert header["__metadata__"][WEIGHTS_DIGEST_KEY] == hashlib.sha256(data[8 + header_length(data):]).hexdigest()
    loaded = load_file(path)
    for name, value in saved[1].state_dict().items():
        if name != "lm_head.weight":  # tied to the embedding, stored once
            assert torch.equal(loaded[name], value), name


def _truncate_in_header(data: bytes) -> bytes:
    return data[:20]


def _truncate_in_tensors(data: bytes) -> bytes:
    return data[: len(data) - 100]


def _flip_header_bytes(data: bytes) -> bytes:
    corrupted = bytearray(data)
    corrupted[12:16] = bytes(b ^ 0xFF for b in corrupted[12:16])
    return bytes(corrupted)


def _flip_tensor_bytes(data: bytes) -> bytes:
    corrupted = bytearray(data)
    corrupted[-60:-56] = bytes(b ^ 0xFF for b in corrupted[-60:-56])
    return bytes(corrupted)


@pytest.mark.parametrize("damage, problem", [
    (_truncate_in_header, "truncated or corrupted"),
    (_truncate_in_tensors, "truncated or corrupted"),
    (_flip_header_bytes, "truncated or corrupted"),
    (_flip_tensor_bytes, "do not match the SHA-256"),  # parses fine: only the digest tells
])
@pytest.mark.parametrize("load", [AWDLSTMForCausalLM.from_pretrained, AutoModelForCausalLM.from_pretrained,
                                  AWDLSTMForSequenceClassification.from_pretrained])
def test_damaged_weights_file_is_an_error_naming_it(saved, tmp_path, damage, problem, load):
    folder = copy_of(saved, tmp_path)
    path = folder / "model.safetensors"
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(OSError, match=problem) as error:
        load(folder)
    assert str(path) in str(error.value)


def test_damaged_weights_file_is_named_through_the_pipeline(saved, tmp_path):
    folder = copy_of(saved, tmp_path)
    path = folder / "model.safetensors"
    path.write_bytes(_flip_tensor_bytes(path.read_bytes()))
    with pytest.raises(ValueError, match=f"{path} is corrupted"):
        pipeline("text-generation", model=str(folder))


def test_weights_file_without_digest_still_loads_exactly(saved, tmp_path):
    """Folders written before the digest existed (or by other tools) load as before: same weights."""
    folder = copy_of(saved, tmp_path)
    path = folder / "model.safetensors"
    save_file(load_file(path), path, metadata={"format": "pt"})
    loaded = AWDLSTMForCausalLM.from_pretrained(folder)
    for name, value in saved[1].state_dict().items():
        assert torch.equal(loaded.state_dict()[name], value), name


@pytest.mark.parametrize("n_tokenizer_ids", [48, 32])  # tokenizer larger and smaller than the model
def test_config_and_tokenizer_of_different_vocabularies_are_refused(saved, tmp_path, n_tokenizer_ids):
    """A 40-row model with a 48- or 32-id tokenizer would run on every text whose ids fit: refused at load,
    naming both sizes and the config file."""
    folder = copy_of(saved, tmp_path)
    itos = (ITOS + [f"extra{i}" for i in range(8)])[:n_tokenizer_ids]
    AWDLSTMTokenizer.from_itos(itos).save_pretrained(folder)
    message = f"{folder / 'config.json'} has vocab_size 40 but the tokenizer in {folder} \\(vocab.json\\) has {n_tokenizer_ids} ids"
    with pytest.raises(ValueError, match=message):
        AWDLSTMForCausalLM.from_pretrained(folder)
    with pytest.raises(ValueError, match=message):
        pipeline("text-generation", model=str(folder))


def as_hub_cache(folder: Path, cache: Path, repo_id: str = "someone/awd-lstm") -> str:
    """Lay `folder` out as huggingface_hub's cache holds a downloaded repository (blobs, a snapshot of
    links to them, refs/main), so that `from_pretrained(repo_id, cache_dir=cache)` reads it offline."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    revision = "0" * 40
    snapshot = repo / "snapshots" / revision
    snapshot.mkdir(parents=True)
    (repo / "blobs").mkdir()
    for path in folder.iterdir():
        blob = repo / "blobs" / hashlib.sha256(path.read_bytes()).hexdigest()
        shutil.copyfile(path, blob)
        (snapshot / path.name).symlink_to(os.path.relpath(blob, snapshot))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(revision)
    return repo_id


def _retokenize_with_8_more_ids(folder: Path) -> None:
    AWDLSTMTokenizer.from_itos(ITOS + [f"extra{i}" for i in range(8)]).save_pretrained(folder)


@pytest.mark.parametrize("damage, problem", [
    (lambda folder: (folder / "model.safetensors").write_bytes(_flip_tensor_bytes((folder / "model.safetensors").read_bytes())),
     "model.safetensors is corrupted"),
    (lambda folder: (folder / "model.safetensors").write_bytes(_truncate_in_tensors((folder / "model.safetensors").read_bytes())),
     "model.safetensors is not a readable safetensors file"),
    (_retokenize_with_8_more_ids, "has vocab_size 40 but the tokenizer in .* has 48 ids"),
])
@pytest.mark.parametrize("load", [AWDLSTMForCausalLM.from_pretrained, AutoModelForCausalLM.from_pretrained])
def test_faulty_files_are_refused_when_loaded_by_hub_id(saved, tmp_path, damage, problem, load):
    """The checks hold for a repository id as for a local folder: its snapshot in the Hub cache is what
    transformers reads, so a corrupted download is refused, naming the cached file."""
    folder = copy_of(saved, tmp_path)
    damage(folder)
    repo_id = as_hub_cache(folder, tmp_path / "hub")
    with pytest.raises((OSError, ValueError), match=problem) as error:
        load(repo_id, cache_dir=tmp_path / "hub")
    assert str(tmp_path / "hub" / "models--someone--awd-lstm" / "snapshots") in str(error.value)


def test_sound_repository_loads_by_hub_id_with_the_saved_weights(saved, tmp_path):
    repo_id = as_hub_cache(copy_of(saved, tmp_path), tmp_path / "hub")
    loaded = AutoModelForCausalLM.from_pretrained(repo_id, cache_dir=tmp_path / "hub")
    for name, value in saved[1].state_dict().items():
        assert torch.equal(loaded.state_dict()[name], value), name


@pytest.mark.parametrize("name", ["vocab.json", "tokenizer_config.json", "config.json"])
@pytest.mark.parametrize("damage", [lambda text: text[: len(text) // 2], lambda text: "{bad" + text])
def test_unreadable_json_file_is_an_error_naming_it(saved, tmp_path, name, damage):
    """A truncated or garbled JSON file of the folder is named when the model loads (json's own error names
    no file)."""
    folder = copy_of(saved, tmp_path)
    path = folder / name
    path.write_text(damage(path.read_text()))
    with pytest.raises(ValueError, match=f"{path} is not a readable JSON file"):
        AWDLSTMForCausalLM.from_pretrained(folder)


def test_tokens_added_and_embeddings_resized_still_load(saved, tmp_path):
    """Added tokens count as tokenizer ids: a tokenizer with one added token and a model resized to match
    load together."""
    folder = copy_of(saved, tmp_path)
    tokenizer = AWDLSTMTokenizer.from_pretrained(folder)
    tokenizer.add_tokens(["brandnewword"])
    model = AWDLSTMForCausalLM.from_pretrained(folder)
    model.resize_token_embeddings(len(tokenizer))
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    assert AWDLSTMForCausalLM.from_pretrained(folder).config.vocab_size == len(ITOS) + 1


def test_tokenizer_folder_without_vocab_file_names_it(saved, tmp_path):
    folder = copy_of(saved, tmp_path)
    (folder / "vocab.json").unlink()
    for load in (AutoTokenizer.from_pretrained, AWDLSTMTokenizer.from_pretrained):
        with pytest.raises(ValueError, match=f"No vocabulary for AWDLSTMTokenizer in {folder}.*'vocab.json'"):
            load(folder)


def _set_model_type(folder: Path, model_type: str, auto_map: bool = True) -> None:
    config = json.loads((folder / "config.json").read_text())
    config["model_type"] = model_type
    if not auto_map:
        config.pop("auto_map")
    (folder / "config.json").write_text(json.dumps(config))


@pytest.mark.parametrize("load", [
    AWDLSTMConfig.from_pretrained, AWDLSTMForCausalLM.from_pretrained, AWDLSTMForSequenceClassification.from_pretrained,
    lambda folder: AutoConfig.from_pretrained(folder, trust_remote_code=True),  # the folder's own code
    lambda folder: AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True),
])
@pytest.mark.parametrize("model_type", ["awd_lstmx", "bert"])
def test_config_of_another_model_type_is_refused(saved, tmp_path, load, model_type):
    """transformers only warns when a class reads a config of another model type, then builds an AWD-LSTM
    from whatever keys fit; ours refuses, naming the type and the folder."""
    folder = copy_of(saved, tmp_path)
    _set_model_type(folder, model_type)
    with pytest.raises(ValueError, match=f"The config in {folder} has model_type '{model_type}', not 'awd_lstm'"):
        load(folder)


def test_unknown_model_type_without_remote_code_is_transformers_error_naming_it(saved, tmp_path):
    folder = copy_of(saved, tmp_path)
    _set_model_type(folder, "awd_lstmx", auto_map=False)
    with pytest.raises(ValueError, match="awd_lstmx"):
        AutoConfig.from_pretrained(folder)


# ---------------------------------------------------------------- kill -9 in the middle of training


def _train_command(imdb_path, output_dir, *extra) -> list[str]:
    """The smoke preset shrunk to ~60 LM steps (8 rows of 30 tokens) and a 2-step classifier, checkpointing
    every 10 steps."""
    return [sys.executable, str(REPO / "scripts" / "train.py"), "--preset", "smoke", "--dataset", str(imdb_path),
            "--output_dir", str(output_dir), "--num_proc", "1", "--lm_docs", "60", "--lm_batch_size", "8",
            "--bptt", "30", "--clas_train_docs", "64", "--clas_test_docs", "32",
            "--clas_stages", '[{"epochs": 1, "lr": 0.02, "train_last": null}]', "--save_steps", "10", *extra]


def _run(command) -> str:
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    run = subprocess.run(command, capture_output=True, text=True, timeout=900, env=env)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    return run.stdout + run.stderr


def _kill_after_first_checkpoint(command, stage_dir: Path) -> None:
    """Start the run and SIGKILL it as soon as a complete checkpoint (trainer_state.json written) exists."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    try:
        deadline = time.monotonic() + 600
        while not any(stage_dir.glob("checkpoint-*/trainer_state.json")):
            assert process.poll() is None, "the run ended before writing a checkpoint"
            assert time.monotonic() < deadline, "no checkpoint within 10 minutes"
            time.sleep(0.02)
        process.send_signal(signal.SIGKILL)
    finally:
        process.kill()
        process.wait()
    assert process.returncode == -signal.SIGKILL


@pytest.mark.slow
@pytest.mark.integration
def test_run_killed_mid_epoch_resumes_to_the_uninterrupted_result(imdb_path, tmp_path):
    """kill -9 right after the LM's first checkpoint (mid-epoch, with a carried hidden state), then the same
    command with --resume_from_checkpoint: the resumed run continues from that checkpoint and ends with the
    weights and metrics of a run never interrupted."""
    _run(_train_command(imdb_path, tmp_path / "full"))
    interrupted = tmp_path / "interrupted"
    stage_dir = interrupted / "checkpoints" / "lm_stage0"
    _kill_after_first_checkpoint(_train_command(imdb_path, interrupted), stage_dir)
    assert not (stage_dir / "finished").exists() and not (interrupted / "metrics.json").exists()

    log = _run(_train_command(imdb_path, interrupted, "--resume_from_checkpoint"))
    assert "lm_stage0: resuming from" in log and "checkpoint-" in log

    full, resumed = (json.loads((d / "metrics.json").read_text()) for d in (tmp_path / "full", interrupted))
    total_steps = full["lm"]["stage_steps"][0]
    assert total_steps > 20 and resumed["lm"]["stage_steps"] == full["lm"]["stage_steps"]
    for key in ("loss", "accuracy", "perplexity"):
        assert resumed["lm"][key] == pytest.approx(full["lm"][key], abs=1e-6), key
    assert [e["eval_loss"] for e in resumed["lm"]["history"]] == \
        pytest.approx([e["eval_loss"] for e in full["lm"]["history"]], abs=1e-6)
    assert resumed["classifier"]["test_accuracy"] == full["classifier"]["test_accuracy"]
    for task in ("lm", "classifier"):
        expected = load_file(tmp_path / "full" / task / "model.safetensors")
        weights = load_file(interrupted / task / "model.safetensors")
        assert weights.keys() == expected.keys()
        for name, value in expected.items():
            torch.testing.assert_close(weights[name], value, rtol=0, atol=1e-6, msg=f"{task} {name}")
