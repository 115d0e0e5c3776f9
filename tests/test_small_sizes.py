"""Sizes at the edges: a corpus smaller than one batch of windows, a training set one document past a
multiple of the batch, an evaluation set that is not a multiple of it, batches of one. Each is checked
against the batches, step counts and metrics worked out by hand (fastai's rules, reference section 5)."""

import re
from pathlib import Path

import pytest
import torch
from datasets import Dataset
from lm_two_processes import BPTT, fit
from torch.nn import functional as F

from awd_lstm_hf import AWDLSTMConfig, AWDLSTMForSequenceClassification
from awd_lstm_hf.data import ClassificationCollator, LMStreamDataset
from awd_lstm_hf.training import (ClassifierTrainer, Stage, classification_accuracy, fit_one_cycle,
                                  require_a_training_batch)

REPO = Path(__file__).resolve().parents[1]
NO_DROPOUT = dict(embed_p=0.0, input_p=0.0, weight_p=0.0, hidden_p=0.0, output_p=0.0, classifier_dropouts=[0.0])


# ---------------------------------------------------------------- LM corpus smaller than rows x bptt


@pytest.mark.parametrize("n_tokens, rows, bptt", [(50, 4, 72), (5, 4, 72), (401, 1, BPTT)])
def test_lm_stream_smaller_than_one_batch_gives_short_windows_not_an_empty_loader(n_tokens, rows, bptt):
    """fastai: bl = (n - 1) // rows tokens a row, ceil(bl / bptt) windows, the last one shorter. 50 tokens
    in 4 rows of bptt 72: one window of 12 tokens a row; 5 tokens: one window of 1; one row: every window."""
    stream = LMStreamDataset([list(range(n_tokens))], rows, bptt)
    row_len = (n_tokens - 1) // rows
    n_windows = -(-row_len // bptt)
    assert (stream.row_len, stream.n_windows, len(stream)) == (row_len, n_windows, n_windows * rows)
    assert len(stream) > 0
    for window in range(n_windows):
        for row in range(rows):
            start = row * row_len + window * bptt
            end = min(start + bptt, (row + 1) * row_len)
            item = stream[window * rows + row]
            assert item["input_ids"].tolist() == list(range(start, end))
            assert item["labels"].tolist() == list(range(start + 1, end + 1))


def test_lm_training_on_a_corpus_smaller_than_one_batch_takes_one_step_an_epoch(tmp_path):
    """13 tokens in 4 rows with bptt 5 (fewer than 4 x 5): rows of 3 tokens, one short window, so one
    optimizer step an epoch on exactly S[0:3], S[3:6], S[6:9], S[9:12]."""
    trainer = fit(tmp_path, 4, train_docs=[list(range(13))], shuffle=False, stage=Stage(epochs=2, lr=1e-2),
                  eval_strategy="no")
    assert trainer.state.global_step == 2
    assert [inputs.tolist() for inputs, _ in trainer.batches] == [torch.arange(12).reshape(4, 3).tolist()] * 2


# ---------------------------------------------------------------- classifier data


def tiny_classifier(seed: int = 0, **overrides) -> AWDLSTMForSequenceClassification:
    torch.manual_seed(seed)
    config = dict(vocab_size=50, embedding_size=8, hidden_size=12, num_hidden_layers=2, bptt=4, max_len=12)
    return AWDLSTMForSequenceClassification(AWDLSTMConfig(**(config | overrides)))


def documents(n: int, seed: int = 0) -> list[list[int]]:
    generator = torch.Generator().manual_seed(seed)
    lengths = torch.randint(3, 20, (n,), generator=generator)
    return [torch.randint(9, 50, (int(length),), generator=generator).tolist() for length in lengths]


def labelled(docs, labels) -> Dataset:
    return Dataset.from_dict({"input_ids": docs, "label": labels, "length": [len(d) for d in docs]})


class RecordingClassifierTrainer(ClassifierTrainer):
    """Records the documents of every training batch."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.batches = []

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if model.training:
            mask = inputs["attention_mask"].bool()
            self.batches.append([ids[row_mask].tolist() for ids, row_mask in zip(inputs["input_ids"], mask)])
        return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)


def train_classifier(tmp_path, model, train, valid=None, batch_size=3, epochs=2,
                     trainer_class=RecordingClassifierTrainer, resume_from_checkpoint=None, **overrides):
    return fit_one_cycle(
        model, Stage(epochs=epochs, lr=1e-2), train, valid, trainer_class=trainer_class,
        resume_from_checkpoint=resume_from_checkpoint,
        output_dir=str(tmp_path), batch_size=batch_size, weight_decay=0.01, seed=0, sampling="group_by_length",
        data_collator=ClassificationCollator(), compute_metrics=classification_accuracy,
        **{"precision": "fp32", "disable_tqdm": True, **overrides},
    )


def test_classifier_training_drops_the_last_incomplete_batch_like_fastai(tmp_path):
    """fastai's training DataLoader has drop_last=True (shuffle): 7 documents in batches of 3 give 2 full
    batches an epoch, never a last batch of one (whose BatchNorm statistics would be those of one row)."""
    docs = documents(7)
    trainer, _ = train_classifier(tmp_path, tiny_classifier(), labelled(docs, [i % 2 for i in range(7)]))
    assert trainer.state.global_step == 2 * 2
    assert [len(batch) for batch in trainer.batches] == [3] * 4
    for epoch in range(2):
        seen = [doc for batch in trainer.batches[2 * epoch : 2 * epoch + 2] for doc in batch]
        assert len({tuple(doc) for doc in seen}) == 6 and all(doc in docs for doc in seen)


@pytest.mark.parametrize("n_documents", [1, 2])
def test_a_training_set_smaller_than_one_batch_is_refused_naming_both_sizes(tmp_path, n_documents):
    """With the last incomplete batch dropped, 1 or 2 documents in batches of 3 leave no batch at all: refused
    with both sizes, not Trainer's "max_steps must be set" about an empty DataLoader."""
    train = labelled(documents(n_documents), [0] * n_documents)
    message = (f"{n_documents} training documents do not fill one batch of per-device batch size 3: the last "
               f"incomplete batch of an epoch is dropped (as fastai does), so there would be nothing to train on. "
               f"Use a per-device batch size of at most {n_documents}, or more training documents.")
    with pytest.raises(ValueError, match=re.escape(message)):
        train_classifier(tmp_path, tiny_classifier(), train, batch_size=3)


def test_a_training_set_of_exactly_one_batch_takes_one_step_an_epoch(tmp_path):
    docs = documents(3)
    trainer, _ = train_classifier(tmp_path, tiny_classifier(), labelled(docs, [0, 1, 0]), batch_size=3)
    assert trainer.state.global_step == 2 and [sorted(batch) for batch in trainer.batches] == [sorted(docs)] * 2


@pytest.mark.parametrize("n_documents, batch_size, processes, smaller", [
    (7, 4, 2, "a batch_size of at most 3, or "),  # each process's share of 7 documents: 3
    (1, 1, 2, ""),  # fewer documents than processes: no batch size helps
    (0, 1, 1, ""),
])
def test_the_batch_check_counts_every_process_and_says_what_helps(n_documents, batch_size, processes, smaller):
    with pytest.raises(ValueError, match=re.escape(f"Use {smaller}more training documents.")) as error:
        require_a_training_batch(n_documents, batch_size, processes)
    per_process = f" x {processes} processes" if processes > 1 else ""
    assert str(error.value).startswith(f"{n_documents} training documents do not fill one batch of batch_size "
                                       f"{batch_size}{per_process}: ")
    # batch_size x processes documents are enough: one batch for each process
    require_a_training_batch(batch_size * processes, batch_size, processes)


@torch.no_grad()
def test_head_batch_of_one_in_training_uses_running_statistics():
    """A training batch of one row has no batch statistics (nn.BatchNorm1d raises): the head normalises it
    with the running ones and leaves them unchanged; two rows use their own (biased) statistics, by hand."""
    model = tiny_classifier(**NO_DROPOUT).train()
    block = model.classifier.blocks[0]
    block.batch_norm.running_mean.uniform_(-1, 1)
    block.batch_norm.running_var.uniform_(0.5, 2)
    running = [t.clone() for t in (block.batch_norm.running_mean, block.batch_norm.running_var)]
    pooled = torch.randn(2, 24)

    one = block(pooled[:1], 0.0)
    bn = block.batch_norm
    by_hand = (pooled[:1] - running[0]) / torch.sqrt(running[1] + bn.eps) * bn.weight + bn.bias
    torch.testing.assert_close(one, F.relu(by_hand @ block.linear.weight.T), rtol=1e-5, atol=1e-6)
    assert torch.equal(bn.running_mean, running[0]) and torch.equal(bn.running_var, running[1])
    assert bn.num_batches_tracked.item() == 0

    two = block(pooled, 0.0)
    mean, var = pooled.mean(0), pooled.var(0, unbiased=False)
    by_hand = (pooled - mean) / torch.sqrt(var + bn.eps) * bn.weight + bn.bias
    torch.testing.assert_close(two, F.relu(by_hand @ block.linear.weight.T), rtol=1e-5, atol=1e-5)
    assert bn.num_batches_tracked.item() == 1


def test_classifier_trains_with_batch_size_one(tmp_path):
    """Batches of one document: every document trained once an epoch, one step each, and the BatchNorm
    running statistics never moved (each batch normalised with them)."""
    docs = documents(3)
    model = tiny_classifier()
    trainer, _ = train_classifier(tmp_path, model, labelled(docs, [0, 1, 0]), batch_size=1)
    assert trainer.state.global_step == 2 * 3
    assert all(len(batch) == 1 for batch in trainer.batches)
    for epoch in range(2):
        assert sorted(batch[0] for batch in trainer.batches[3 * epoch : 3 * epoch + 3]) == sorted(docs)
    for block in model.classifier.blocks:
        assert block.batch_norm.num_batches_tracked.item() == 0
        assert torch.equal(block.batch_norm.running_mean, torch.zeros_like(block.batch_norm.running_mean))


# ---------------------------------------------------------------- evaluation sets not a multiple of the batch


@torch.no_grad()
def per_document_logits(model, docs) -> torch.Tensor:
    model.eval()
    return torch.cat([model(torch.tensor([doc])).logits for doc in docs])


def labels_with_one_miss(predictions: torch.Tensor) -> list[int]:
    """The model's own predictions, except the last document's: accuracy (n - 1) / n when every document
    is counted exactly once; n / n if the last one were dropped, another value if any were repeated."""
    labels = predictions.tolist()
    labels[-1] = 1 - labels[-1]
    return labels


@pytest.mark.parametrize("batch_size", [1, 3, 5, 8])
def test_evaluation_counts_every_document_once(tmp_path, batch_size):
    """7 evaluation documents in batches of 1, 3 (7 = 2 x 3 + 1), 5 or 8 (one incomplete batch, kept, unlike a
    training batch): the end-of-epoch evaluation of training and `predict` see all 7, once each, in order:
    accuracy 6/7 by hand, logits each document's own."""
    docs, train_docs = documents(7, seed=1), documents(6, seed=2)
    model = tiny_classifier()
    # the evaluation at the end of training sees the final weights: build the labels from those
    trained = tiny_classifier()
    train_classifier(tmp_path / "trained", trained, labelled(train_docs, [0, 1] * 3), batch_size=2, epochs=1)
    labels = labels_with_one_miss(per_document_logits(trained, docs).argmax(-1))
    trainer, _ = train_classifier(tmp_path / "run", model, labelled(train_docs, [0, 1] * 3), labelled(docs, labels),
                                  batch_size=2, epochs=1, per_device_eval_batch_size=batch_size)
    evaluations = [entry for entry in trainer.state.log_history if "eval_accuracy" in entry]
    assert [entry["eval_accuracy"] for entry in evaluations] == [pytest.approx(6 / 7, abs=1e-12)]

    prediction = trainer.predict(labelled(docs, labels))
    expected = per_document_logits(model, docs)
    # each predicted row is one document's own logits, with that document's label, every document once
    matches = [int(((expected - row).abs().max(1).values < 1e-5).nonzero()[0]) for row in torch.as_tensor(prediction.predictions)]
    assert sorted(matches) == list(range(7))
    assert prediction.label_ids.tolist() == [labels[index] for index in matches]
    assert prediction.metrics["test_accuracy"] == pytest.approx(6 / 7, abs=1e-12)


def test_classifier_trainer_predicts_in_dataset_order(tmp_path):
    """`predict` after `fit_one_cycle` returns row i for document i (fastai's get_preds reorders its sorted
    validation batches back), not the order of the length-grouped batches."""
    docs, train_docs = documents(7, seed=1), documents(6, seed=2)
    model = tiny_classifier()
    trainer, _ = train_classifier(tmp_path, model, labelled(train_docs, [0, 1] * 3), batch_size=2, epochs=1,
                                  per_device_eval_batch_size=1)
    prediction = trainer.predict(labelled(docs, [0] * 7))
    torch.testing.assert_close(torch.as_tensor(prediction.predictions), per_document_logits(model, docs),
                               rtol=0, atol=1e-5)


def test_train_script_test_evaluation_counts_every_document_once(tmp_path, monkeypatch):
    """train.py's final test evaluation (its `evaluator`) with 7 documents in batches of 3."""
    monkeypatch.syspath_prepend(str(REPO / "scripts"))
    import train

    docs = documents(7, seed=3)
    model = tiny_classifier()
    labels = labels_with_one_miss(per_document_logits(model, docs).argmax(-1))
    metrics = train.evaluator(model, {"clas_batch_size": 3, "precision": "fp32"}, tmp_path, ClassificationCollator()).evaluate(
        labelled(docs, labels), metric_key_prefix="test")
    assert metrics["test_accuracy"] == pytest.approx(6 / 7, abs=1e-12)


# ---------------------------------------------------------------- inference with batch size 1


@torch.no_grad()
def test_classification_pipeline_batch_size_one_equals_larger_batches(tmp_path):
    """The same scores per text whether the pipeline runs them one by one or 4 at a time (padded)."""
    from transformers import pipeline

    from awd_lstm_hf.tokenization_awd_lstm import SPECIAL_TOKENS, AWDLSTMTokenizer

    itos = [*SPECIAL_TOKENS, *(f"w{i}" for i in range(41))]
    model = tiny_classifier()
    model.save_pretrained(tmp_path)
    AWDLSTMTokenizer.from_itos(itos).save_pretrained(tmp_path)
    texts = [" ".join(f"w{(7 * i + j) % 41}" for j in range(n)) for i, n in enumerate((3, 17, 1, 30, 9))]
    classify = pipeline("text-classification", model=str(tmp_path))
    one = classify(texts, batch_size=1, top_k=None)
    four = classify(texts, batch_size=4, top_k=None)
    by_hand = torch.softmax(per_document_logits(model, [classify.tokenizer(t)["input_ids"] for t in texts]), -1)
    for scores_one, scores_four, expected in zip(one, four, by_hand):
        for scores in (scores_one, scores_four):
            got = {item["label"]: item["score"] for item in scores}
            assert [got["neg"], got["pos"]] == pytest.approx(expected.tolist(), abs=1e-5)
