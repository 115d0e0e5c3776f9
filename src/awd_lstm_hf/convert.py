"""Conversion of fastai AWD-LSTM checkpoints (state dicts) into our models.

fastai's key layouts (reference notes, section 3): the language model is `0.` (AWD_LSTM) + `1.`
(LinearDecoder); the classifier is `0.module.` (AWD_LSTM inside SentenceEncoder) + `1.layers.`
(PoolingLinearClassifier); `save_encoder` files have no prefix. Tensors are read with
`torch.load(weights_only=True)` only: no pickled code is ever executed.
"""

import re
from pathlib import Path

import torch

from .configuration_awd_lstm import AWDLSTMConfig
from .modeling_awd_lstm import AWDLSTMForCausalLM, AWDLSTMForSequenceClassification

TASKS = ("lm", "classification")
_ENCODER_PREFIXES = ("0.module.", "0.", "")
_LAYER_KEY = re.compile(r"rnns\.(\d+)\.(weight_hh_l0_raw|module\.weight_ih_l0|module\.bias_ih_l0|module\.bias_hh_l0)$")
_HEAD_KEY = re.compile(r"1\.layers\.(\d+)\.(\d+)\.(weight|bias|running_mean|running_var|num_batches_tracked)$")


class CheckpointError(ValueError):
    """A fastai checkpoint that cannot be converted; the message names the offending key."""


def load_fastai_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a fastai `.pth` (a state_dict, or `{"model": state_dict}`) with `weights_only=True`."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises UnpicklingError/RuntimeError/EOFError for bad files
        raise CheckpointError(
            f"cannot read {path} as a tensor checkpoint (weights_only=True): {type(error).__name__}: {error}"
        ) from error
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path} does not hold a state_dict of tensors")
    return state


def _encoder_prefix(state_dict: dict[str, torch.Tensor]) -> str:
    for prefix in _ENCODER_PREFIXES:
        if f"{prefix}encoder.weight" in state_dict:
            return prefix
    raise CheckpointError("no embedding found: expected one of '0.module.encoder.weight', '0.encoder.weight', 'encoder.weight'")


def _same(state_dict, key, reference, what):
    if key in state_dict and not torch.equal(state_dict[key], reference):
        raise CheckpointError(f"{key} differs from the embedding it should equal ({what})")


def fastai_to_hf_state_dict(
    state_dict: dict[str, torch.Tensor], task: str
) -> tuple[dict[str, torch.Tensor], dict]:
    """Map fastai keys to ours and infer the sizes. Returns (our state_dict, config kwargs)."""
    if task not in TASKS:
        raise CheckpointError(f"task must be one of {TASKS}, got {task!r}")
    prefix = _encoder_prefix(state_dict)
    embedding = state_dict[f"{prefix}encoder.weight"]
    if embedding.dim() != 2:
        raise CheckpointError(f"{prefix}encoder.weight should be 2-D (vocab, emb), got shape {tuple(embedding.shape)}")
    _same(state_dict, f"{prefix}encoder_dp.emb.weight", embedding, "EmbeddingDropout wraps the same embedding")
    converted = {"model.encoder.weight": embedding}
    used = {f"{prefix}encoder.weight", f"{prefix}encoder_dp.emb.weight"}

    layers: dict[int, dict[str, torch.Tensor]] = {}
    for key, tensor in state_dict.items():
        if not key.startswith(prefix):
            continue
        match = _LAYER_KEY.match(key[len(prefix):])
        if match:
            layers.setdefault(int(match[1]), {})[match[2].removeprefix("module.")] = tensor
            used.add(key)
        elif re.match(r"rnns\.\d+\.module\.weight_hh_l0$", key[len(prefix):]):
            used.add(key)  # fastai v1's derived (possibly dropped-out) copy of *_raw: never read it
    if not layers or sorted(layers) != list(range(len(layers))):
        raise CheckpointError(f"LSTM layers missing or not numbered 0..n-1 under '{prefix}rnns.': found {sorted(layers)}")
    for index, params in layers.items():
        for name in ("weight_ih_l0", "weight_hh_l0_raw", "bias_ih_l0", "bias_hh_l0"):
            if name not in params:
                raise CheckpointError(f"missing key {prefix}rnns.{index}.{'' if name.endswith('raw') else 'module.'}{name}")
            converted[f"model.rnns.{index}.{name}"] = params[name]

    n_layers = len(layers)
    emb_size = embedding.shape[1]
    hidden_size = layers[0]["weight_hh_l0_raw"].shape[1] if n_layers > 1 else emb_size
    config = dict(vocab_size=embedding.shape[0], embedding_size=emb_size, hidden_size=hidden_size, num_hidden_layers=n_layers)
    for index, (n_in, n_hidden) in enumerate(AWDLSTMConfig(**config).layer_sizes()):
        expected = {
            "weight_ih_l0": (4 * n_hidden, n_in),
            "weight_hh_l0_raw": (4 * n_hidden, n_hidden),
            "bias_ih_l0": (4 * n_hidden,),
            "bias_hh_l0": (4 * n_hidden,),
        }
        for name, shape in expected.items():
            if tuple(layers[index][name].shape) != shape:
                raise CheckpointError(
                    f"rnns.{index}.{name} has shape {tuple(layers[index][name].shape)}, expected {shape} "
                    f"for emb {emb_size} / hidden {hidden_size} (bidirectional fastai models are not supported)"
                )

    if task == "lm":
        used |= _convert_decoder(state_dict, embedding, converted, config)
    else:
        used |= _convert_head(state_dict, converted, config)
    unknown = sorted(set(state_dict) - used)
    if unknown:
        raise CheckpointError(f"unexpected keys for a fastai AWD-LSTM {task} checkpoint: {unknown[:5]}")
    return converted, config


