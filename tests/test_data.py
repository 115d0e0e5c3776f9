"""Tests for `awd_lstm_hf.data`: loading, tokenization passes, splits, the LM stream and collation."""

import http.server
import logging
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from accelerate.data_loader import BatchSamplerShard, DataLoaderShard, prepare_data_loader
from datasets import ClassLabel, Dataset, DatasetDict, Features, Value
from datasets.exceptions import DatasetNotFoundError
from huggingface_hub.errors import HfHubHTTPError
from torch.utils.data import BatchSampler, DataLoader, SequentialSampler, default_collate

from awd_lstm_hf import data
from awd_lstm_hf.data import (
    ClassificationCollator,
    LMStreamDataset,
    check_labels,
    class_names,
    classification_splits,
    count_tokens,
    lm_corpus,
    load_imdb,
    numericalize,
    tokenize_corpus,
)
from awd_lstm_hf.tokenization_awd_lstm import SPECIAL_TOKENS, AWDLSTMTokenizer, fastai_tokenize_batch
from tiny_imdb import tiny_reviews, write_imdb_like

REPO_ROOT = Path(__file__).resolve().parents[1]

# fastai_reference.md 5.1: docs of lengths [5, 7, 3, 9], bs=2, seq_len=3.
WORKED_DOCS = [list(range(5)), list(range(100, 107)), list(range(200, 203)), list(range(300, 309))]
WORKED_BATCHES = [
    [[0, 1, 2], [106, 200, 201]],
    [[3, 4, 100], [202, 300, 301]],
    [[101, 102, 103], [302, 303, 304]],
    [[104, 105], [305, 306]],
]


def unique_docs(n_docs=40, seed=0, max_len=30):
    """Documents whose token ids are all distinct, so a token id identifies its stream position."""
    lengths = np.random.default_rng(seed).integers(1, max_len, n_docs)
    bounds = np.concatenate([[0], np.cumsum(lengths)])
    return [list(range(start, end)) for start, end in zip(bounds[:-1], bounds[1:])]


def labelled(n, offset=0):
    features = Features({"text": Value("string"), "label": ClassLabel(names=["neg", "pos"])})
    texts = [f"review {offset + i}" for i in range(n)]
    return Dataset.from_dict({"text": texts, "label": [i % 2 for i in range(n)]}, features=features)


# --------------------------------------------------------------------------------------------
# LMStreamDataset
# --------------------------------------------------------------------------------------------


def test_lm_stream_reproduces_fastai_worked_example():
    ds = LMStreamDataset(WORKED_DOCS, rows=2, bptt=3)
    stream = np.concatenate(WORKED_DOCS)
    assert (ds.row_len, ds.n_windows, len(ds), ds.n_tokens) == (11, 4, 8, 24)
    batches = list(DataLoader(ds, batch_size=2, shuffle=False))
    assert [b["input_ids"].tolist() for b in batches] == WORKED_BATCHES
    for batch in batches:
        # Targets are the next tokens of the stream; labels and shift_labels agree.
        first = batch["input_ids"][:, 0].numpy()
        positions = [np.flatnonzero(stream == tok)[0] for tok in first]
        expected = [stream[p + 1 : p + 1 + batch["input_ids"].shape[1]].tolist() for p in positions]
        assert batch["labels"].tolist() == expected
        assert torch.equal(batch["labels"], batch["shift_labels"])
        assert batch["input_ids"].dtype == batch["labels"].dtype == torch.int64
    # Row r's last target is row r+1's first input (fastai's one-token overlap).
    assert batches[-1]["labels"][0, -1].item() == batches[0]["input_ids"][1, 0].item()


def test_lm_stream_items_are_window_major():
    docs = unique_docs()
    ds = LMStreamDataset(docs, rows=4, bptt=5)
    stream = np.concatenate(docs)
    assert np.array_equal(ds.stream, stream)
    for index in range(len(ds)):
        window, row = divmod(index, 4)
        start = row * ds.row_len + window * 5
        length = min(5, ds.row_len - window * 5)
        item = ds[index]
        assert item["input_ids"].tolist() == stream[start : start + length].tolist()
        assert item["labels"].tolist() == stream[start + 1 : start + 1 + length].tolist()


