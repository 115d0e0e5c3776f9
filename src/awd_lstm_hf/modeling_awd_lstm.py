"""AWD-LSTM (Merity et al. 2017) and ULMFiT's classifier (Howard & Ruder 2018) as transformers models,
numerically equal to fastai 2.8.12's `AWD_LSTM`, `LinearDecoder`, `SentenceEncoder` and
`PoolingLinearClassifier`.

Where we deliberately differ from fastai (see the reference notes, sections 1.4, 1.6 and 2.4):
- the recurrent state is an explicit input/output (`cache`), never module state, so every call starts
  from zeros unless a state is passed, and one model can serve several threads;
- weight dropout is computed inside `forward` from the raw matrices, no attribute is re-assigned;
- padding is whatever `attention_mask` says, on any side: pad positions never enter the recurrence,
  so a document gets the same result alone or in a padded batch.
"""

import copy
import hashlib
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors import SafetensorError, safe_open
from torch import nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence
from transformers import GenerationMixin, PreTrainedModel, StoppingCriteria, StoppingCriteriaList
from transformers import initialization as init
from transformers.generation.utils import GenerateDecoderOnlyOutput
from transformers.utils import CONFIG_NAME, SAFE_WEIGHTS_INDEX_NAME, SAFE_WEIGHTS_NAME, ModelOutput, cached_file

from .configuration_awd_lstm import DROPOUT_KEYS, AWDLSTMConfig

LSTMState = tuple[torch.Tensor, torch.Tensor]
# What a saved folder's config.json maps each Auto class to, for `trust_remote_code`.
REMOTE_CODE_AUTO_MAP = {
    "AutoConfig": "configuration_awd_lstm.AWDLSTMConfig",
    "AutoModel": "modeling_awd_lstm.AWDLSTMModel",
    "AutoModelForCausalLM": "modeling_awd_lstm.AWDLSTMForCausalLM",
    "AutoModelForSequenceClassification": "modeling_awd_lstm.AWDLSTMForSequenceClassification",
}
# safetensors metadata key holding the SHA-256 of a weights file's tensor bytes (see `check_model_folder`).
WEIGHTS_DIGEST_KEY = "awd_lstm_sha256"


def _safetensors_header(path: Path) -> tuple[int, dict]:
    with open(path, "rb") as f:
        length = int.from_bytes(f.read(8), "little")
        return length, json.loads(f.read(length))


def _tensor_bytes_digest(path: Path, header_length: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        f.seek(8 + header_length)
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def add_weights_digest(path: str | os.PathLike) -> None:
    """Record the SHA-256 of a safetensors file's tensor bytes in its header metadata. safetensors has no
    checksum, so without it a file with flipped bytes in its tensors loads silently as another model."""
    path = Path(path)
    length, header = _safetensors_header(path)
    header.setdefault("__metadata__", {})[WEIGHTS_DIGEST_KEY] = _tensor_bytes_digest(path, length)
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)  # keep the tensor bytes 8-byte aligned, as safetensors writes them
    written = path.with_name(path.name + ".writing")
    with open(path, "rb") as source, open(written, "wb") as target:
        source.seek(8 + length)
        target.write(len(encoded).to_bytes(8, "little") + encoded)
        for block in iter(lambda: source.read(1 << 20), b""):
            target.write(block)
    os.replace(written, path)


def check_weights_file(path: str | os.PathLike) -> None:
    """A clear error naming `path` for a truncated or corrupted safetensors file (safetensors' own errors do
    not name it, and flipped tensor bytes pass unnoticed without the digest `save_pretrained` records)."""
    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            recorded = (f.metadata() or {}).get(WEIGHTS_DIGEST_KEY)
    except (SafetensorError, OSError, ValueError) as error:
        raise OSError(f"{path} is not a readable safetensors file ({error}): it is truncated or corrupted; "
                      "save or download it again") from None
    if recorded is not None and _tensor_bytes_digest(path, _safetensors_header(path)[0]) != recorded:
        raise OSError(f"{path} is corrupted: its tensor bytes do not match the SHA-256 recorded when it was saved; "
                      "save or download it again")


def _read_json(path: Path):
    """A JSON file of a model folder; a file that is not JSON is a ValueError naming it."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except ValueError as error:  # JSON and Unicode errors
        raise ValueError(f"{path} is not a readable JSON file ({type(error).__name__}: {error}): it is truncated "
                         "or corrupted; save or download it again") from None


def _tokenizer_ids(folder: Path) -> int | None:
    """How many ids the tokenizer saved in `folder` can produce (its vocabulary plus added tokens), if any."""
    vocab_file = folder / "vocab.json"
    if not vocab_file.is_file():
        return None
    n_ids = len(_read_json(vocab_file))
    tokenizer_config = folder / "tokenizer_config.json"
    if tokenizer_config.is_file():
        added = _read_json(tokenizer_config).get("added_tokens_decoder") or {}
        n_ids = max([n_ids, *(int(index) + 1 for index in added)])
    return n_ids


def check_model_folder(folder: str | os.PathLike) -> None:
    """What a local model folder must satisfy before transformers reads it: whole, uncorrupted weights files,
    and a tokenizer (when the folder has one) with as many ids as the model has embedding rows. A folder
    mixing another vocabulary's tokenizer would otherwise run silently on every text whose ids happen to fit."""
    folder = Path(folder)
    for path in sorted(folder.glob("*.safetensors")):
        check_weights_file(path)
    config_file = folder / "config.json"
    n_ids = _tokenizer_ids(folder)
    if n_ids is not None and config_file.is_file():
        vocab_size = _read_json(config_file).get("vocab_size")
        if vocab_size is not None and vocab_size != n_ids:
            raise ValueError(f"{config_file} has vocab_size {vocab_size} but the tokenizer in {folder} "
                             f"(vocab.json) has {n_ids} ids: the folder mixes a model and a tokenizer of different "
                             "vocabularies; save the model's own tokenizer with it")