def _convert_decoder(state_dict, embedding, converted, config) -> set[str]:
    weight, bias = state_dict.get("1.decoder.weight"), state_dict.get("1.decoder.bias")
    if weight is None:
        converted["lm_head.weight"] = embedding  # encoder-only file: the decoder is the tied embedding
        config["out_bias"] = False
        return set()
    if weight.shape != embedding.shape:
        raise CheckpointError(f"1.decoder.weight has shape {tuple(weight.shape)}, the embedding {tuple(embedding.shape)}")
    config["tie_word_embeddings"] = torch.equal(weight, embedding)
    converted["lm_head.weight"] = weight
    config["out_bias"] = bias is not None
    if bias is not None:
        if bias.shape != (embedding.shape[0],):
            raise CheckpointError(f"1.decoder.bias has shape {tuple(bias.shape)}, expected ({embedding.shape[0]},)")
        converted["lm_head.bias"] = bias
    return {"1.decoder.weight", "1.decoder.bias"}


def _convert_head(state_dict, converted, config) -> set[str]:
    """The head's Linear sits after the BatchNorm at index 1 or 2 depending on whether its dropout is 0
    (fastai's index trap), so it is found by shape, not by index."""
    blocks: dict[int, dict[str, torch.Tensor]] = {}
    used = set()
    for key, tensor in state_dict.items():
        match = _HEAD_KEY.match(key)
        if match:
            block = blocks.setdefault(int(match[1]), {})
            kind = "linear" if match[3] == "weight" and tensor.dim() == 2 else "batch_norm"
            block[f"{kind}.{match[3]}"] = tensor
            used.add(key)
    if not blocks or sorted(blocks) != list(range(len(blocks))):
        raise CheckpointError(f"classifier head '1.layers.N' blocks missing or not numbered 0..n-1: found {sorted(blocks)}")
    widths = [3 * config["embedding_size"]]
    for index in range(len(blocks)):
        block = blocks[index]
        if "linear.weight" not in block:
            raise CheckpointError(f"no Linear weight found in head block 1.layers.{index}")
        n_out, n_in = block["linear.weight"].shape
        if n_in != widths[-1]:
            raise CheckpointError(f"head block 1.layers.{index} Linear takes {n_in} inputs, expected {widths[-1]}")
        widths.append(n_out)
        for name, tensor in block.items():
            converted[f"classifier.blocks.{index}.{name}"] = tensor
    config["classifier_hidden_sizes"] = widths[1:-1]
    config["num_labels"] = widths[-1]
    return used


def convert_fastai_checkpoint(
    state_dict: dict[str, torch.Tensor], task: str, **config_overrides
) -> AWDLSTMForCausalLM | AWDLSTMForSequenceClassification:
    """Build our model from a fastai state_dict. Dropouts cannot be read from weights: they are fastai's
    defaults for the task unless given in `config_overrides` (as are `bptt`, `max_len`, `id2label`)."""
    converted, config_kwargs = fastai_to_hf_state_dict(state_dict, task)
    config_kwargs.update(config_overrides)
    if task == "classification" and "id2label" in config_overrides:
        config_kwargs.pop("num_labels", None)
    elif task == "classification" and config_kwargs.get("num_labels") == 2:
        config_kwargs.pop("num_labels")  # keep the neg/pos labels of IMDB
    config = AWDLSTMConfig(**config_kwargs)
    model_class = AWDLSTMForCausalLM if task == "lm" else AWDLSTMForSequenceClassification
    model = model_class(config)
    missing, unexpected = model.load_state_dict(converted, strict=False)
    missing = [key for key in missing if not (key == "lm_head.weight" and config.tie_word_embeddings)]
    if missing or unexpected:
        raise CheckpointError(f"converted weights do not fit the model: missing {missing}, unexpected {unexpected}")
    return model.eval()
