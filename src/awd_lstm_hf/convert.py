"""Conversion of fastai AWD-LSTM checkpoints into our models.

Files (reference notes, section 3.3): a plain state_dict (`learn.save(..., with_opt=False)`,
`model.state_dict()`), `learn.save` (`{"model": state_dict, "opt": optimizer state}`) and
`learn.save_encoder` (the encoder alone). Key layouts (sections 3.1, 3.2): the language model is `0.`
(AWD_LSTM) + `1.` (LinearDecoder); the classifier is `0.module.` (AWD_LSTM inside SentenceEncoder) +
`1.layers.` (PoolingLinearClassifier, nested `1.layers.N.M.` in fastai v2, flat `1.layers.M.` in v1);
encoder files have no prefix; `nn.DataParallel` adds a leading `module.`; fastai v1 files also hold a
derived `rnns.N.module.weight_hh_l0` beside `rnns.N.weight_hh_l0_raw`.

Nothing in a file is executed: tensors are read with `torch.load(weights_only=True)`, which only
rebuilds tensors, plain containers and the globals in `OPTIMIZER_STATE_GLOBALS` below.
"""

import pickle
import re
from dataclasses import dataclass
from pathlib import Path

import numpy
import torch

from .configuration_awd_lstm import AWDLSTMConfig
from .modeling_awd_lstm import AWDLSTMForCausalLM, AWDLSTMForSequenceClassification
from .tokenization_awd_lstm import AWDLSTMTokenizer, read_itos

MODEL_CLASSES = {"lm": AWDLSTMForCausalLM, "classification": AWDLSTMForSequenceClassification}
TASKS = tuple(MODEL_CLASSES)
_ENCODER_PREFIXES = ("0.module.", "0.", "")
_LAYER_KEY = re.compile(r"rnns\.(\d+)\.(weight_hh_l0_raw|module\.weight_ih_l0|module\.bias_ih_l0|module\.bias_hh_l0)$")
_DERIVED_WEIGHT_HH = re.compile(r"rnns\.(\d+)\.module\.weight_hh_l0$")
_HEAD_KEY = re.compile(r"1\.layers\.(\d+(?:\.\d+)?)\.(weight|bias|running_mean|running_var|num_batches_tracked)$")
_BATCH_NORM_PARAMS = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


class CheckpointError(ValueError):
    """A fastai checkpoint that cannot be converted; the message names the offending key or file."""


# ----------------------------------------------------------------------------------------------
# Reading files without executing them
# ----------------------------------------------------------------------------------------------


class _FastcoreL(list):
    """`fastcore.foundation.L` (the optimizer's `hypers`) read as a plain list of its items."""

    def __setstate__(self, state):
        self.extend(state["items"])


class _NumpyDtype:
    """`numpy.dtype` as pickled inside a numpy scalar: only its name and byte order are kept."""

    def __init__(self, name, align=False, copy=False):
        self.name = name
        self.byte_order = "="

    def __setstate__(self, state):
        self.byte_order = state[1]


def _numpy_scalar(dtype: _NumpyDtype, data: bytes) -> bool | int | float | complex:
    """A pickled numpy scalar (one-cycle hyper-parameters) as the plain Python number it holds."""
    real = numpy.dtype(dtype.name)
    if real.kind not in "biufc" or len(data) != real.itemsize:
        raise pickle.UnpicklingError(f"refusing a numpy scalar of dtype {dtype.name!r}")
    return numpy.frombuffer(data, real.newbyteorder(dtype.byte_order))[0].item()


# The only globals (besides torch's own tensor rebuilders) that a checkpoint may name: the containers
# fastai 2.8.12's `learn.save` pickles in its optimizer state (verified on real files, see
# tests/fixtures/fastai_learn_save), each mapped to a plain-Python stand-in. Anything else is refused.
OPTIMIZER_STATE_GLOBALS = [
    (_FastcoreL, "fastcore.foundation.L"),
    (_NumpyDtype, "numpy.dtype"),
    (_numpy_scalar, "numpy._core.multiarray.scalar"),
    (_numpy_scalar, "numpy.core.multiarray.scalar"),  # the same, pickled by numpy < 2
]
_PICKLED_LEARNER = re.compile(r"fastai\.[\w.]*Learner$")  # `learn.export()` pickles the whole Learner