# `from_pretrained` keyword arguments that say where and how to fetch a Hub repository's files.
HUB_DOWNLOAD_KWARGS = ("cache_dir", "force_download", "proxies", "token", "revision", "local_files_only", "subfolder")


def fetch_hub_model_files(repo_id: str, from_pretrained_kwargs: dict) -> Path | None:
    """Fetch into the Hub cache the files `from_pretrained(repo_id)` reads (config, weights: one file or the
    shards of an index) and the tokenizer's vocabulary, and return their snapshot folder, so that
    `check_model_folder` sees exactly what transformers will load. None when they cannot be fetched:
    transformers then raises its own error about the repository."""
    hub = {key: from_pretrained_kwargs[key] for key in HUB_DOWNLOAD_KWARGS if key in from_pretrained_kwargs}

    def fetch(filename: str) -> str | None:
        return cached_file(repo_id, filename, _raise_exceptions_for_missing_entries=False, **hub)

    try:
        config = fetch(CONFIG_NAME)
        if config is None:
            return None
        index = fetch(SAFE_WEIGHTS_INDEX_NAME)
        shards = sorted(set(_read_json(Path(index))["weight_map"].values())) if index else [SAFE_WEIGHTS_NAME]
        for name in [*shards, "vocab.json", "tokenizer_config.json"]:
            fetch(name)
    except OSError:
        return None
    return Path(config).parent


class AWDLSTMCache:
    """The recurrent state: one `(h, c)` pair per layer, each `(1, batch, hidden)` as `nn.LSTM` lays it out.

    `generate()` carries it from step to step under the name `cache` (transformers v5), so each step after
    the prompt feeds a single token. `seen_tokens` counts the input columns consumed (padding included),
    which is what `generate()` uses to slice a continued prompt.
    """

    is_compileable = False
    is_croppable = False

    def __init__(self, states: list[LSTMState], seen_tokens: int = 0):
        self.states = list(states)
        self.seen_tokens = seen_tokens

    @classmethod
    def zeros(cls, config: AWDLSTMConfig, batch_size: int, device, dtype) -> "AWDLSTMCache":
        states = [
            (torch.zeros(1, batch_size, hidden, device=device, dtype=dtype),) * 2 for _, hidden in config.layer_sizes()
        ]
        return cls(states)

    @property
    def batch_size(self) -> int:
        return self.states[0][0].shape[1]

    def __len__(self) -> int:
        return len(self.states)

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.seen_tokens

    def _map(self, fn) -> None:
        self.states = [(fn(h), fn(c)) for h, c in self.states]

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        """Beam search: keep the state of the beams that survived."""
        self._map(lambda t: t.index_select(1, beam_idx.to(t.device)))

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        self._map(lambda t: t[:, indices])

    def batch_repeat_interleave(self, repeats: int) -> None:
        self._map(lambda t: t.repeat_interleave(repeats, dim=1))

    def detach_(self) -> "AWDLSTMCache":
        """Truncated BPTT: the next batch continues from this state without back-propagating into it."""
        self._map(torch.Tensor.detach)
        return self


@dataclass
class AWDLSTMModelOutput(ModelOutput):
    """`last_hidden_state`: the last layer's raw output (zeros at pad positions);
    `hidden_states`: every layer's raw output when asked for."""

    last_hidden_state: torch.FloatTensor | None = None
    cache: AWDLSTMCache | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None


@dataclass
class AWDLSTMCausalLMOutput(ModelOutput):
    """`last_hidden_state` is the raw last-layer output (TAR acts on it) and `dropped_hidden_state` the same
    after output dropout (what the decoder reads; AR acts on it)."""

    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    cache: AWDLSTMCache | None = None
    last_hidden_state: torch.FloatTensor | None = None
    dropped_hidden_state: torch.FloatTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None


@dataclass
class AWDLSTMSequenceClassifierOutput(ModelOutput):
    """`last_hidden_state` holds the encoder outputs of the pooled window of each document (left-aligned,
    zeros past `pooled_mask`), the tensor fastai's AR/TAR act on in the classifier."""

    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    last_hidden_state: torch.FloatTensor | None = None
    pooled_mask: torch.BoolTensor | None = None


def select_state_rows(states: list[LSTMState], rows: torch.Tensor) -> list[LSTMState]:
    """The states of some batch rows (the layout is `(1, batch, hidden)`)."""
    return [(h.index_select(1, rows), c.index_select(1, rows)) for h, c in states]


def write_state_rows(states: list[LSTMState], rows: torch.Tensor, new_states: list[LSTMState]) -> list[LSTMState]:
    """`states` with the given rows replaced by `new_states` (out of place, so autograd stays correct)."""
    return [
        tuple(old.index_copy(1, rows, new.to(old.dtype)) for old, new in zip(state, new_state))
        for state, new_state in zip(states, new_states)
    ]


