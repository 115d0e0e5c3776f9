"""IMDB loading, fastai-style tokenization/numericalization and the data pipelines of ULMFiT.

- `load_imdb` loads IMDB from the Hub, or from the local mirror when the Hub can't be reached.
- `tokenize_corpus` / `numericalize` are `datasets.map` passes, so their results are cached.
- `check_texts` / `check_labels` name a missing text or a stray label by its split and row, before any
  training; `class_names` are the classifier's classes (the dataset's ClassLabel names).
- `lm_corpus` / `classification_splits` carve the splits the ULMFiT recipe uses.
- `LMStreamDataset` is fastai's `LMDataLoader` as a map-style dataset that HF `Trainer` can
  consume with a sequential sampler, on one device or many (see fastai_reference.md 5.1).
- `ClassificationCollator` pads classification batches on the right with an attention mask.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.metadata
import logging
import math
import numbers
import os
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from itertools import chain
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
from datasets import ClassLabel, Dataset, DatasetDict, Value, concatenate_datasets, load_dataset
from datasets import config as datasets_config
from datasets.exceptions import DatasetNotFoundError
from huggingface_hub import constants as hf_constants
from huggingface_hub.errors import (LocalEntryNotFoundError, OfflineModeIsEnabled, RepositoryNotFoundError,
                                    RevisionNotFoundError)
from datasets.arrow_dataset import Column

from . import tokenization_awd_lstm
from .tokenization_awd_lstm import fastai_tokenize_batch

logger = logging.getLogger(__name__)

IMDB_HUB_ID = "stanfordnlp/imdb"
# Where the offline IMDB mirror sits relative to a repository checkout: `<repo>/../shared/data/imdb`.
_MIRROR_RELPATH = Path("..", "shared", "data", "imdb")


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------


def _mirror_candidates() -> list[Path]:
    """Existing mirror folders: beside the working directory first, then beside this checkout."""
    repo_root = Path(__file__).resolve().parents[2]  # <repo>/src/awd_lstm_hf/data.py in a checkout
    candidates = [Path.cwd() / _MIRROR_RELPATH, repo_root / _MIRROR_RELPATH]
    return [path.resolve() for path in candidates if path.is_dir()]


def _transport_errors() -> tuple[type[BaseException], ...]:
    """Errors that mean a request never got an answer from the Hub (whichever HTTP client raised them)."""
    errors = [ConnectionError, TimeoutError, OfflineModeIsEnabled, LocalEntryNotFoundError]
    for module, names in (("httpx", ("TransportError",)), ("httpx2", ("TransportError",)),
                          ("requests.exceptions", ("ConnectionError", "Timeout"))):
        try:
            imported = importlib.import_module(module)
        except ImportError:
            continue
        errors += [getattr(imported, name) for name in names if hasattr(imported, name)]
    return tuple(errors)


def hub_unreachable(error: BaseException) -> bool:
    """Whether a `load_dataset` error means the Hub could not be asked (offline mode, no network, a proxy's
    or gateway's HTTP error: 407 or 5xx, a response not served by the Hub) rather than that it answered no
    (no such dataset or revision, gated, 401 bad token), which must surface. datasets wraps the cause
    differently per code path (a ConnectionError, or a FileNotFoundError whose context holds
    huggingface_hub's LocalEntryNotFoundError), so the whole cause/context chain is read."""
    offline = datasets_config.HF_HUB_OFFLINE or hf_constants.is_offline_mode()
    transport_errors = _transport_errors()
    pending, seen, unreachable = [error], set(), False
    while pending:
        current = pending.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        status = getattr(getattr(current, "response", None), "status_code", None)
        if isinstance(current, (DatasetNotFoundError, RepositoryNotFoundError, RevisionNotFoundError)) or status == 401:
            return False  # the Hub answered (GatedRepoError is a RepositoryNotFoundError)
        unreachable |= (isinstance(current, transport_errors) or status == 407
                        or (isinstance(status, int) and status >= 500)
                        or (offline and isinstance(current, FileNotFoundError)))  # offline: not in the cache
        pending += [current.__cause__, current.__context__]
    return unreachable


def load_local_folder(folder: Path) -> DatasetDict:
    """`load_dataset` of a local dataset folder, with a cache directory named after its files' paths, sizes
    and modification times. datasets keys a folder's cache by its name and file patterns only, so a folder
    rewritten in place (or another one at the same path) would silently load the old data, and the
    tokenization passes cached beside it would follow; here a changed folder is read afresh."""
    stamp = hashlib.sha256()
    for file in sorted(folder.rglob("*")):
        relative = file.relative_to(folder)
        if file.is_file() and not any(part.startswith(".") for part in relative.parts):
            stat = file.stat()
            stamp.update(f"{relative.as_posix()}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    cache_dir = Path(datasets_config.HF_DATASETS_CACHE) / "local_folders" / stamp.hexdigest()[:16]
    return load_dataset(str(folder), cache_dir=str(cache_dir))


def load_imdb(name_or_path: str | os.PathLike = IMDB_HUB_ID) -> DatasetDict:
    """Load IMDB (train/test/unsupervised) with `datasets.load_dataset`.

    An existing local folder is loaded as is. For the Hub id, a Hub that can't be reached (offline
    mode, no network, a proxy error; see `hub_unreachable`) falls back to the local mirror
    `../shared/data/imdb`, with a warning, so the README commands also run on machines without Hub
    access. Any other error, and any error for another name, is raised.
    """
    path = Path(name_or_path)
    if path.is_dir():
        dsdict = load_local_folder(path)
    else:
        try:
            dsdict = load_dataset(str(name_or_path))
        except Exception as error:
            mirrors = _mirror_candidates() if str(name_or_path) in (IMDB_HUB_ID, "imdb") else []
            if not mirrors or not hub_unreachable(error):
                raise
            logger.warning(
                "Could not reach the Hugging Face Hub for %r (%s: %s); using the local IMDB mirror %s instead.",
                str(name_or_path),
                type(error).__name__,
                str(error).splitlines()[0][:200] if str(error) else "",
                mirrors[0],
            )
            dsdict = load_local_folder(Path(mirrors[0]))
    for split, dataset in dsdict.items():
        if "text" not in dataset.column_names:
            raise ValueError(
                f"{str(name_or_path)!r} split {split!r} has no 'text' column "
                f"(columns: {dataset.column_names}); expected IMDB-like data with 'text' and 'label'."
            )
    return dsdict


# --------------------------------------------------------------------------------------------
# Tokenization and numericalization (cached `datasets.map` passes)
# --------------------------------------------------------------------------------------------


class _TokenizeBatch:
    """Batched map function for `tokenize_corpus`.

    datasets fingerprints a module-level function by its name only; the digest of the tokenizer
    module and the spaCy version kept here make the cache follow changes to the tokenization.
    """

    def __init__(self):
        digest = hashlib.sha256(Path(tokenization_awd_lstm.__file__).read_bytes())
        digest.update(importlib.metadata.version("spacy").encode())
        self.tokenizer_digest = digest.hexdigest()

    def __call__(self, batch: dict, indices: list[int]) -> dict:
        texts = batch["text"]
        for text, index in zip(texts, indices):
            if text is None:
                raise ValueError(f"Row {index} has no text (None); drop or fill it before tokenizing.")
        return {"tokens": fastai_tokenize_batch(texts)}


def tokenize_corpus(dataset: Dataset, num_proc: int | None = None, batch_size: int = 1000) -> Dataset:
    """Add fastai tokens (`tokens`, starting with 'xxbos') to a dataset with a `text` column.

    `text` is dropped (the tokens replace it), other columns such as `label` are kept. The result
    is cached by datasets' fingerprinting, so a second call with the same data is read from disk.
    """
    return dataset.map(
        _TokenizeBatch(),
        batched=True,
        batch_size=batch_size,
        with_indices=True,
        num_proc=num_proc,
        remove_columns=["text"],
        desc="fastai tokenization",
    )


def count_tokens(dataset: Dataset | DatasetDict) -> Counter:
    """Count the tokens of every document, in document order (fastai's vocab Counter).

    Counter keeps first-insertion order, which decides vocab ties, so counting follows the
    dataset's (and a DatasetDict's split) order deterministically. fastai counts every document
    the tokenizer saw, specials and validation documents included.
    """
    splits = dataset.values() if isinstance(dataset, DatasetDict) else [dataset]
    counts = Counter()
    for split in splits:
        for batch in split.select_columns(["tokens"]).iter(batch_size=1000):
            counts.update(chain.from_iterable(batch["tokens"]))
    return counts


def _numericalize_batch(batch: dict, stoi: dict[str, int]) -> dict:
    return {"input_ids": [[stoi.get(token, 0) for token in tokens] for tokens in batch["tokens"]]}


def numericalize(dataset: Dataset, tokenizer, num_proc: int | None = None) -> Dataset:
    """Add `input_ids` for the `tokens` column; unknown tokens map to 0 (`xxunk`), as in fastai.

    The lookup is a plain dict built once from `tokenizer.get_vocab()` (which, like fastai's `o2i`,
    leaves out the 'xxfake' padding entries), much faster than per-token tokenizer calls.
    """
    stoi = dict(tokenizer.get_vocab())
    return dataset.map(
        _numericalize_batch,
        batched=True,
        num_proc=num_proc,
        fn_kwargs={"stoi": stoi},
        desc="numericalization",
    )


# --------------------------------------------------------------------------------------------
# Checks of the loaded splits (before any tokenization or training)
# --------------------------------------------------------------------------------------------

# The splits the classifier trains and is tested on (its validation split is carved from train); IMDB's
# unsupervised split (label -1) only feeds the language model.
LABELLED_SPLITS = ("train", "test")


def _arrow_column(dataset: Dataset, name: str) -> pa.ChunkedArray:
    """One column as Arrow (the selected rows of a `select`ed dataset), without a Python object per row."""
    return dataset.select_columns([name]).with_format("arrow")[:].column(0)


def _holds_class_ids(feature) -> bool:
    return isinstance(feature, ClassLabel) or (isinstance(feature, Value) and pa.types.is_integer(feature.pa_type))


def check_texts(dsdict: DatasetDict, splits: Iterable[str] | None = None) -> None:
    """Every text of `splits` (default: all) present. A missing one is named by its split and its row in that
    split as loaded: once the splits are mixed and shuffled (`lm_corpus`), its row number there means nothing."""
    for split in dsdict if splits is None else splits:
        missing = np.flatnonzero(pc.is_null(_arrow_column(dsdict[split], "text")))
        if len(missing):
            raise ValueError(f"split {split!r}, row {missing[0]}: text is None ({len(missing)} row(s) of the split "
                             "have no text); drop or fill them first, e.g. with "
                             "`dataset.filter(lambda row: row['text'] is not None)`")


def class_names(dsdict: DatasetDict) -> list[str]:
    """The classifier's classes in id order: the names of the train split's ClassLabel `label` (IMDB: neg,
    pos). A plain integer `label` column names no classes: its ids are 0..n-1 with n - 1 the largest label of
    the train split, named LABEL_i as transformers names the classes of a config that gives none."""
    feature = dsdict["train"].features.get("label")
    if isinstance(feature, ClassLabel):
        return list(feature.names)
    if not _holds_class_ids(feature):
        raise ValueError(f"split 'train' needs a ClassLabel or integer 'label' column, not {feature}; cast it, e.g. "
                         "`dataset.cast_column('label', ClassLabel(names=[...]))`")
    largest = pc.max(_arrow_column(dsdict["train"], "label")).as_py()
    return [f"LABEL_{index}" for index in range(max(largest or 0, 0) + 1)]


def check_labels(dsdict: DatasetDict, names: Sequence[str], splits: Iterable[str] = LABELLED_SPLITS) -> None:
    """Every label of the labelled splits one of the classes `names` (ids 0..len(names)-1): a stray value (-1,
    or 2 of two classes) is named by its split and row before any training, instead of failing a classifier
    batch after the whole language-model stage. A split's ClassLabel must name the same classes."""
    for split in splits:
        dataset = dsdict[split]
        feature = dataset.features.get("label")
        if not _holds_class_ids(feature):
            raise ValueError(f"split {split!r} needs a ClassLabel or integer 'label' column, not {feature} "
                             f"(columns: {dataset.column_names})")
        if isinstance(feature, ClassLabel) and feature.names != list(names):
            raise ValueError(f"split {split!r} names its classes {feature.names}, but the classes are {list(names)}")
        labels = _arrow_column(dataset, "label")
        stray = pc.fill_null(pc.or_(pc.less(labels, 0), pc.greater_equal(labels, len(names))), True)
        rows = np.flatnonzero(stray)
        if len(rows):
            raise ValueError(f"split {split!r}, row {rows[0]}: label {labels[int(rows[0])].as_py()} is not one of the "
                             f"classes {dict(enumerate(names))}")


# --------------------------------------------------------------------------------------------
# Splits
# --------------------------------------------------------------------------------------------


def lm_corpus(
    dsdict: DatasetDict, max_docs: int | None = None, valid_pct: float = 0.1, seed: int = 0
) -> tuple[Dataset, Dataset]:
    """Language-model corpus: the documents of all splits, `valid_pct` of them held out at random.

    ULMFiT fine-tunes the LM on every IMDB review (train + test + unsupervised; labels unused).
    `max_docs` takes a seeded random subsample first, for quick runs. Every split's texts are checked first
    (`check_texts`).
    """
    if not 0 < valid_pct < 1:
        raise ValueError(f"valid_pct must be in (0, 1), got {valid_pct}")
    check_texts(dsdict)
    corpus = concatenate_datasets(
        [split.remove_columns("label") if "label" in split.column_names else split for split in dsdict.values()]
    )
    if max_docs is not None and max_docs < len(corpus):
        corpus = corpus.shuffle(seed=seed).select(range(max_docs))
    splits = corpus.train_test_split(test_size=valid_pct, seed=seed)
    return splits["train"], splits["test"]


def _sample(dataset: Dataset, n: int, seed: int) -> tuple[Dataset, Dataset | None]:
    """Seeded random split into n documents and the rest, stratified by a ClassLabel `label`.

    A random permutation is reordered so that every class is spread evenly along it (document i of
    a class of size c gets the key (i + 0.5) / c), so any prefix holds each class in proportion.
    datasets' own stratified `train_test_split` reads labels row by row (~5 s per IMDB split).
    """
    if n > len(dataset):
        raise ValueError(f"Asked for {n} documents but the split has only {len(dataset)}.")
    if n == len(dataset):
        return dataset, None
    order = np.random.default_rng(seed).permutation(len(dataset))
    if isinstance(dataset.features.get("label"), ClassLabel):
        labels = np.asarray(dataset.select_columns(["label"])[:]["label"])[order]
        keys = np.empty(len(order))
        for label in np.unique(labels):
            members = labels == label
            keys[members] = (np.arange(members.sum()) + 0.5) / members.sum()
        order = order[np.argsort(keys, kind="stable")]
    return dataset.select(order[:n]), dataset.select(order[n:])


def classification_splits(
    dsdict: DatasetDict,
    train_docs: int | None = None,
    test_docs: int | None = None,
    valid_docs: int = 0,
    seed: int = 0,
) -> dict[str, Dataset | None]:
    """Classifier splits: `train`, `valid` (carved from the labelled train split) and `test`.

    `valid` is None when `valid_docs` is 0 (IMDB has no official validation split). Subsamples
    are seeded and stratified by label, so both classes are represented even in small runs; the
    full test split is returned as is unless `test_docs` is given. The whole train and test splits are
    checked first (`check_texts`, `check_labels`), whichever rows the subsamples take.
    """
    check_texts(dsdict, LABELLED_SPLITS)
    check_labels(dsdict, class_names(dsdict))
    train, valid = dsdict["train"], None
    if valid_docs:
        valid, train = _sample(train, valid_docs, seed)
        if train is None:
            raise ValueError("valid_docs leaves no training documents.")
    if train_docs is not None:
        train, _ = _sample(train, train_docs, seed)
    test = dsdict["test"]
    if test_docs is not None:
        test, _ = _sample(test, test_docs, seed)
    return {"train": train, "valid": valid, "test": test}


# --------------------------------------------------------------------------------------------
# Language-model stream (fastai's LMDataLoader)
# --------------------------------------------------------------------------------------------


def _flatten_documents(documents: Sequence[Sequence[int]] | Column) -> tuple[np.ndarray, np.ndarray]:
    """All token ids in one int64 array, and the document lengths.

    A datasets column is read through Arrow (zero Python objects per token); anything else is
    converted document by document.
    """
    if isinstance(documents, Column) and isinstance(documents.source, Dataset):
        lists = _arrow_column(documents.source, documents.column_name).combine_chunks()
        tokens = pc.list_flatten(lists).to_numpy(zero_copy_only=False)
        lengths = pc.list_value_length(lists).to_numpy(zero_copy_only=False)
        # astype copies: Arrow's zero-copy buffers are read-only, which torch.from_numpy warns about.
        return tokens.astype(np.int64), lengths.astype(np.int64)
    arrays = [np.asarray(doc, dtype=np.int64).reshape(-1) for doc in documents]
    lengths = np.array([len(a) for a in arrays], dtype=np.int64)
    tokens = np.concatenate(arrays) if arrays else np.zeros(0, dtype=np.int64)
    return tokens, lengths


class LMStreamDataset(torch.utils.data.Dataset):
    """fastai's `LMDataLoader` as a map-style dataset for `Trainer` (stateful BPTT).

    The documents are concatenated into one stream S, cut into `rows` contiguous rows of `bl`
    tokens, and each row into windows of `bptt` tokens (the last window shorter, not padded).
    Items are ordered window-major (`index = window * rows + row`), so a sequential sampler with
    batch size `rows` yields exactly fastai's batches, and batch k's row r continues batch k-1's row
    r: the hidden state can be carried across batches.

    `rows` is the *global* batch size (`per_device_train_batch_size * world_size`). With
    Accelerate's `BatchSamplerShard`, process p then always gets rows `[p*b, (p+1)*b)` and keeps
    its own state. With `shuffle`, `set_epoch(e)` (called by Accelerate's `DataLoaderShard` before
    each pass) permutes the document order with a generator seeded by `(seed, e)`, identically on
    every process; token order inside a document never changes.
    """

    def __init__(
        self,
        documents: Sequence[Sequence[int]] | Column,
        rows: int,
        bptt: int,
        shuffle: bool = False,
        seed: int = 0,
    ):
        if rows < 1 or bptt < 1:
            raise ValueError(f"rows and bptt must be positive, got rows={rows}, bptt={bptt}")
        self.rows, self.bptt, self.shuffle, self.seed = rows, bptt, shuffle, seed
        self._tokens, self._lengths = _flatten_documents(documents)
        self._starts = np.cumsum(self._lengths) - self._lengths
        if len(self._tokens) < rows + 1:
            raise ValueError(
                f"The corpus has {len(self._tokens)} tokens; {rows} rows need at least {rows + 1} "
                "(one input and one target per row). Use more documents or fewer rows."
            )
        self.row_len = (len(self._tokens) - 1) // rows  # fastai's `bl`; the < rows leftover is dropped
        self.n_windows = math.ceil(self.row_len / bptt)
        self.stream, self.epoch = self._tokens, None
        self.set_epoch(0)

    @property
    def n_tokens(self) -> int:
        """Tokens in the stream (all documents), before dropping the leftover."""
        return len(self._tokens)

    @property
    def n_documents(self) -> int:
        return len(self._lengths)

    def set_epoch(self, epoch: int) -> None:
        """Rebuild the stream for `epoch`: a seeded permutation of the documents when shuffling."""
        if self.shuffle and epoch != self.epoch:
            self.stream = self._shuffled_stream(epoch)
        self.epoch = epoch

    def _shuffled_stream(self, epoch: int) -> np.ndarray:
        order = np.random.default_rng([self.seed, epoch]).permutation(self.n_documents)
        lengths = self._lengths[order]
        new_starts = np.cumsum(lengths) - lengths
        # Position j of the new stream reads old position j + (old start - new start) of its document.
        offsets = np.repeat(self._starts[order] - new_starts, lengths)
        return self._tokens[np.arange(len(self._tokens), dtype=np.int64) + offsets]

    def __len__(self) -> int:
        return self.n_windows * self.rows

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for LMStreamDataset of length {len(self)}")
        window, row = divmod(index, self.rows)
        offset = window * self.bptt
        start = row * self.row_len + offset
        length = min(self.bptt, self.row_len - offset)
        labels = torch.from_numpy(self.stream[start + 1 : start + 1 + length])
        return {
            "input_ids": torch.from_numpy(self.stream[start : start + length]),
            "labels": labels,
            "shift_labels": labels,
        }


# --------------------------------------------------------------------------------------------
# Classification batches
# --------------------------------------------------------------------------------------------


@dataclass
class ClassificationCollator:
    """Pad `input_ids` on the right with `pad_token_id` (fastai's `xxpad` = 1) and add the mask.

    Returns `input_ids`, `attention_mask` (1 real, 0 pad) and `labels` (from `labels` or
    `label`); other fields (e.g. `tokens`) are ignored. The model pools with the mask, so the
    padding side does not change its output.
    """

    pad_token_id: int = 1

    def __call__(self, features: Iterable[dict]) -> dict[str, torch.Tensor]:
        features = list(features)
        sequences = [torch.as_tensor(f["input_ids"], dtype=torch.long) for f in features]
        max_len = max(len(s) for s in sequences)
        input_ids = torch.full((len(sequences), max_len), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(sequences), max_len), dtype=torch.long)
        for i, seq in enumerate(sequences):
            input_ids[i, : len(seq)] = seq
            attention_mask[i, : len(seq)] = 1
        batch = {"input_ids": input_ids, "attention_mask": attention_mask}
        key = next((k for k in ("labels", "label") if k in features[0]), None)
        if key is not None:
            batch["labels"] = torch.tensor([_class_id(f[key], i) for i, f in enumerate(features)], dtype=torch.long)
        return batch


def _class_id(label, row: int) -> int:
    """A label as a class id. `int()` would truncate 0.5 to class 0 without a word, or fail on None with a
    TypeError that names no row: anything but an integer is a ValueError naming the row and the value."""
    if isinstance(label, torch.Tensor) and label.numel() == 1 and not label.is_floating_point():
        label = label.item()
    if isinstance(label, (bool, np.bool_)) or not isinstance(label, numbers.Integral):
        raise ValueError(f"Row {row} of the batch has the label {label!r}: labels must be integer class ids")
    return int(label)