def test_lm_stream_bounds():
    ds = LMStreamDataset(unique_docs(), rows=3, bptt=4)
    with pytest.raises(IndexError):
        ds[len(ds)]
    with pytest.raises(IndexError):
        ds[-1]
    assert len(list(ds)) == len(ds)  # plain iteration stops at the IndexError


def test_lm_stream_too_small_corpus_raises():
    with pytest.raises(ValueError, match="at least 5"):
        LMStreamDataset([[1, 2], [3, 4]], rows=4, bptt=3)
    ds = LMStreamDataset([[1, 2], [3]], rows=2, bptt=3)  # the smallest valid corpus: one token per row
    assert [ds[i]["input_ids"].tolist() for i in range(len(ds))] == [[1], [2]]
    assert [ds[i]["labels"].tolist() for i in range(len(ds))] == [[2], [3]]


def split_stream(stream, docs):
    """The documents of a stream in their order there, checking each is contiguous and in order."""
    first_token = {doc[0]: i for i, doc in enumerate(docs)}
    order, pos = [], 0
    while pos < len(stream):
        doc_index = first_token[int(stream[pos])]
        doc = docs[doc_index]
        assert stream[pos : pos + len(doc)].tolist() == doc
        order.append(doc_index)
        pos += len(doc)
    return order


def test_lm_stream_set_epoch_shuffles_documents_deterministically():
    docs = unique_docs(n_docs=50)
    ds = LMStreamDataset(docs, rows=4, bptt=6, shuffle=True, seed=3)
    twin = LMStreamDataset(docs, rows=4, bptt=6, shuffle=True, seed=3)
    length = len(ds)
    orders = []
    for epoch in range(3):
        ds.set_epoch(epoch)
        twin.set_epoch(epoch)
        assert np.array_equal(ds.stream, twin.stream)
        order = split_stream(ds.stream, docs)
        assert sorted(order) == list(range(len(docs)))
        orders.append(order)
        assert len(ds) == length
    assert orders[0] != orders[1] != orders[2]
    assert orders[0] != list(range(len(docs)))
    ds.set_epoch(0)
    assert split_stream(ds.stream, docs) == orders[0]
    assert split_stream(LMStreamDataset(docs, 4, 6, shuffle=True, seed=4).stream, docs) != orders[0]


def test_lm_stream_without_shuffle_keeps_order():
    docs = unique_docs()
    ds = LMStreamDataset(docs, rows=2, bptt=5, shuffle=False)
    ds.set_epoch(5)
    assert np.array_equal(ds.stream, np.concatenate(docs))


def test_lm_stream_reads_datasets_column_like_lists():
    docs = unique_docs(n_docs=30)
    column_ds = Dataset.from_dict({"input_ids": docs}).select(list(reversed(range(30))))
    from_column = LMStreamDataset(column_ds["input_ids"], rows=3, bptt=4, shuffle=True, seed=1)
    from_lists = LMStreamDataset(docs[::-1], rows=3, bptt=4, shuffle=True, seed=1)
    assert np.array_equal(from_column.stream, from_lists.stream)
    assert from_column.stream.dtype == np.int64