def locked_dropout(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """Variational dropout (fastai `RNNDropout`): one mask per sequence, shared by all time steps."""
    if not training or p == 0:
        return x
    mask = x.new_empty(x.shape[0], 1, x.shape[2]).bernoulli_(1 - p)
    return x * mask / (1 - p)


def real_tokens_first(attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """For each row, the positions of its real tokens in order, then of its pads (a stable sort), and the
    number of real tokens. Gathering with it left-aligns every row, whichever side was padded."""
    is_pad = attention_mask.eq(0)
    order = torch.argsort(is_pad.to(torch.int8), dim=1, stable=True)
    return order, (~is_pad).sum(1)


def check_inputs(
    config: AWDLSTMConfig,
    input_ids: torch.Tensor | None,
    attention_mask: torch.Tensor | None = None,
    inputs_embeds: torch.Tensor | None = None,
) -> torch.Tensor:
    """Refuse inputs that torch would accept and get silently wrong (a mask of another batch or shorter
    than the input, embeddings of another width) or fail on deep inside (ids outside the vocabulary).
    Returns the attention mask cut to the input's last positions (`generate` passes a longer one)."""
    if (input_ids is None) == (inputs_embeds is None):
        raise ValueError("Pass exactly one of input_ids and inputs_embeds")
    if input_ids is not None:
        if input_ids.dim() != 2 or input_ids.is_floating_point() or input_ids.is_complex():
            raise ValueError(f"input_ids must be integers of shape (batch, length), got {input_ids.dtype} {tuple(input_ids.shape)}")
        if input_ids.numel() and not (0 <= int(input_ids.min()) and int(input_ids.max()) < config.vocab_size):
            bad = input_ids[(input_ids < 0) | (input_ids >= config.vocab_size)][0].item()
            raise ValueError(f"input_ids holds {bad}, outside the vocabulary [0, {config.vocab_size}): "
                             "was it encoded with another tokenizer?")
        reference = input_ids
    else:
        if inputs_embeds.dim() != 3 or inputs_embeds.shape[-1] != config.embedding_size:
            raise ValueError(f"inputs_embeds must have shape (batch, length, {config.embedding_size}), "
                             f"got {tuple(inputs_embeds.shape)}")
        reference = inputs_embeds
    batch, time = reference.shape[:2]
    if attention_mask is None:
        return None
    if attention_mask.dim() != 2 or attention_mask.shape[0] != batch or attention_mask.shape[1] < time:
        raise ValueError(f"attention_mask of shape {tuple(attention_mask.shape)} does not cover an input of "
                         f"shape ({batch}, {time})")
    return attention_mask[:, attention_mask.shape[1] - time:]


class AWDLSTMLayer(nn.Module):
    """One single-layer LSTM with fastai's WeightDropout (DropConnect) on its hidden-to-hidden matrix.

    Only `weight_hh_l0_raw` is a parameter; the dropped matrix is a local of `forward`, drawn anew at
    every call and shared by all time steps and rows, as in fastai.
    """

    def __init__(self, input_size: int, hidden_size: int):
        super().__init__()
        self.input_size, self.hidden_size = input_size, hidden_size
        gates = 4 * hidden_size
        self.weight_ih_l0 = nn.Parameter(torch.empty(gates, input_size))
        self.weight_hh_l0_raw = nn.Parameter(torch.empty(gates, hidden_size))
        self.bias_ih_l0 = nn.Parameter(torch.empty(gates))
        self.bias_hh_l0 = nn.Parameter(torch.empty(gates))

    def extra_repr(self) -> str:
        return f"{self.input_size}, {self.hidden_size}"

    def forward(
        self, x: torch.Tensor, state: LSTMState, lengths: torch.Tensor | None = None, weight_p: float = 0.0
    ) -> tuple[torch.Tensor, LSTMState]:
        """`x` is (batch, time, features) with every row's real tokens first; `lengths` (all >= 1) gives
        how many, or is None when every row is full. Pad positions come out as zeros and never touch the
        state."""
        if x.device.type == "cpu" and torch.is_autocast_enabled("cpu"):
            # oneDNN's CPU LSTM under autocast only accepts input already in the autocast dtype.
            x = x.to(torch.get_autocast_dtype("cpu"))
        weight_hh = F.dropout(self.weight_hh_l0_raw, weight_p, self.training)
        params = [self.weight_ih_l0, weight_hh, self.bias_ih_l0, self.bias_hh_l0]
        if lengths is None:
            output, h, c = torch.lstm(x, state, params, True, 1, 0.0, self.training, False, True)
            return output, (h, c)
        packed = pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
        h0, c0 = (s.index_select(1, packed.sorted_indices) for s in state)
        data, h, c = torch.lstm(packed.data, packed.batch_sizes, (h0, c0), params, True, 1, 0.0, self.training, False)
        output, _ = pad_packed_sequence(
            PackedSequence(data, packed.batch_sizes, packed.sorted_indices, packed.unsorted_indices),
            batch_first=True,
            total_length=x.shape[1],
        )
        return output, (h.index_select(1, packed.unsorted_indices), c.index_select(1, packed.unsorted_indices))


class AWDLSTMPreTrainedModel(PreTrainedModel):
    config_class = AWDLSTMConfig
    base_model_prefix = "model"
    main_input_name = "input_ids"
    _no_split_modules = ["AWDLSTMLayer"]
    supports_gradient_checkpointing = False
    # One folder's head is another head's unexpected key (an LM folder read as a classifier or encoder).
    _keys_to_ignore_on_load_unexpected = [r"lm_head\.", r"classifier\."]
    # The task whose fastai default dropouts this head uses (see AWDLSTMConfig). The bare encoder keeps
    # the config's own task, and takes the language model's defaults (fastai's AWD_LSTM) when it has none.
    dropout_task: str | None = None

    def __init__(self, config: AWDLSTMConfig, *inputs, **kwargs):
        task = self.dropout_task or config.dropout_task or "causal_lm"
        super().__init__(config.with_task_dropouts(task), *inputs, **kwargs)

    def save_pretrained(self, save_directory, *args, **kwargs):
        """transformers' `save_pretrained`, with every head in `auto_map` (transformers lists only the saved
        class), so that the folder loads as any head with `trust_remote_code` and no package installed, and
        the SHA-256 of each weights file's tensors in its metadata (checked by `from_pretrained`)."""
        self.config.auto_map = dict(REMOTE_CODE_AUTO_MAP)
        result = super().save_pretrained(save_directory, *args, **kwargs)
        is_main_process = kwargs.get("is_main_process", True)
        if is_main_process and kwargs.get("safe_serialization", True):
            for path in Path(save_directory).glob("*.safetensors"):
                add_weights_digest(path)
        return result

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        """transformers' `from_pretrained`, after `check_model_folder` on the files it will read (a local
        folder, or a Hub repository's snapshot in the cache): a truncated or corrupted weights file, or a
        tokenizer of another vocabulary, is an error naming the file."""
        if pretrained_model_name_or_path is not None:
            folder = Path(pretrained_model_name_or_path, kwargs.get("subfolder") or "")
            if not folder.is_dir():
                folder = fetch_hub_model_files(pretrained_model_name_or_path, kwargs)
            if folder is not None:
                check_model_folder(folder)
        return super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)

    @property
    def dropouts(self) -> dict[str, float]:
        """The dropout probabilities in force, read from the config at every call so that changing the
        config (e.g. `model.config.drop_mult = 0.3`) takes effect at once."""
        return self.config.effective_dropouts()

    @torch.no_grad()
    def _init_weights(self, module):
        """fastai's initialisation: embedding U(-0.1, 0.1) (pad row included), LSTM U(+-1/sqrt(hidden)),
        decoder bias 0, head BatchNorm weight 1 and bias 1e-3, head Linear (and its bias, if any) PyTorch's default."""
        if isinstance(module, nn.Embedding):
            init.uniform_(module.weight, -0.1, 0.1)
        elif isinstance(module, AWDLSTMLayer):
            bound = 1 / math.sqrt(module.hidden_size)
            for param in module.parameters(recurse=False):
                init.uniform_(param, -bound, bound)
        elif isinstance(module, nn.BatchNorm1d):
            init.ones_(module.weight)
            init.constant_(module.bias, 1e-3)
            init.zeros_(module.running_mean)
            init.ones_(module.running_var)
            init.zeros_(module.num_batches_tracked)
        elif isinstance(module, nn.Linear):
            if isinstance(self, AWDLSTMForCausalLM) and module is self.lm_head:
                if not self.config.tie_word_embeddings:
                    init.uniform_(module.weight, -0.1, 0.1)
                if module.bias is not None:
                    init.zeros_(module.bias)
            else:
                init.kaiming_uniform_(module.weight, a=math.sqrt(5))
                if module.bias is not None:  # a v1-style head Linear (classifier_bias): PyTorch's default
                    bound = 1 / math.sqrt(module.in_features)
                    init.uniform_(module.bias, -bound, bound)


class AWDLSTMModel(AWDLSTMPreTrainedModel):
    """The AWD-LSTM encoder (fastai `AWD_LSTM`): embedding with word-type dropout, locked input dropout,
    a stack of weight-dropped LSTMs with locked dropout between them. Returns the last layer's raw output."""

    def __init__(self, config: AWDLSTMConfig):
        super().__init__(config)
        self.encoder = nn.Embedding(self.config.vocab_size, self.config.embedding_size, padding_idx=self.config.pad_token_id)
        self.rnns = nn.ModuleList(AWDLSTMLayer(n_in, n_out) for n_in, n_out in self.config.layer_sizes())
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.encoder

    def set_input_embeddings(self, value: nn.Embedding):
        self.encoder = value

    def zero_state(self, batch_size: int, device=None, dtype=None) -> AWDLSTMCache:
        weight = self.encoder.weight
        return AWDLSTMCache.zeros(self.config, batch_size, device or weight.device, dtype or weight.dtype)

    def embed(self, input_ids: torch.LongTensor) -> torch.Tensor:
        """Embedding lookup with fastai's EmbeddingDropout: in training, each vocabulary row is dropped (for
        every occurrence in the batch) with probability embed_p, the kept rows scaled by 1/(1-p)."""
        weight = self.encoder.weight
        embeds = F.embedding(input_ids, weight, padding_idx=self.config.pad_token_id)
        p = self.dropouts["embed_p"]
        if self.training and p > 0:
            row_mask = weight.new_empty(weight.shape[0], 1).bernoulli_(1 - p) / (1 - p)
            embeds = embeds * row_mask[input_ids]
        return embeds

    def encode(
        self, embeds: torch.Tensor, states: list[LSTMState], lengths: torch.Tensor | None = None
    ) -> tuple[list[torch.Tensor], list[LSTMState]]:
        """Run the LSTM stack over left-aligned rows (`lengths` real tokens each, None = all full).
        Rows with no real token keep their state and output zeros. Returns every layer's raw output
        and the new states."""
        if lengths is not None and lengths.eq(0).any():
            return self._encode_active_rows(embeds, states, lengths)
        if lengths is not None and lengths.eq(embeds.shape[1]).all():
            lengths = None
        dropouts = self.dropouts
        x = locked_dropout(embeds, dropouts["input_p"], self.training)
        outputs, new_states = [], []
        for index, layer in enumerate(self.rnns):
            x, state = layer(x, states[index], lengths, dropouts["weight_p"])
            outputs.append(x)
            new_states.append(state)
            if index < len(self.rnns) - 1:
                x = locked_dropout(x, dropouts["hidden_p"], self.training)
        return outputs, new_states

    def _encode_active_rows(self, embeds, states, lengths):
        rows = lengths.nonzero().squeeze(1)
        batch, time = embeds.shape[:2]
        if rows.numel() == 0:
            outputs = [embeds.new_zeros(batch, time, hidden) for _, hidden in self.config.layer_sizes()]
            return outputs, list(states)
        sub_outputs, sub_new = self.encode(
            embeds.index_select(0, rows), select_state_rows(states, rows), lengths.index_select(0, rows)
        )
        outputs = [out.new_zeros(batch, *out.shape[1:]).index_copy(0, rows, out) for out in sub_outputs]
        return outputs, write_state_rows(states, rows, sub_new)

    def read_window(
        self,
        input_ids: torch.LongTensor | None,
        inputs_embeds: torch.Tensor | None,
        attention_mask: torch.Tensor | None,
        states: list[LSTMState],
    ) -> tuple[list[torch.Tensor], list[LSTMState]]:
        """One pass of the stack over a window, in the caller's positions: pads (mask 0, on any side) are
        moved after the real tokens, never enter the recurrence, and come out as zeros."""
        order = lengths = None
        if attention_mask is not None and not bool(attention_mask.all()):
            order, lengths = real_tokens_first(attention_mask)
        if inputs_embeds is None:
            if order is not None:
                input_ids = input_ids.gather(1, order)
            inputs_embeds = self.embed(input_ids)
        elif order is not None:
            inputs_embeds = inputs_embeds.gather(1, order.unsqueeze(-1).expand_as(inputs_embeds))
        outputs, new_states = self.encode(inputs_embeds, states, lengths)
        if order is not None:  # back to the caller's positions; pads stay zero
            outputs = [torch.zeros_like(out).scatter(1, order.unsqueeze(-1).expand_as(out), out) for out in outputs]
        return outputs, new_states

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        cache: AWDLSTMCache | None = None,
        use_cache: bool | None = None,
        inputs_embeds: torch.FloatTensor | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        outputs_to_keep: int = 0,
        **kwargs,
    ) -> AWDLSTMModelOutput:
        """`cache` continues from a previous state (zeros otherwise); `attention_mask` (1 = token, 0 = pad)
        alone says what is padding. The returned `cache` is a new object holding the state after the
        last real token of each row. `outputs_to_keep` > 0 returns only the last positions' outputs.

        Inference without gradients reads long inputs `max_len` tokens at a time (`bptt` when `max_len` is
        None), carrying the state, so its working memory is bounded by the window, not by the input's length
        (a 100k-token prompt)."""
        attention_mask = check_inputs(self.config, input_ids, attention_mask, inputs_embeds)
        reference = input_ids if input_ids is not None else inputs_embeds
        batch, time = reference.shape[:2]
        if cache is None:
            cache = self.zero_state(batch, reference.device)
        elif cache.batch_size != batch:
            raise ValueError(f"cache holds a state for {cache.batch_size} rows, the input has {batch}")

        streaming = not self.training and not torch.is_grad_enabled()
        window = max(self.config.max_len or 0, self.config.bptt) if streaming else max(time, 1)
        keep_from = time - outputs_to_keep if outputs_to_keep else 0
        states, kept = cache.states, []
        for start in range(0, time, window):
            end = min(start + window, time)
            outputs, states = self.read_window(
                input_ids[:, start:end] if input_ids is not None else None,
                inputs_embeds[:, start:end] if inputs_embeds is not None else None,
                attention_mask[:, start:end] if attention_mask is not None else None,
                states,
            )
            if end > keep_from:
                kept.append([out[:, max(keep_from - start, 0):] for out in outputs])
        if not kept:  # an empty input: no position to return
            kept = [[reference.new_zeros(batch, 0, hidden, dtype=self.encoder.weight.dtype) for _, hidden in self.config.layer_sizes()]]
        outputs = [torch.cat(pieces, 1) if len(pieces) > 1 else pieces[0] for pieces in zip(*kept)]
        use_cache = True if use_cache is None else use_cache
        return AWDLSTMModelOutput(
            last_hidden_state=outputs[-1],
            cache=AWDLSTMCache(states, cache.seen_tokens + time) if use_cache else None,
            hidden_states=tuple(outputs) if output_hidden_states else None,
        )