def _refused_globals(path: Path, error: Exception) -> list[str]:
    """The globals of `path` outside the allow-list, listed without unpickling (first one only for
    pre-zip torch files, from torch's message)."""
    try:
        with torch.serialization.safe_globals(OPTIMIZER_STATE_GLOBALS):
            return sorted(torch.serialization.get_unsafe_globals_in_checkpoint(path))
    except (ValueError, RuntimeError):
        return re.findall(r"GLOBAL (\S+) (?:was not an allowed global|whose module)", str(error))


def _refusal(path: Path, error: Exception) -> CheckpointError:
    names = _refused_globals(path, error)
    if any(_PICKLED_LEARNER.match(name) for name in names):
        return CheckpointError(
            f"{path} is a whole pickled fastai Learner (`learn.export()`, e.g. export.pkl): reading it means "
            "running the code it names (fastai's classes, spaCy's tokenizer, functions), which this converter "
            "never does. If you trust the file, in an environment with fastai run `learn = load_learner(path)`, "
            "then `torch.save(learn.model.state_dict(), 'model.pth')` and `pickle.dump(list(learn.dls.vocab), "
            "open('itos.pkl', 'wb'))` (classifier: `learn.dls.vocab[0]`), and convert those two files."
        )
    if names:
        return CheckpointError(
            f"{path} pickles globals that are not tensors nor fastai's optimizer-state containers: "
            f"{', '.join(names[:10])}. Refusing to unpickle them (nothing was executed); allowed are torch's "
            f"tensor rebuilders and {[name for _, name in OPTIMIZER_STATE_GLOBALS]}. Re-save the weights "
            "alone (`learn.save(name, with_opt=False)` or `torch.save(model.state_dict(), path)`)."
        )
    return CheckpointError(
        f"cannot read {path} as a tensor checkpoint (weights_only=True): {type(error).__name__}: {error}"
    )