@pytest.mark.parametrize("split_batches", [False, True])
def test_lm_stream_shards_give_each_process_fixed_contiguous_rows(split_batches):
    world_size, per_device = 2, 3
    rows = per_device * world_size
    docs = unique_docs(n_docs=60, seed=1)
    ds = LMStreamDataset(docs, rows=rows, bptt=7)
    stream, bl = ds.stream, ds.row_len
    seen = []
    for process in range(world_size):
        sampler_bs = rows if split_batches else per_device
        shard = BatchSamplerShard(
            BatchSampler(SequentialSampler(ds), sampler_bs, drop_last=False),
            num_processes=world_size,
            process_index=process,
            split_batches=split_batches,
        )
        batches = [default_collate([ds[i] for i in indices]) for indices in shard]
        assert len(batches) == ds.n_windows
        inputs = torch.cat([b["input_ids"] for b in batches], dim=1)
        labels = torch.cat([b["labels"] for b in batches], dim=1)
        for j in range(per_device):
            # Consecutive batches continue each row: process p owns rows [p*b, (p+1)*b) throughout.
            row = process * per_device + j
            assert inputs[j].tolist() == stream[row * bl : (row + 1) * bl].tolist()
            assert labels[j].tolist() == stream[row * bl + 1 : (row + 1) * bl + 1].tolist()
        seen.append(set(inputs.flatten().tolist()))
    corpus = rows * bl
    assert not seen[0] & seen[1]
    assert seen[0] | seen[1] == set(stream[:corpus].tolist())
    assert len(stream) - 1 - corpus < rows  # only fastai's leftover (< rows tokens) is dropped


@pytest.mark.parametrize("num_processes", [1, 2])
def test_accelerate_dataloader_calls_set_epoch_on_the_dataset(num_processes):
    docs = unique_docs(n_docs=50)
    ds = LMStreamDataset(docs, rows=2 * num_processes, bptt=8, shuffle=True, seed=0)
    loader = prepare_data_loader(
        DataLoader(ds, batch_size=2, sampler=SequentialSampler(ds)),
        num_processes=num_processes,
        process_index=num_processes - 1,
        put_on_device=False,
    )
    assert isinstance(loader, DataLoaderShard)
    epochs = []
    for epoch in range(2):
        epochs.append(torch.cat([b["input_ids"] for b in loader], dim=1))
        assert ds.epoch == epoch  # DataLoaderShard.__iter__ called ds.set_epoch(epoch)
    assert not torch.equal(*epochs)


# --------------------------------------------------------------------------------------------
# Tokenization, counting, numericalization (synthetic)
# --------------------------------------------------------------------------------------------


def test_tokenize_corpus_names_the_row_with_none_text():
    ds = Dataset.from_dict({"text": ["fine", "also fine", None, "ok"], "label": [0, 1, 0, 1]})
    with pytest.raises(ValueError, match="Row 2"):
        tokenize_corpus(ds, batch_size=2)


def test_tokenize_corpus_keeps_label_and_handles_empty_text():
    ds = Dataset.from_dict({"text": ["", "Hello world"], "label": [1, 0]})
    out = tokenize_corpus(ds)
    assert out.column_names == ["label", "tokens"]
    assert out["tokens"] == [["xxbos"], ["xxbos", "xxmaj", "hello", "world"]]
    assert out["label"] == [1, 0]


def test_count_tokens_counts_all_documents_in_order():
    first = Dataset.from_dict({"tokens": [["xxbos", "b", "a"], ["xxbos", "a", "c"]]})
    second = Dataset.from_dict({"tokens": [["xxbos", "d", "b"]]})
    counts = count_tokens(DatasetDict(train=first, valid=second))
    assert counts == Counter({"xxbos": 3, "b": 2, "a": 2, "c": 1, "d": 1})
    assert list(counts) == ["xxbos", "b", "a", "c", "d"]  # insertion order decides vocab ties
    assert count_tokens(first) == Counter({"xxbos": 2, "a": 2, "b": 1, "c": 1})


def test_numericalize_maps_unknown_tokens_to_zero():
    itos = list(SPECIAL_TOKENS) + ["the", "movie"] + ["xxfake"] * 5
    tokenizer = AWDLSTMTokenizer.from_itos(itos)
    ds = Dataset.from_dict({"tokens": [["xxbos", "the", "movie"], ["xxbos", "zebra", "xxfake", "xxmaj"]]})
    out = numericalize(ds, tokenizer)
    assert out["input_ids"] == [[2, 9, 10], [2, 0, 0, 8]]
    assert out["input_ids"][0] == tokenizer.convert_tokens_to_ids(["xxbos", "the", "movie"])