class _ChunkedDecoderCrossEntropy(torch.autograd.Function):
    """Cross-entropy of `hidden @ weight.T + bias` computed a block of rows at a time, with the gradients
    worked out in the same pass (softmax minus one-hot), so vocabulary-sized logits never exist for the
    whole batch: about twice as fast on CPU as logits + `F.cross_entropy`, and far less memory. The three
    matrix products run in `matmul_dtype` (the autocast dtype, as autocast runs a Linear; bf16 products are
    ~3x faster on CPUs with native bf16), everything else (softmax, loss, accumulated gradients) in float32."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, divisor, chunk_size, grad_enabled, matmul_dtype):
        with torch.autocast(hidden.device.type, enabled=False):
            h, w = hidden.to(matmul_dtype), weight.to(matmul_dtype)
            b = bias.float() if bias is not None else None
            total = h.new_zeros((), dtype=torch.float32)
            needs_h, needs_w, needs_b = (grad_enabled and needed for needed in ctx.needs_input_grad[:3])
            grad_h = torch.zeros_like(h, dtype=torch.float32) if needs_h else None
            grad_w = torch.zeros_like(w, dtype=torch.float32) if needs_w else None
            grad_b = torch.zeros_like(b) if needs_b else None
            for start in range(0, h.shape[0], chunk_size):
                rows = slice(start, start + chunk_size)
                h_rows, t_rows = h[rows], targets[rows]
                valid = t_rows != -100
                safe_targets = t_rows.clamp(min=0)
                logits = (h_rows @ w.t()).float()
                if b is not None:
                    logits += b
                log_probs = torch.log_softmax(logits, dim=1)
                total -= (log_probs.gather(1, safe_targets[:, None]).squeeze(1) * valid).sum()
                # d(loss)/d(logits) = softmax - one_hot, zero on ignored rows
                grad_logits = log_probs.exp_()
                grad_logits[torch.arange(len(t_rows), device=h.device), safe_targets] -= 1
                if not bool(valid.all()):
                    grad_logits[~valid] = 0
                if grad_b is not None:
                    grad_b += grad_logits.sum(0)
                grad_logits = grad_logits.to(matmul_dtype)
                if grad_h is not None:
                    grad_h[rows] = grad_logits @ w
                if grad_w is not None:
                    grad_w += grad_logits.t() @ h_rows
        ctx.grads = [g / divisor if g is not None else None for g in (grad_h, grad_w, grad_b)]
        ctx.dtypes = (hidden.dtype, weight.dtype, bias.dtype if bias is not None else None)
        return total / divisor

    @staticmethod
    def backward(ctx, grad_output):
        grads = [g.mul_(grad_output).to(dtype) if g is not None else None for g, dtype in zip(ctx.grads, ctx.dtypes)]
        ctx.grads = None
        return (*grads, None, None, None, None, None)


def decoder_cross_entropy(
    hidden: torch.Tensor,
    decoder: nn.Linear,
    targets: torch.LongTensor,
    num_items_in_batch: int | torch.Tensor | None = None,
    logits: torch.Tensor | None = None,
    chunk_size: int = 256,
) -> torch.Tensor:
    """Cross-entropy of `decoder(hidden)` against `targets` (-100 ignored): the sum over real targets
    divided by `num_items_in_batch` (default: their count), as transformers' causal-LM loss. Reads
    `logits` when the caller already has them, else never materialises them."""
    targets = targets.reshape(-1).to(hidden.device)
    divisor = num_items_in_batch if num_items_in_batch is not None else (targets != -100).sum().clamp(min=1)
    divisor = torch.as_tensor(divisor, dtype=torch.float32, device=hidden.device)
    if logits is not None:
        flat_logits = logits.reshape(-1, logits.shape[-1]).float()
        return F.cross_entropy(flat_logits, targets, ignore_index=-100, reduction="sum") / divisor
    hidden = hidden.reshape(-1, hidden.shape[-1])
    device = hidden.device.type
    matmul_dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else torch.float32
    return _ChunkedDecoderCrossEntropy.apply(
        hidden, decoder.weight, decoder.bias, targets, divisor, chunk_size, torch.is_grad_enabled(), matmul_dtype
    )


class StopOnDecodedText(StoppingCriteria):
    """Stops a row once its decoded continuation contains one of `stop_strings`. transformers' own
    `StopStringCriteria` assumes subword tokens whose strings simply concatenate; fastai's tokens are words
    and markers (`xxmaj`, `xxrep`) that only the tokenizer's decode turns into text, so match on that.
    Only the last tokens are decoded each step: enough to hold the longest stop string."""

    def __init__(self, tokenizer, stop_strings: list[str], prompt_length: int):
        self.tokenizer, self.stop_strings, self.prompt_length = tokenizer, stop_strings, prompt_length
        self.window = 2 * max(len(text) for text in stop_strings) + 4

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs) -> torch.BoolTensor:
        tails = input_ids[:, self.prompt_length :][:, -self.window :].tolist()
        texts = [self.tokenizer.decode(tail, skip_special_tokens=True) for tail in tails]
        return torch.tensor([any(stop in text for stop in self.stop_strings) for text in texts], device=input_ids.device)


class AWDLSTMForCausalLM(AWDLSTMPreTrainedModel, GenerationMixin):
    """fastai's `language_model_learner` model: the AWD-LSTM encoder and a `LinearDecoder` (locked output
    dropout, then a linear layer tied to the embedding)."""

    dropout_task = "causal_lm"
    _tied_weights_keys = {"lm_head.weight": "model.encoder.weight"}

    def __init__(self, config: AWDLSTMConfig):
        super().__init__(config)
        self.model = AWDLSTMModel(self.config)
        self.lm_head = nn.Linear(self.config.embedding_size, self.config.vocab_size, bias=self.config.out_bias)
        self.post_init()
        # fastai's predict(no_unk=True): never generate the unknown token.
        if self.config.unk_token_id is not None and not self.generation_config.suppress_tokens:
            self.generation_config.suppress_tokens = [self.config.unk_token_id]

    @classmethod
    def _supports_default_dynamic_cache(cls) -> bool:
        return False  # our state is an AWDLSTMCache created by forward, not attention keys/values

    def generate(self, inputs=None, generation_config=None, stopping_criteria=None, **kwargs):
        """transformers' `generate`, with three cases defined for a word-level recurrent model:
        `max_new_tokens=0` returns the input as it is (transformers refuses it), `stop_strings`
        (with `tokenizer=`) are matched on the decoded continuation (see `StopOnDecodedText`), and a beam
        search's returned `cache` belongs to the returned sequences (see `_state_of_returned_beams`)."""
        config = generation_config if generation_config is not None else self.generation_config
        input_ids = inputs if inputs is not None else kwargs.get("input_ids")
        if kwargs.get("max_new_tokens", config.max_new_tokens) == 0 and input_ids is not None:
            copies = kwargs.get("num_return_sequences", config.num_return_sequences) or 1
            sequences = input_ids.repeat_interleave(copies, 0)
            if kwargs.get("return_dict_in_generate", config.return_dict_in_generate):
                return GenerateDecoderOnlyOutput(sequences=sequences)
            return sequences
        stop_strings = kwargs.pop("stop_strings", None) or config.stop_strings
        if stop_strings:
            tokenizer = kwargs.pop("tokenizer", None)
            if tokenizer is None:
                raise ValueError("stop_strings needs the tokenizer: call generate(..., stop_strings=..., tokenizer=tokenizer).")
            if input_ids is None:
                raise ValueError("stop_strings needs input_ids (the prompt), so the continuation can be told apart.")
            stop_strings = [stop_strings] if isinstance(stop_strings, str) else list(stop_strings)
            if generation_config is not None and generation_config.stop_strings:
                generation_config = copy.deepcopy(generation_config)
                generation_config.stop_strings = None
            stopping_criteria = StoppingCriteriaList(stopping_criteria or [])
            stopping_criteria.append(StopOnDecodedText(tokenizer, stop_strings, input_ids.shape[-1]))
        outputs = super().generate(inputs, generation_config=generation_config, stopping_criteria=stopping_criteria, **kwargs)
        if (kwargs.get("num_beams", config.num_beams) or 1) > 1 and getattr(outputs, "cache", None) is not None:
            outputs.cache = self._state_of_returned_beams(outputs.sequences, input_ids, kwargs.get("attention_mask"))
        return outputs

    @torch.no_grad()
    def _state_of_returned_beams(self, sequences, prompt_ids, prompt_mask) -> AWDLSTMCache | None:
        """Beam search ends with the state of its running beams, not of the hypotheses it returns (picked,
        reordered, fewer): read the returned sequences once more (but their last token, as for any returned
        cache), so that `generate(sequences, cache=out.cache)` continues each one from its own state. A prompt
        given as embeddings is not in the sequences: then no cache is returned rather than a wrong one."""
        if prompt_ids is None:
            return None
        new_tokens = sequences.shape[1] - prompt_ids.shape[1]
        mask = None
        if prompt_mask is not None:
            prompt_mask = prompt_mask.repeat_interleave(sequences.shape[0] // prompt_mask.shape[0], 0)
            mask = torch.cat([prompt_mask, prompt_mask.new_ones(sequences.shape[0], new_tokens)], 1)[:, :-1]
        return self.model(sequences[:, :-1], attention_mask=mask).cache

    def get_output_embeddings(self) -> nn.Linear:
        return self.lm_head

    def set_output_embeddings(self, new_embeddings: nn.Linear):
        self.lm_head = new_embeddings

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        cache: AWDLSTMCache | None = None,
        use_cache: bool | None = None,
        inputs_embeds: torch.FloatTensor | None = None,
        labels: torch.LongTensor | None = None,
        shift_labels: torch.LongTensor | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        logits_to_keep: int = 0,
        skip_logits: bool | None = None,
        num_items_in_batch: int | torch.Tensor | None = None,
        **kwargs,
    ) -> AWDLSTMCausalLMOutput:
        """`labels` follow transformers (the model shifts them); `shift_labels` are targets already aligned
        with the inputs, as stateful BPTT windows provide, so no position is lost at a window's end.
        `skip_logits` (default: in training when targets are given) returns the loss alone, computed
        by `decoder_cross_entropy` without vocabulary-sized logits. `logits_to_keep` > 0 without targets
        (generation) keeps only the last positions, hidden states included."""
        wants_loss = labels is not None or shift_labels is not None
        outputs = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            cache=cache,
            use_cache=use_cache,
            inputs_embeds=inputs_embeds,
            output_hidden_states=output_hidden_states,
            outputs_to_keep=0 if wants_loss else logits_to_keep,
        )
        hidden = outputs.last_hidden_state
        dropped = locked_dropout(hidden, self.dropouts["output_p"], self.training)
        if shift_labels is None and labels is not None:
            shift_labels = F.pad(labels[:, 1:], (0, 1), value=-100)
        if skip_logits is None:
            skip_logits = self.training and shift_labels is not None
        logits = None if skip_logits else self.lm_head(dropped[:, -logits_to_keep:] if logits_to_keep else dropped)
        loss = None
        if shift_labels is not None:
            loss = decoder_cross_entropy(dropped, self.lm_head, shift_labels, num_items_in_batch,
                                         logits=None if logits_to_keep else logits)
        return AWDLSTMCausalLMOutput(
            loss=loss,
            logits=logits,
            cache=outputs.cache,
            last_hidden_state=hidden,
            dropped_hidden_state=dropped,
            hidden_states=outputs.hidden_states,
        )


