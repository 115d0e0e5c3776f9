"""AWD-LSTM configuration (fastai 2.8.12's `awd_lstm_lm_config` / `awd_lstm_clas_config`)."""

from transformers import PreTrainedConfig

# fastai's default dropouts and drop_mult per task (`awd_lstm_lm_config`, `awd_lstm_clas_config`,
# `language_model_learner(drop_mult=1.)`, `text_classifier_learner(drop_mult=0.5)`).
TASK_DROPOUT_DEFAULTS = {
    "causal_lm": {
        "embed_p": 0.02,
        "input_p": 0.25,
        "weight_p": 0.2,
        "hidden_p": 0.15,
        "output_p": 0.1,
        "drop_mult": 1.0,
    },
    "classification": {
        "embed_p": 0.05,
        "input_p": 0.4,
        "weight_p": 0.5,
        "hidden_p": 0.3,
        "output_p": 0.4,
        "drop_mult": 0.5,
    },
}
DROPOUT_KEYS = ("embed_p", "input_p", "weight_p", "hidden_p", "output_p", "drop_mult")


def _check_probability(name: str, value: float | None, upper: float | None = 1.0) -> None:
    """A dropout must be in [0, 1) (1 would drop everything and divide by zero); drop_mult only >= 0."""
    if value is not None and not (0 <= value and (upper is None or value < upper)):
        bound = f"[0, {upper})" if upper is not None else ">= 0"
        raise ValueError(f"{name} must be {bound}, got {value}")