# --------------------------------------------------------------------------------------------
# Splits (synthetic)
# --------------------------------------------------------------------------------------------


def test_lm_corpus_uses_all_splits_and_holds_out_valid_pct():
    dsdict = DatasetDict(train=labelled(40), test=labelled(30, 100), unsupervised=labelled(30, 200))
    train, valid = lm_corpus(dsdict, seed=1)
    assert (len(train), len(valid)) == (90, 10)
    assert "label" not in train.column_names
    texts = set(train["text"]) | set(valid["text"])
    assert len(texts) == 100 and not set(train["text"]) & set(valid["text"])
    train2, valid2 = lm_corpus(dsdict, max_docs=50, seed=1)
    assert (len(train2), len(valid2)) == (45, 5)
    assert lm_corpus(dsdict, max_docs=50, seed=1)[1]["text"] == valid2["text"]
    with pytest.raises(ValueError, match="valid_pct"):
        lm_corpus(dsdict, valid_pct=0)


def test_classification_splits_sizes_and_balance():
    dsdict = DatasetDict(train=labelled(100), test=labelled(60, 1000))
    splits = classification_splits(dsdict, train_docs=40, test_docs=20, valid_docs=10, seed=0)
    assert [len(splits[k]) for k in ("train", "valid", "test")] == [40, 10, 20]
    assert not set(splits["train"]["text"]) & set(splits["valid"]["text"])
    for key, n in (("train", 40), ("valid", 10), ("test", 20)):
        assert sorted(Counter(splits[key]["label"]).values()) == [n // 2, n // 2]
    full = classification_splits(dsdict)
    assert full["valid"] is None and len(full["train"]) == 100 and len(full["test"]) == 60


# --------------------------------------------------------------------------------------------
# Checks of the loaded splits (synthetic): named by split and row before anything is tokenized
# --------------------------------------------------------------------------------------------

NEG_POS = Features({"text": Value("string"), "label": ClassLabel(names=["neg", "pos"])})
SPLIT_SIZES = {"train": 12, "test": 8, "unsupervised": 6}
POSITIONS = ("first", "middle", "last")


def imdb_like(features=NEG_POS) -> DatasetDict:
    """IMDB's splits in small: train and test labelled neg/pos alternately, unsupervised -1 (as IMDB's)."""
    return DatasetDict({split: Dataset.from_dict(
        {"text": [f"{split} review {i}" for i in range(n)],
         "label": [-1 if split == "unsupervised" else i % 2 for i in range(n)]}, features=features)
        for split, n in SPLIT_SIZES.items()})


def row_at(split: str, position: str) -> int:
    return {"first": 0, "middle": SPLIT_SIZES[split] // 2, "last": SPLIT_SIZES[split] - 1}[position]


def with_column(dsdict: DatasetDict, split: str, name: str, row: int, value, features=NEG_POS) -> DatasetDict:
    """A copy of DSDICT whose SPLIT has VALUE in column NAME at ROW."""
    columns = dsdict[split].to_dict()
    columns[name][row] = value
    return DatasetDict({**dsdict, split: Dataset.from_dict(columns, features=features)})


@pytest.mark.parametrize("position", POSITIONS)
@pytest.mark.parametrize("split", list(SPLIT_SIZES))
def test_a_missing_text_is_named_by_its_split_and_row_on_every_path(split, position):
    """lm_corpus mixes and shuffles the splits (the row there is another number) and a subsample may leave
    the row out: the error names the split and the row as loaded, before anything is sampled or tokenized."""
    row = row_at(split, position)
    dsdict = with_column(imdb_like(), split, "text", row, None)
    message = re.escape(f"split '{split}', row {row}: text is None (1 row(s) of the split have no text)")
    for max_docs in (None, 3):
        with pytest.raises(ValueError, match=message):
            lm_corpus(dsdict, max_docs=max_docs, seed=0)
    if split == "unsupervised":  # the classifier never reads it
        assert len(classification_splits(dsdict, train_docs=4)["train"]) == 4
    else:
        with pytest.raises(ValueError, match=message):
            classification_splits(dsdict, train_docs=4, test_docs=2)
    # the fix the message suggests works
    fixed = DatasetDict({**dsdict, split: dsdict[split].filter(lambda r: r["text"] is not None)})
    assert sum(map(len, lm_corpus(fixed))) == sum(SPLIT_SIZES.values()) - 1


def test_several_missing_texts_name_the_first_and_count_them():
    dsdict = imdb_like()
    for row in (9, 3, 11):
        dsdict = with_column(dsdict, "train", "text", row, None)
    with pytest.raises(ValueError, match=re.escape("split 'train', row 3: text is None (3 row(s) of the split")):
        lm_corpus(dsdict)


@pytest.mark.parametrize("value", [2, 7, -1, None])
@pytest.mark.parametrize("position", POSITIONS)
@pytest.mark.parametrize("split", ["train", "test"])
def test_a_label_outside_the_classes_is_named_by_its_split_and_row(split, position, value):
    """A ClassLabel holds -1 (IMDB's unsupervised label) and None; 2 or 7 only come in plain integers. The
    classes are the train split's neg/pos in every case; the unsupervised split's -1 labels are never read."""
    row = row_at(split, position)
    storable = value in (-1, None)
    dsdict = with_column(imdb_like(), split, "label", row, value, features=NEG_POS if storable else None)
    message = re.escape(f"split '{split}', row {row}: label {value} is not one of the classes {{0: 'neg', 1: 'pos'}}")
    with pytest.raises(ValueError, match=message):
        check_labels(dsdict, ["neg", "pos"])
    if storable or split == "test":  # (plain integers in train would define the classes themselves)
        with pytest.raises(ValueError, match=message):
            classification_splits(dsdict, train_docs=4)


def test_classes_are_the_train_splits_classlabel_names_in_id_order():
    features = Features({"text": Value("string"), "label": ClassLabel(names=["positive", "negative", "mixed"])})
    assert class_names(imdb_like(features)) == ["positive", "negative", "mixed"]
    assert class_names(imdb_like()) == ["neg", "pos"]


@pytest.mark.parametrize("labels, classes", [([0, 1, 1, 0], 2), ([2, 0, 1, 0], 3), ([0, 3, 0, 0], 4), ([-1, -1, 0, 0], 1)])
def test_a_plain_integer_label_column_has_the_classes_0_to_its_largest_train_label(labels, classes):
    dsdict = DatasetDict(train=Dataset.from_dict({"text": ["a", "b", "c", "d"], "label": labels}))
    assert class_names(dsdict) == [f"LABEL_{i}" for i in range(classes)]


def test_labels_that_are_no_class_ids_are_refused():
    words = DatasetDict(train=Dataset.from_dict({"text": ["a", "b"], "label": ["pos", "neg"]}))
    with pytest.raises(ValueError, match=re.escape("split 'train' needs a ClassLabel or integer 'label' column, "
                                                   "not Value('string')")):
        class_names(words)
    fractions = DatasetDict({**imdb_like(), "test": Dataset.from_dict({"text": ["a"], "label": [0.5]})})
    with pytest.raises(ValueError, match=re.escape("split 'test' needs a ClassLabel or integer 'label' column, not "
                                                   "Value('float64')")):
        classification_splits(fractions)
    unlabelled = DatasetDict({**imdb_like(), "test": Dataset.from_dict({"text": ["a"]})})
    with pytest.raises(ValueError, match=re.escape("split 'test' needs a ClassLabel or integer 'label' column, not None")):
        classification_splits(unlabelled)
    swapped = Features({"text": Value("string"), "label": ClassLabel(names=["pos", "neg"])})
    other_names = DatasetDict({**imdb_like(), "test": imdb_like(swapped)["test"]})
    with pytest.raises(ValueError, match=re.escape("split 'test' names its classes ['pos', 'neg'], but the classes "
                                                   "are ['neg', 'pos']")):
        classification_splits(other_names)


# --------------------------------------------------------------------------------------------
# Collation
# --------------------------------------------------------------------------------------------


def test_classification_collator_pads_right_with_mask():
    features = [
        {"input_ids": [5, 6, 7], "label": 1, "tokens": ["a", "b", "c"]},
        {"input_ids": [8], "label": 0, "tokens": ["d"]},
    ]
    batch = ClassificationCollator(pad_token_id=1)(features)
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 1, 1]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch["labels"].tolist() == [1, 0]
    assert set(batch) == {"input_ids", "attention_mask", "labels"}


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------


def _rewrite(folder: Path, seed: int, *, anew: bool) -> dict:
    """Write a tiny IMDB folder at FOLDER (ANEW: deleted first, as another dataset put at the same path);
    returns what each split holds."""
    if anew:
        shutil.rmtree(folder)
    (folder / "plain_text").mkdir(parents=True, exist_ok=True)
    reviews = tiny_reviews(seed)
    write_imdb_like(folder, reviews)
    return reviews


@pytest.mark.parametrize("anew", [False, True])
def test_load_imdb_reads_a_changed_local_folder_afresh(tmp_path, monkeypatch, anew):
    """datasets caches a local folder by its name and file patterns only: a folder rewritten in place, or
    another one at the same path, loaded the first data from the cache. Each load must give what the
    files hold now, and an unchanged folder is served from its cache (the same cache files)."""
    import datasets.config

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "datasets_cache")
    folder = tmp_path / "imdb"
    for seed in (0, 1, 2):
        reviews = _rewrite(folder, seed, anew=anew and seed > 0)
        first, again = load_imdb(folder), load_imdb(folder)
        for split, (texts, labels) in reviews.items():
            assert first[split]["text"] == texts and first[split]["label"] == labels
            assert again[split].cache_files == first[split].cache_files