class AWDLSTMHeadBlock(nn.Module):
    """fastai's `LinBnDrop`: BatchNorm1d, Dropout, Linear without bias, then ReLU except for the last block
    (with `bias`, fastai v1's `bn_drop_lin`, whose Linear adds its bias after the dropout)."""

    def __init__(self, n_in: int, n_out: int, activation: bool, bias: bool = False):
        super().__init__()
        self.batch_norm = nn.BatchNorm1d(n_in)
        self.linear = nn.Linear(n_in, n_out, bias=bias)
        self.activation = activation

    def forward(self, x: torch.Tensor, p: float) -> torch.Tensor:
        # A training batch of one row has no batch statistics: normalise it with the running ones.
        use_batch_stats = self.training and x.shape[0] > 1
        x = F.batch_norm(
            x,
            self.batch_norm.running_mean,
            self.batch_norm.running_var,
            self.batch_norm.weight,
            self.batch_norm.bias,
            use_batch_stats,
            self.batch_norm.momentum,
            self.batch_norm.eps,
        )
        if use_batch_stats:
            self.batch_norm.num_batches_tracked.add_(1)
        x = self.linear(F.dropout(x, p, self.training))
        return F.relu(x) if self.activation else x


class AWDLSTMClassificationHead(nn.Module):
    """fastai's `PoolingLinearClassifier` after pooling: 3E -> classifier_hidden_sizes -> num_labels."""

    def __init__(self, config: AWDLSTMConfig):
        super().__init__()
        self.config = config
        sizes = [3 * config.embedding_size, *config.classifier_hidden_sizes, config.num_labels]
        self.blocks = nn.ModuleList(
            AWDLSTMHeadBlock(n_in, n_out, activation=index < len(sizes) - 2, bias=config.classifier_bias)
            for index, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:]))
        )

    def block_dropouts(self) -> list[float]:
        """fastai: the first block drops with output_p (times drop_mult), the others with
        `classifier_dropouts` (not multiplied)."""
        return [self.config.effective_dropouts()["output_p"], *self.config.classifier_dropouts]

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        for block, p in zip(self.blocks, self.block_dropouts(), strict=True):
            pooled = block(pooled, p)
        return pooled