class AWDLSTMConfig(PreTrainedConfig):
    r"""
    Configuration of an AWD-LSTM (Merity et al. 2017) as used by fastai / ULMFiT.

    Sizes follow fastai: layer `l` has input size `embedding_size` if `l == 0` else `hidden_size`, and
    hidden size `hidden_size` except the last layer, whose hidden size is `embedding_size` so that the
    decoder can be tied to the embedding.

    Dropouts use fastai's names and are multiplied by `drop_mult` (fastai multiplies every `*_p`).
    fastai's language model and classifier have different defaults; `dropout_task` records which task
    the values were chosen for, so a classifier built from a language-model folder takes the
    classifier defaults, as `text_classifier_learner` does. A value left at `None` takes the default of
    the task the config is used for.

    Args:
        vocab_size: number of embedding rows (fastai's `len(vocab)`, `xxfake` padding included).
        embedding_size: fastai `emb_sz` (400).
        hidden_size: fastai `n_hid` (1152).
        num_hidden_layers: fastai `n_layers` (3).
        embed_p, input_p, weight_p, hidden_p, output_p: embedding (word-type), input (locked), weight
            (DropConnect on hidden-to-hidden), between-layer (locked) and output dropout.
        drop_mult: multiplier applied to every dropout above.
        dropout_task: `"causal_lm"` or `"classification"`: the task the dropouts belong to.
        out_bias: whether the LM decoder has a bias.
        bptt: chunk length the classifier reads a document in (fastai `seq_len`, 72).
        max_len: the classifier pools the chunks that start within the last `max_len` tokens (1440).
        classifier_hidden_sizes: fastai `lin_ftrs` ([50]).
        classifier_dropouts: dropouts of the head blocks after the first; `None` gives fastai's 0.1 each
            (the first block uses `output_p * drop_mult`).
        classifier_bias: whether the head's Linear layers have a bias: fastai v2's `LinBnDrop` has none
            (`bias=not bn`), fastai v1's `bn_drop_lin` (converted v1 classifiers) has one.
    """

    model_type = "awd_lstm"
    # Outputs Trainer must not gather during evaluation: the state and the per-token encoder outputs.
    keys_to_ignore_at_inference = ["cache", "last_hidden_state", "dropped_hidden_state", "hidden_states", "pooled_mask"]

    vocab_size: int = 60008
    embedding_size: int = 400
    hidden_size: int = 1152
    num_hidden_layers: int = 3
    embed_p: float | None = None
    input_p: float | None = None
    weight_p: float | None = None
    hidden_p: float | None = None
    output_p: float | None = None
    drop_mult: float | None = None
    dropout_task: str | None = None
    out_bias: bool = True
    tie_word_embeddings: bool = True
    bptt: int = 72
    max_len: int | None = 1440
    classifier_hidden_sizes: list[int] | None = None
    classifier_dropouts: list[float] | None = None
    classifier_bias: bool = False
    unk_token_id: int | None = 0
    pad_token_id: int | None = 1
    bos_token_id: int | None = 2
    eos_token_id: int | None = 3
    use_cache: bool = True

    def __post_init__(self, **kwargs):
        if self.id2label is None and kwargs.get("num_labels") is None:
            self.id2label = {0: "neg", 1: "pos"}
            self.label2id = {"neg": 0, "pos": 1}
        if self.classifier_hidden_sizes is None:
            self.classifier_hidden_sizes = [50]
        widths = self.classifier_hidden_sizes
        if not isinstance(widths, (list, tuple)) or not all(
                isinstance(width, int) and not isinstance(width, bool) and width >= 1 for width in widths):
            raise ValueError(f"classifier_hidden_sizes must be a list of widths of at least 1 (fastai's lin_ftrs, "
                             f"e.g. [50]), got {widths!r}")
        if self.classifier_dropouts is None:
            self.classifier_dropouts = [0.1] * len(self.classifier_hidden_sizes)
        if len(self.classifier_dropouts) != len(self.classifier_hidden_sizes):
            raise ValueError(
                f"classifier_dropouts has {len(self.classifier_dropouts)} values for "
                f"{len(self.classifier_hidden_sizes)} hidden layers in classifier_hidden_sizes"
            )
        if self.dropout_task not in (None, *TASK_DROPOUT_DEFAULTS):
            raise ValueError(f"dropout_task must be one of {list(TASK_DROPOUT_DEFAULTS)}, got {self.dropout_task!r}")
        for name in ("vocab_size", "embedding_size", "hidden_size", "num_hidden_layers", "bptt"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.max_len is not None and self.max_len < self.bptt:
            # Below bptt the last chunk of a document may not be pooled, leaving nothing to classify.
            raise ValueError(f"max_len must be None or at least bptt ({self.bptt}), got {self.max_len}")
        for name in (*DROPOUT_KEYS[:-1], "drop_mult"):
            _check_probability(name, getattr(self, name), upper=None if name == "drop_mult" else 1.0)
        for p in self.classifier_dropouts:
            _check_probability("classifier_dropouts", p)
        super().__post_init__(**kwargs)
        if self.num_labels < 1:  # transformers makes an empty head of num_labels <= 0
            raise ValueError(f"num_labels must be at least 1, got {kwargs.get('num_labels', self.num_labels)}")

    def layer_sizes(self) -> list[tuple[int, int]]:
        """(input size, hidden size) of each LSTM layer, fastai's rule."""
        last = self.num_hidden_layers - 1
        return [
            (self.embedding_size if layer == 0 else self.hidden_size, self.embedding_size if layer == last else self.hidden_size)
            for layer in range(self.num_hidden_layers)
        ]

    @classmethod
    def get_config_dict(cls, pretrained_model_name_or_path, **kwargs):
        """transformers' reader, refusing a config of another `model_type` (transformers only warns, and the
        model then loads as an AWD-LSTM with whatever keys happen to fit)."""
        config_dict, kwargs = super().get_config_dict(pretrained_model_name_or_path, **kwargs)
        model_type = config_dict.get("model_type")
        if model_type is not None and model_type != cls.model_type:
            raise ValueError(f"The config in {pretrained_model_name_or_path} has model_type {model_type!r}, not "
                             f"{cls.model_type!r}: it is not an AWD-LSTM config")
        return config_dict, kwargs

    @classmethod
    def from_dict(cls, config_dict: dict, **kwargs):
        """As transformers', and remembers which dropouts the caller passed (e.g.
        `from_pretrained(lm_dir, drop_mult=0.3)`, through any Auto class), so that `with_task_dropouts`
        keeps them when it replaces the folder's other values by another task's defaults."""
        explicit = {key for key in DROPOUT_KEYS if key in kwargs}
        loaded = super().from_dict(config_dict, **kwargs)
        config = loaded[0] if isinstance(loaded, tuple) else loaded
        config._explicit_dropouts = explicit
        return loaded

    def to_dict(self) -> dict:
        output = super().to_dict()
        output.pop("_explicit_dropouts", None)  # a property of this load, not of the model
        return output

    def with_task_dropouts(self, task: str) -> "AWDLSTMConfig":
        """A copy whose dropouts are set for `task`: fastai's defaults fill values left at `None`, and
        all of them are replaced when the config's values were chosen for the other task, except those
        the caller passed explicitly when loading."""
        defaults = TASK_DROPOUT_DEFAULTS[task]
        explicit = getattr(self, "_explicit_dropouts", set())
        replace = {key for key in DROPOUT_KEYS if getattr(self, key) is None}
        if self.dropout_task not in (None, task):
            replace |= set(DROPOUT_KEYS) - explicit
        if not replace and self.dropout_task == task:
            return self
        config = self.__class__.from_dict(self.to_dict())
        for key in replace:
            setattr(config, key, defaults[key])
        config.dropout_task = task
        return config

    def effective_dropouts(self) -> dict[str, float]:
        """The five dropout probabilities after `drop_mult`, as fastai applies them."""
        missing = [key for key in DROPOUT_KEYS if getattr(self, key) is None]
        if missing:
            raise ValueError(f"dropouts {missing} are unset; call with_task_dropouts(task) first")
        dropouts = {key: getattr(self, key) * self.drop_mult for key in DROPOUT_KEYS[:-1]}
        for key, value in dropouts.items():
            _check_probability(f"{key} * drop_mult", value)
        return dropouts


__all__ = ["AWDLSTMConfig"]