def test_load_imdb_falls_back_to_mirror_when_hub_unreachable(tmp_path, monkeypatch, caplog):
    mirror = tmp_path / "shared" / "data" / "imdb"
    mirror.mkdir(parents=True)
    (tmp_path / "repo").mkdir()
    monkeypatch.chdir(tmp_path / "repo")
    calls = []

    def fake_load_dataset(path, **kwargs):
        calls.append(path)
        if not Path(path).is_dir():
            raise ConnectionError(f"Couldn't reach {path!r} on the Hub (OfflineModeIsEnabled)")
        return DatasetDict(train=labelled(2))

    monkeypatch.setattr(data, "load_dataset", fake_load_dataset)
    with caplog.at_level(logging.WARNING, logger="awd_lstm_hf.data"):
        dsdict = load_imdb()
    assert calls == [data.IMDB_HUB_ID, str(mirror.resolve())]
    assert "local IMDB mirror" in caplog.text and str(mirror.resolve()) in caplog.text
    assert len(dsdict["train"]) == 2
    with pytest.raises(ConnectionError):  # no mirror fallback for other datasets
        load_imdb("someone/other-dataset")


class StandInHub:
    """A local HTTP server in the Hub's place (datasets' endpoint points at it) answering every request
    with one status and headers: a proxy's or gateway's error, a captive portal's page, or the Hub's own
    "no such repository" / "gated" / "bad token" answers."""

    def __init__(self, status: int, headers: dict[str, str]):
        reply = (status, headers)

        class Handler(http.server.BaseHTTPRequestHandler):
            def answer(self):
                body = b"<html>not the Hub</html>"
                self.send_response(reply[0])
                for name, value in {**reply[1], "Content-Length": str(len(body))}.items():
                    self.send_header(name, value)
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            do_GET = do_HEAD = do_POST = answer

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def closed_port_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}"  # nothing listens there once closed