def masked_concat_pool(outputs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """fastai's concat pooling [last, max, mean] over the positions where `mask` is True (left-aligned
    rows). A row with no position pools to zeros."""
    if outputs.shape[1] == 0:
        return outputs.new_zeros(outputs.shape[0], 3 * outputs.shape[2])
    counts = mask.sum(1, keepdim=True)
    expanded = mask.unsqueeze(-1)
    mean = outputs.masked_fill(~expanded, 0).sum(1) / counts.clamp(min=1).to(outputs.dtype)
    maximum = outputs.masked_fill(~expanded, float("-inf")).max(1).values
    maximum = torch.where(counts > 0, maximum, torch.zeros_like(maximum))
    last_index = (counts - 1).clamp(min=0).unsqueeze(-1).expand(-1, 1, outputs.shape[-1])
    last = outputs.gather(1, last_index).squeeze(1)
    return torch.cat([last, maximum, mean], dim=1)


class AWDLSTMForSequenceClassification(AWDLSTMPreTrainedModel):
    """fastai's `text_classifier_learner` model: the encoder reads each document in chunks of `bptt`
    (fastai `SentenceEncoder`, ULMFiT's BPT3C) and a pooling head classifies it."""

    dropout_task = "classification"
    accepts_loss_kwargs = False

    def __init__(self, config: AWDLSTMConfig):
        super().__init__(config)
        self.model = AWDLSTMModel(self.config)
        self.classifier = AWDLSTMClassificationHead(self.config)
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.model.encoder

    def read_documents(
        self, input_ids: torch.LongTensor, attention_mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """fastai's SentenceEncoder rule, per document: chunks of `bptt` counted from the document's first
        real token, the state carried (and detached) from chunk to chunk, and the outputs of the chunks
        starting at offset i kept when `length - i <= max_len`.

        Documents are aligned on their first pooled chunk, so that all pooled windows start together and
        only they are kept: memory is bounded by `max_len`, not by document length. Chunks before it only
        condition the state and run without a graph (fastai detaches the state, so no gradient reaches
        them either). Returns the pooled outputs (batch, window, E), left-aligned, and their mask."""
        attention_mask = check_inputs(self.config, input_ids, attention_mask)
        batch, time = input_ids.shape
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        order, lengths = real_tokens_first(attention_mask)
        ids = input_ids.gather(1, order)
        bptt, max_len = self.config.bptt, self.config.max_len

        n_chunks = (lengths + bptt - 1) // bptt
        first_pooled = torch.zeros_like(lengths) if max_len is None else ((lengths - max_len).clamp(min=0) + bptt - 1) // bptt
        pooled_start = int(first_pooled.max()) if batch else 0
        delay = pooled_start - first_pooled  # chunks each document waits, so pooled windows line up
        total_chunks = int((delay + n_chunks).max()) if batch else 0

        states = self.model.zero_state(batch).states
        first_step = 0
        if not self.training and pooled_start:
            # Without dropout a chunk's result does not depend on where the recurrence is cut, so the
            # (whole) chunks before each pooled window are read max_len tokens at a time, as the encoder's
            # no-grad path reads long inputs: the same state, a few large LSTM calls instead of many.
            states, first_step = self._read_prefixes(ids, first_pooled * bptt, states), pooled_start
        offsets = torch.arange(bptt, device=ids.device)
        pooled_chunks = []
        for step in range(first_step, total_chunks):
            local = step - delay
            rows = ((local >= 0) & (local < n_chunks)).nonzero().squeeze(1)
            start = local.index_select(0, rows) * bptt
            chunk_lengths = (lengths.index_select(0, rows) - start).clamp(max=bptt)
            # Only a document's last chunk can be short, and its pads trail: running them unpacked leaves
            # the real positions exact (the LSTM is causal) and only spoils a state no chunk reads again.
            # When every row is on its last chunk this is the final step, so it can also be narrower.
            width = int(chunk_lengths.max())
            positions = (start.unsqueeze(1) + offsets[:width]).clamp(max=max(time - 1, 0))
            chunk_ids = ids.index_select(0, rows).gather(1, positions)
            with torch.set_grad_enabled(torch.is_grad_enabled() and step >= pooled_start):
                outputs, new_states = self.model.encode(self.model.embed(chunk_ids), select_state_rows(states, rows))
            states = write_state_rows(states, rows, [(h.detach(), c.detach()) for h, c in new_states])
            if step >= pooled_start:
                real = offsets[:width].unsqueeze(0) < chunk_lengths.unsqueeze(1)
                last = outputs[-1] * real.unsqueeze(-1).to(outputs[-1].dtype)
                pooled_chunks.append(last.new_zeros(batch, width, last.shape[-1]).index_copy(0, rows, last))
        if not pooled_chunks:
            return self.model.encoder.weight.new_zeros(batch, 0, self.config.embedding_size), lengths.new_zeros(batch, 0).bool()
        pooled = torch.cat(pooled_chunks, dim=1)
        window = lengths - first_pooled * bptt
        mask = torch.arange(pooled.shape[1], device=pooled.device).unsqueeze(0) < window.unsqueeze(1)
        return pooled, mask

    @torch.no_grad()
    def _read_prefixes(self, ids: torch.LongTensor, prefix_lengths: torch.Tensor, states: list[LSTMState]) -> list[LSTMState]:
        """The state after the first `prefix_lengths` tokens (whole chunks) of each left-aligned row. On a
        timeline where all prefixes end together, rows join as their prefix starts; between two such starts
        the same rows are all on real tokens, so they run unpacked (oneDNN's fast path) in windows of
        `max(max_len, bptt)` tokens. Rows with no prefix keep their state."""
        window = max(self.config.max_len or 0, self.config.bptt)
        end = int(prefix_lengths.max())
        starts = end - prefix_lengths
        has_prefix = prefix_lengths > 0
        bounds = sorted(set(starts[has_prefix].tolist())) + [end]
        for segment_start, segment_end in zip(bounds, bounds[1:]):
            rows = (has_prefix & (starts <= segment_start)).nonzero().squeeze(1)
            row_ids, row_states = ids.index_select(0, rows), select_state_rows(states, rows)
            read = segment_start - starts.index_select(0, rows)  # tokens each row has read so far
            for offset in range(0, segment_end - segment_start, window):
                width = min(window, segment_end - segment_start - offset)
                positions = (read + offset).unsqueeze(1) + torch.arange(width, device=ids.device)
                _, row_states = self.model.encode(self.model.embed(row_ids.gather(1, positions)), row_states)
            states = write_state_rows(states, rows, row_states)
        return states

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> AWDLSTMSequenceClassifierOutput:
        if input_ids is None:
            raise ValueError("AWDLSTMForSequenceClassification needs input_ids")
        pooled_outputs, pooled_mask = self.read_documents(input_ids, attention_mask)
        logits = self.classifier(masked_concat_pool(pooled_outputs, pooled_mask))
        loss = None
        if labels is not None:
            if self.config.num_labels > 1 and (labels.shape != logits.shape[:1] or labels.is_floating_point() or (
                    labels.numel() and not (0 <= int(labels.min()) and int(labels.max()) < self.config.num_labels))):
                raise ValueError(f"labels must be one class id in [0, {self.config.num_labels}) per document, "
                                 f"got {labels.tolist()}")
            loss = self.loss_function(labels=labels, pooled_logits=logits, config=self.config)
        return AWDLSTMSequenceClassifierOutput(
            loss=loss, logits=logits, last_hidden_state=pooled_outputs, pooled_mask=pooled_mask
        )


__all__ = [
    "AWDLSTMCache",
    "AWDLSTMModel",
    "AWDLSTMForCausalLM",
    "AWDLSTMForSequenceClassification",
    "AWDLSTMPreTrainedModel",
]