def _strip_data_parallel(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """`nn.DataParallel(model).state_dict()` prefixes every key with `module.`."""
    if state_dict and all(key.startswith("module.") for key in state_dict):
        return {key.removeprefix("module."): tensor for key, tensor in state_dict.items()}
    return state_dict


def load_fastai_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The model's tensors from a fastai `.pth`: a state_dict, `learn.save`'s `{"model", "opt"}` (the
    optimizer state is read through the allow-list, then dropped) or a `save_encoder` file."""
    path = Path(path)
    try:
        with torch.serialization.safe_globals(OPTIMIZER_STATE_GLOBALS):
            state = torch.load(path, map_location="cpu", weights_only=True)
    except OSError:
        raise  # a missing or unreadable file says so itself
    except Exception as error:  # torch raises UnpicklingError/RuntimeError/EOFError for bad or refused files
        raise _refusal(path, error) from error
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path} does not hold a state_dict of tensors (nor learn.save's {{'model': ...}})")
    return _strip_data_parallel(state)


# ----------------------------------------------------------------------------------------------
# Mapping fastai keys to ours
# ----------------------------------------------------------------------------------------------


def _encoder_prefix(state_dict: dict[str, torch.Tensor]) -> str:
    for prefix in _ENCODER_PREFIXES:
        if f"{prefix}encoder.weight" in state_dict:
            return prefix
    raise CheckpointError("no embedding found: expected one of '0.module.encoder.weight', '0.encoder.weight', 'encoder.weight'")


def _check_task(task: str) -> None:
    if task not in TASKS:
        raise CheckpointError(f"task must be one of {TASKS}, got {task!r}")


def _check_values(state_dict: dict[str, torch.Tensor]) -> None:
    """Weights are finite floating-point numbers (a BatchNorm's `num_batches_tracked` is an integer count):
    an integer tensor would be cast silently, and a NaN one breaks every output (and `torch.equal`)."""
    for key, tensor in state_dict.items():
        if key.endswith("num_batches_tracked"):
            continue
        if not tensor.is_floating_point():
            raise CheckpointError(f"{key} holds {tensor.dtype} values; fastai's weights are floating point")
        if not torch.isfinite(tensor).all():
            raise CheckpointError(f"{key} holds NaN or infinite values: the checkpoint is broken (a diverged training?)")


def _same(state_dict, key, reference, what):
    if key in state_dict and not torch.equal(state_dict[key], reference):
        raise CheckpointError(f"{key} differs from the embedding it should equal ({what})")


def _check_shape(key: str, tensor: torch.Tensor, shape: tuple[int, ...], why: str) -> None:
    if tuple(tensor.shape) != shape:
        raise CheckpointError(f"{key} has shape {tuple(tensor.shape)}, expected {shape} ({why})")


def _layer_key(prefix: str, index: int, name: str) -> str:
    """fastai's key of an LSTM parameter: `weight_hh_l0_raw` on WeightDropout, the rest on its LSTM `module`."""
    return f"{prefix}rnns.{index}.{'' if name.endswith('_raw') else 'module.'}{name}"


def fastai_to_hf_state_dict(
    state_dict: dict[str, torch.Tensor], task: str
) -> tuple[dict[str, torch.Tensor], dict, list[str]]:
    """Map fastai keys to ours and infer the sizes from the tensors. Returns (our state_dict, config
    kwargs, notes on what was not in the file: a decoder or head built fresh)."""
    _check_task(task)
    _check_values(state_dict)
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
        elif _DERIVED_WEIGHT_HH.match(key[len(prefix):]):
            used.add(key)  # fastai v1's derived (possibly dropped-out) copy of *_raw: never read, as clean_raw_keys
    if not layers or sorted(layers) != list(range(len(layers))):
        raise CheckpointError(f"LSTM layers missing or not numbered 0..n-1 under '{prefix}rnns.': found {sorted(layers)}")
    for index, params in layers.items():
        for name in ("weight_ih_l0", "weight_hh_l0_raw", "bias_ih_l0", "bias_hh_l0"):
            if name not in params:
                raise CheckpointError(f"missing key {_layer_key(prefix, index, name)}")
            converted[f"model.rnns.{index}.{name}"] = params[name]

    n_layers = len(layers)
    emb_size = embedding.shape[1]
    hidden_size = layers[0]["weight_hh_l0_raw"].shape[1] if n_layers > 1 else emb_size
    config = dict(vocab_size=embedding.shape[0], embedding_size=emb_size, hidden_size=hidden_size, num_hidden_layers=n_layers)
    why = f"emb {emb_size} / hidden {hidden_size}; bidirectional fastai models are not supported"
    for index, (n_in, n_hidden) in enumerate(AWDLSTMConfig(**config).layer_sizes()):
        for name, shape in {"weight_ih_l0": (4 * n_hidden, n_in), "weight_hh_l0_raw": (4 * n_hidden, n_hidden),
                            "bias_ih_l0": (4 * n_hidden,), "bias_hh_l0": (4 * n_hidden,)}.items():
            _check_shape(_layer_key(prefix, index, name), layers[index][name], shape, why)

    encoder_only = prefix == ""
    if task == "lm":
        used |= _convert_decoder(state_dict, embedding, converted, config, encoder_only)
    elif not encoder_only:
        used |= _convert_head(state_dict, converted, config)
    unknown = sorted(set(state_dict) - used)
    if unknown:
        raise CheckpointError(f"unexpected keys for a fastai AWD-LSTM {task} checkpoint: {unknown[:5]}")
    notes = []
    if encoder_only and task == "lm":
        notes.append("encoder-only file (learn.save_encoder): the decoder is tied to the embedding and its bias "
                     "is zeros, as in a fresh fastai language model")
    elif encoder_only:
        notes.append("encoder-only file (learn.save_encoder): the classification head is new and untrained "
                     "(initialised as fastai does); fine-tune it before use")
    return converted, config, notes


def _convert_decoder(state_dict, embedding, converted, config, encoder_only) -> set[str]:
    if encoder_only:
        config["out_bias"] = True
        converted["lm_head.bias"] = torch.zeros(embedding.shape[0], dtype=embedding.dtype)
        return set()
    weight, bias = state_dict.get("1.decoder.weight"), state_dict.get("1.decoder.bias")
    if weight is None:
        head = [key for key in state_dict if _HEAD_KEY.match(key)]
        hint = f"; {head[0]} is a classifier head: convert it with task 'classification'" if head else ""
        raise CheckpointError(f"missing key 1.decoder.weight (a language model's decoder after its encoder){hint}")
    _check_shape("1.decoder.weight", weight, tuple(embedding.shape), "the decoder has the embedding's shape")
    config["tie_word_embeddings"] = torch.equal(weight, embedding)
    converted["lm_head.weight"] = weight
    config["out_bias"] = bias is not None
    if bias is not None:
        _check_shape("1.decoder.bias", bias, (embedding.shape[0],), "one bias per vocabulary entry")
        converted["lm_head.bias"] = bias
    return {"1.decoder.weight", "1.decoder.bias"}


def _head_modules(state_dict) -> list[tuple[str, dict[str, torch.Tensor]]]:
    """The head's modules in order, as (fastai key prefix, params): `1.layers.N.M` (v2) or `1.layers.M` (v1)."""
    modules: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in state_dict.items():
        match = _HEAD_KEY.match(key)
        if match:
            modules.setdefault(match[1], {})[match[2]] = tensor
    ordered = sorted(modules, key=lambda path: tuple(int(part) for part in path.split(".")))
    return [(f"1.layers.{path}", modules[path]) for path in ordered]


def _convert_head(state_dict, converted, config) -> set[str]:
    """Each head block is a BatchNorm1d followed by a Linear. Their indices depend on whether the block's
    dropout is 0 (fastai's index trap) and on the fastai version, so they are recognised by their
    parameters: a BatchNorm has running stats, a Linear a 2-D weight. fastai v2's Linears (`LinBnDrop`,
    `bias=not bn`) have no bias; v1's (`bn_drop_lin`, the same BatchNorm, Dropout, Linear order) all have
    one, which our head holds with `classifier_bias`. (v2's `y_range` adds a SigmoidRange, which has no
    parameters: it is not in the file and not converted.)"""
    modules = _head_modules(state_dict)
    if not modules:
        is_lm = "1.decoder.weight" in state_dict
        hint = "; 1.decoder.weight is a language model's decoder: convert it with task 'lm'" if is_lm else ""
        raise CheckpointError(
            f"no classifier head found: expected keys '1.layers.N.M.*' (fastai v2) or '1.layers.M.*' (v1){hint}"
        )
    widths, batch_norm, first_linear = [3 * config["embedding_size"]], None, None
    for name, params in modules:
        if "running_mean" in params:
            if batch_norm is not None:
                raise CheckpointError(f"{name}: a second BatchNorm1d after {batch_norm[0]}, without a Linear between")
            batch_norm = (name, params)
            continue
        if params.get("weight") is None or params["weight"].dim() != 2:
            raise CheckpointError(f"{name}: neither a BatchNorm1d (running stats) nor a Linear (2-D weight)")
        if batch_norm is None:
            raise CheckpointError(f"{name}.weight: a head Linear without the BatchNorm1d fastai puts before it; our "
                                  "head blocks always normalise first (PoolingLinearClassifier's LinBnDrop/bn_drop_lin), "
                                  "so a head built with bn=False cannot be represented")
        first_linear = first_linear or (name, "bias" in params)
        if ("bias" in params) != first_linear[1]:
            with_bias, without = (name, first_linear[0]) if "bias" in params else (first_linear[0], name)
            raise CheckpointError(
                f"{with_bias}.bias exists but {without}.bias does not: fastai gives every head Linear a bias (v1's "
                "bn_drop_lin) or none (v2's LinBnDrop); our head has one setting for all blocks (classifier_bias), "
                "so a head mixing both cannot be represented")
        index, n_in = len(widths) - 1, widths[-1]
        bn_name, bn_params = batch_norm
        for param in _BATCH_NORM_PARAMS:
            if param not in bn_params:
                raise CheckpointError(f"missing key {bn_name}.{param}")
            _check_shape(f"{bn_name}.{param}", bn_params[param], () if param == "num_batches_tracked" else (n_in,),
                         f"head block {index} reads {n_in} features")
            converted[f"classifier.blocks.{index}.batch_norm.{param}"] = bn_params[param]
        n_out = params["weight"].shape[0]
        _check_shape(f"{name}.weight", params["weight"], (n_out, n_in), f"head block {index} reads {n_in} features")
        converted[f"classifier.blocks.{index}.linear.weight"] = params["weight"]
        if "bias" in params:
            _check_shape(f"{name}.bias", params["bias"], (n_out,), f"head block {index} writes {n_out} features")
            converted[f"classifier.blocks.{index}.linear.bias"] = params["bias"]
        widths.append(n_out)
        batch_norm = None
    if batch_norm is not None:
        raise CheckpointError(f"{batch_norm[0]}: a BatchNorm1d without the Linear that should follow it")
    config["classifier_hidden_sizes"] = widths[1:-1]
    config["num_labels"] = widths[-1]
    config["classifier_bias"] = first_linear[1]
    return {key for key in state_dict if _HEAD_KEY.match(key)}


# ----------------------------------------------------------------------------------------------
# Building models
# ----------------------------------------------------------------------------------------------


def check_config_overrides(task: str, **config_overrides) -> None:
    """Refuse, before any file is read, a task or config values no converted model could use: a label
    count or head width below 1, a dropout that reaches 1 once multiplied by `drop_mult` (with the task's
    defaults for the dropouts not given), ... (AWDLSTMConfig's checks). Raises ValueError."""
    _check_task(task)
    config = AWDLSTMConfig(**config_overrides).with_task_dropouts(MODEL_CLASSES[task].dropout_task)
    config.effective_dropouts()  # what training's first forward would refuse


def _label_names(config_kwargs: dict, config_overrides: dict) -> None:
    """`id2label` given against the head: its length is the number of labels (the head's outputs, or a new
    head's `num_labels` when also given)."""
    labels = config_overrides["id2label"]
    for source, count in (("the checkpoint's head has", config_kwargs.get("num_labels")),
                          ("num_labels is", config_overrides.get("num_labels"))):
        if count is not None and count != len(labels):
            raise CheckpointError(f"id2label names {len(labels)} labels ({', '.join(map(str, labels.values()))}), "
                                  f"but {source} {count}")


def _build_model(state_dict, task, config_overrides) -> tuple[AWDLSTMForCausalLM | AWDLSTMForSequenceClassification,
                                                               list[str]]:
    check_config_overrides(task, **config_overrides)
    converted, config_kwargs, notes = fastai_to_hf_state_dict(state_dict, task)
    if "id2label" in config_overrides:
        _label_names(config_kwargs, config_overrides)
    for key, value in config_overrides.items():
        if key in config_kwargs and config_kwargs[key] != value:
            raise CheckpointError(f"{key}={value!r} was given, but the checkpoint's tensors say {config_kwargs[key]!r}")
    config_kwargs.update(config_overrides)
    if task == "classification" and "id2label" in config_overrides:
        config_kwargs.pop("num_labels", None)
    elif task == "classification" and config_kwargs.get("num_labels", 2) == 2:
        config_kwargs.pop("num_labels", None)  # the config's default labels: IMDB's neg/pos
    config = AWDLSTMConfig(**config_kwargs)
    if task == "classification" and "id2label" not in config_overrides:
        assumed = "IMDB's neg, pos (fastai's sorted order)" if config.num_labels == 2 else ", ".join(
            config.id2label[i] for i in sorted(config.id2label))
        notes.append(f"label names (fastai keeps them in `dls.vocab[1]`, not in the weights): {assumed}; give the "
                     "real ones in order as id2label (the converter's --labels)")
    model = MODEL_CLASSES[task](config)
    missing, unexpected = model.load_state_dict(converted, strict=False)
    fresh_head = task == "classification" and not any(key.startswith("classifier.") for key in converted)
    missing = [key for key in missing if not (key == "lm_head.weight" and config.tie_word_embeddings)
               and not (fresh_head and key.startswith("classifier."))]
    if missing or unexpected:
        raise CheckpointError(f"converted weights do not fit the model: missing {missing}, unexpected {unexpected}")
    return model.eval(), notes


def convert_fastai_checkpoint(
    state_dict: dict[str, torch.Tensor], task: str, **config_overrides
) -> AWDLSTMForCausalLM | AWDLSTMForSequenceClassification:
    """Build our model from a fastai state_dict. Dropouts cannot be read from weights: they are fastai's
    defaults for the task unless given in `config_overrides` (as are `bptt`, `max_len`, `id2label`, and
    for an encoder-only file the new head's `num_labels` and `classifier_hidden_sizes`)."""
    return _build_model(state_dict, task, config_overrides)[0]


@dataclass
class FastaiConversion:
    model: AWDLSTMForCausalLM | AWDLSTMForSequenceClassification
    tokenizer: AWDLSTMTokenizer
    notes: list[str]  # what the files did not hold and was built fresh (say so in the model card)


def convert_fastai_files(weights: str | Path, vocab: str | Path, task: str, **config_overrides) -> FastaiConversion:
    """A fastai checkpoint file (any form `load_fastai_state_dict` reads) and its vocabulary (`read_itos`:
    itos pickle, JSON or text) as our model and tokenizer; the vocabulary must fit the embedding."""
    itos = read_itos(vocab)
    model, notes = _build_model(load_fastai_state_dict(weights), task, config_overrides)
    if model.config.vocab_size != len(itos):
        raise CheckpointError(
            f"the vocabulary {vocab} has {len(itos)} entries but the checkpoint's embedding "
            f"(encoder.weight) has {model.config.vocab_size} rows: they do not belong together"
        )
    return FastaiConversion(model, AWDLSTMTokenizer.from_itos(itos), notes)