HUB_ANSWERS = {  # name: (status, headers) of the stand-in; None: nothing listening
    "gateway error 502": (502, {}),
    "proxy authentication 407": (407, {}),
    "service unavailable 503": (503, {}),
    "captive portal page (not served by the Hub)": (200, {"Content-Type": "text/html"}),
    "connection refused": None,
    "no such dataset 404": (404, {"X-Error-Code": "RepoNotFound"}),
    "gated dataset": (403, {"X-Error-Code": "GatedRepo"}),
    "bad token 401": (401, {}),
}
UNREACHABLE = ["gateway error 502", "proxy authentication 407", "service unavailable 503",
               "captive portal page (not served by the Hub)", "connection refused"]


@pytest.fixture
def hub_stand_in(tmp_path, monkeypatch):
    """`load_dataset` online (the test session runs offline) against a stand-in Hub, with empty caches, no
    retry waits, and a small IMDB-like mirror to fall back to. Returns a function that sets the answer."""
    import datasets.config
    import huggingface_hub.constants

    mirror = tmp_path / "mirror"
    mirror.mkdir()
    (mirror / "train.csv").write_text("text,label\ngood film,1\nbad film,0\n")
    monkeypatch.setattr(data, "_mirror_candidates", lambda: [mirror])
    for module, name in ((datasets.config, "HF_HUB_OFFLINE"), (huggingface_hub.constants, "HF_HUB_OFFLINE")):
        monkeypatch.setattr(module, name, False)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "datasets_cache")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub_cache"))
    monkeypatch.setattr(time, "sleep", lambda seconds: None)  # huggingface_hub's retry back-off
    servers = []

    def answer(name: str) -> None:
        if HUB_ANSWERS[name] is None:
            url = closed_port_url()
        else:
            servers.append(StandInHub(*HUB_ANSWERS[name]))
            url = servers[-1].url
        monkeypatch.setattr(datasets.config, "HF_ENDPOINT", url)

    yield answer
    for server in servers:
        server.close()


@pytest.mark.parametrize("answer", UNREACHABLE)
def test_load_imdb_falls_back_when_the_hub_cannot_be_reached(answer, hub_stand_in, caplog):
    hub_stand_in(answer)
    with caplog.at_level(logging.WARNING, logger="awd_lstm_hf.data"):
        assert load_imdb()["train"]["text"] == ["good film", "bad film"]
    assert "Could not reach the Hugging Face Hub for 'stanfordnlp/imdb'" in caplog.text and "mirror" in caplog.text
    with pytest.raises(Exception) as error:  # another dataset's name gets no mirror: the error itself
        load_imdb("someone/other-dataset")
    assert data.hub_unreachable(error.value)


@pytest.mark.parametrize("answer", ["no such dataset 404", "gated dataset", "bad token 401"])
def test_load_imdb_raises_what_a_reachable_hub_answers(answer, hub_stand_in, caplog):
    hub_stand_in(answer)
    expected = HfHubHTTPError if answer == "bad token 401" else DatasetNotFoundError
    for name in (data.IMDB_HUB_ID, "stanfordnlp/imbd"):  # also a misspelt name
        with pytest.raises(expected) as error:
            load_imdb(name)
        assert not data.hub_unreachable(error.value)
    if answer == "gated dataset":
        assert "gated" in str(error.value)
    assert "mirror" not in caplog.text


def test_load_imdb_falls_back_in_offline_mode(hub_stand_in, monkeypatch):
    """HF_HUB_OFFLINE / HF_DATASETS_OFFLINE (as this test session runs): nothing is requested."""
    import datasets.config
    import huggingface_hub.constants

    hub_stand_in("bad token 401")  # would be a real error, were it asked
    for offline in ((True, False), (False, True)):
        monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", offline[0])
        monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", offline[1])
        assert load_imdb()["train"]["label"] == [1, 0]


def test_load_imdb_requires_a_text_column(tmp_path):
    folder = tmp_path / "reviews"
    folder.mkdir()
    (folder / "train.csv").write_text("review,label\ngood,1\nbad,0\n")
    with pytest.raises(ValueError, match="no 'text' column"):
        load_imdb(folder)


# --------------------------------------------------------------------------------------------
# Integration on the local IMDB mirror
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def imdb(imdb_path):
    return load_imdb(imdb_path)


@pytest.mark.integration
def test_load_imdb_mirror_splits(imdb):
    assert {k: len(v) for k, v in imdb.items()} == {"train": 25000, "test": 25000, "unsupervised": 50000}
    assert imdb["train"].features["label"].names == ["neg", "pos"]


@pytest.mark.integration
def test_load_imdb_offline_uses_mirror_beside_cwd(imdb_path, tmp_path):
    (tmp_path / "shared" / "data").mkdir(parents=True)
    (tmp_path / "shared" / "data" / "imdb").symlink_to(imdb_path)
    (tmp_path / "repo").mkdir()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO_ROOT / "src")}
    code = "from awd_lstm_hf.data import load_imdb; print(load_imdb().num_rows)"
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path / "repo", env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
    assert "{'train': 25000, 'test': 25000, 'unsupervised': 50000}" in result.stdout
    assert "local IMDB mirror" in result.stderr


@pytest.mark.integration
def test_tokenize_corpus_matches_direct_call_and_is_cached(imdb, monkeypatch):
    sample = imdb["train"].select(range(12400, 12600))  # straddles the neg/pos boundary
    tokenized = tokenize_corpus(sample, num_proc=2)
    assert tokenized["tokens"] == fastai_tokenize_batch(sample["text"])
    assert tokenized["label"] == sample["label"]
    assert tokenized.cache_files

    def must_not_run(texts):
        raise AssertionError("tokenization recomputed instead of read from the datasets cache")

    monkeypatch.setattr(data, "fastai_tokenize_batch", must_not_run)
    again = tokenize_corpus(sample, num_proc=2)
    assert again.cache_files == tokenized.cache_files
    assert again["tokens"] == tokenized["tokens"]


@pytest.mark.integration
def test_lm_corpus_on_mirror_slice(imdb):
    sizes = {"train": 150, "test": 150, "unsupervised": 200}
    small = DatasetDict({name: imdb[name].select(range(n)) for name, n in sizes.items()})
    train, valid = lm_corpus(small)
    assert (len(train), len(valid)) == (450, 50)
    assert train.column_names == ["text"]
    train, valid = lm_corpus(imdb, max_docs=500, seed=2)
    assert (len(train), len(valid)) == (450, 50)


@pytest.mark.integration
def test_classification_splits_on_mirror(imdb):
    splits = classification_splits(imdb, train_docs=200, test_docs=100, valid_docs=50, seed=0)
    assert [len(splits[k]) for k in ("train", "valid", "test")] == [200, 50, 100]
    for key, n in (("train", 200), ("valid", 50), ("test", 100)):
        counts = Counter(splits[key]["label"])
        assert set(counts) == {0, 1} and abs(counts[0] - counts[1]) <= 1
    assert not set(splits["train"]["text"]) & set(splits["valid"]["text"])


@pytest.mark.integration
def test_mirror_pipeline_end_to_end(imdb):
    tokenized = tokenize_corpus(imdb["test"].select(range(0, 25000, 250)))
    tokenizer = AWDLSTMTokenizer.from_counts(count_tokens(tokenized))
    ids = numericalize(tokenized, tokenizer)
    first = ids[0]
    assert first["input_ids"] == tokenizer.convert_tokens_to_ids(first["tokens"])
    lm = LMStreamDataset(ids["input_ids"], rows=4, bptt=20, shuffle=True)
    assert lm.n_tokens == sum(len(t) for t in tokenized["tokens"])
    assert lm[0]["input_ids"].shape == (20,)
