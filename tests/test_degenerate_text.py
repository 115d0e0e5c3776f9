"""Degenerate text through the tokenizer, both pipelines, the data path and a training step: every case has
a defined result, checked against an independent computation, and bad rows are errors that name them.

Defined results:
- empty or whitespace-only text is the document 'xxbos' alone (fastai's rules strip it, then add
  'xxbos'): it classifies as the model's output on [xxbos], and generates what [xxbos] generates;
- a word missing from the vocabulary (control characters, NUL, emoji, combining marks, a 100,000-character
  word) is 'xxunk' (id 0), as in fastai; a lone surrogate (not encodable as UTF-8) becomes U+FFFD first;
- special-token strings in the text are words like any other (fastai never splits on them): a literal
  'xxpad' is a real token with attention mask 1, never padding.
"""

import json
import math
import re
import subprocess
import sys
from collections import Counter

import pytest
import torch
import torch.nn.functional as F
from datasets import ClassLabel, Dataset, DatasetDict, Features, Value
from tiny_models import greedy_by_hand, tiny_classifier, tiny_lm, tiny_tokenizer
from transformers import pipeline

from awd_lstm_hf.data import (
    ClassificationCollator,
    LMStreamDataset,
    classification_splits,
    lm_corpus,
    numericalize,
    tokenize_corpus,
)
from awd_lstm_hf.tokenization_awd_lstm import fastai_tokenize_batch

TOL = 1e-5
UNK, PAD, BOS = 0, 1, 2

# text -> the ids fastai gives it with the tiny vocabulary (worked out by hand from the rules above)
DEGENERATE = {
    "": [BOS],
    "   \t\n ": [BOS],
    "a\x00b": [BOS, UNK],  # NUL inside a word: one unknown word
    "\x00": [BOS, UNK],
    "\x01\x07\x1b\x7f": [BOS, UNK],
    "good \ud800 movie": [BOS, 12, UNK, 10],  # the lone surrogate becomes U+FFFD, an unknown word
    "\udfff": [BOS, UNK],
    "👍🏽 good": [BOS, UNK, UNK, 12],  # spaCy splits the emoji from its skin-tone modifier
    "e\u0301 good": [BOS, UNK, 12],  # e + combining acute accent: one word
    "xxbos xxunk xxpad": [BOS, BOS, UNK, PAD],
    "movie " + "ab" * 50_000: [BOS, 10, UNK],  # a single 100,000-character word
}


@pytest.fixture(scope="module")
def tokenizer():
    return tiny_tokenizer()


def probabilities_by_hand(model, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].softmax(-1)


# ---------------------------------------------------------------------------------------------- tokenizer


@pytest.mark.parametrize("text", list(DEGENERATE))
def test_tokenizer_gives_the_defined_ids(tokenizer, text):
    assert tokenizer(text)["input_ids"] == DEGENERATE[text]
    assert tokenizer(text)["attention_mask"] == [1] * len(DEGENERATE[text])  # a literal xxpad is a token


def test_a_run_of_100000_letters_is_fastais_repeat_marker(tokenizer):
    """fastai's rule writes any character repeated 3+ times as 'xxrep n c': the count is a token too."""
    assert fastai_tokenize_batch(["a" * 100_000])[0] == ["xxbos", "xxrep", "100000", "a"]
    assert tokenizer("a" * 100_000)["input_ids"] == [BOS, 5, UNK, 21]  # the count '100000' is not in the vocabulary


def test_a_million_character_review_gives_every_token():
    """A 1,000,000-character review gives the tokens of its sentences, worked out by hand: nothing is cut
    (spaCy's 1,000,000-character limit is the pipeline's, not the tokenizer's), merged or lost."""
    sentences = {
        "The movie was GOOD, and I loved it. ": ["xxmaj", "the", "movie", "was", "xxup", "good", ",", "and", "i",
                                                  "loved", "it", "."],
        "Not a film!!! ": ["xxmaj", "not", "a", "film", "xxrep", "3", "!"],
        "9/10<br /><br />": ["9", "/", "10", "\n\n"],
    }
    text, expected = "", ["xxbos"]
    while len(text) < 1_000_000:
        for sentence, tokens in sentences.items():
            text += sentence
            expected += tokens
    tokens = fastai_tokenize_batch([text])[0]
    assert expected[-1] == "\n\n"  # the text ends with a line break, which fastai strips
    assert tokens == expected[:-1]


def test_long_chunks_that_fastais_case_rules_reject_do_not_hang():
    """fastai's all-caps regex backtracks quadratically on a chunk of capitals ending in a lowercase letter
    (a DNA string, a shout with a plural 's'): 200,000 characters took about an hour. Each chunk below is one
    token, lowered without a case marker (neither case rule matches it, the repeat rules find no run of 3).
    Run in a subprocess, since a regex cannot be interrupted."""
    cases = {
        "AB" * 100_000 + "s": ["xxbos", "ab" * 100_000 + "s"],
        "GREAT " + "AB" * 100_000 + "s NOW": ["xxbos", "xxup", "great", "ab" * 100_000 + "s", "xxup", "now"],
        "A" + "B1" * 100_000 + "c": ["xxbos", "a" + "b1" * 100_000 + "c"],  # digits are in fastai's capitals chunk
        "A" + "bc" * 100_000 + "D": ["xxbos", "a" + "bc" * 100_000 + "d"],  # the capitalised-word rule's worst case
    }
    code = ("import json, sys; from awd_lstm_hf.tokenization_awd_lstm import fastai_tokenize_batch; "
            "print(json.dumps(fastai_tokenize_batch(json.load(sys.stdin))))")
    run = subprocess.run([sys.executable, "-c", code], input=json.dumps(list(cases)), capture_output=True,
                         text=True, timeout=60)
    assert run.returncode == 0, run.stderr[-3000:]
    assert json.loads(run.stdout) == list(cases.values())


# ---------------------------------------------------------------------------------------------- pipelines


def test_classification_pipeline_on_degenerate_text_equals_the_model_on_the_defined_ids(tokenizer):
    model = tiny_classifier(tokenizer)
    classify = pipeline("text-classification", model=model, tokenizer=tokenizer)
    texts = list(DEGENERATE)
    for batch_size in (1, len(texts)):
        results = classify(texts, top_k=None, batch_size=batch_size)
        for text, scores in zip(texts, results):
            expected = probabilities_by_hand(model, DEGENERATE[text])
            got = {s["label"]: s["score"] for s in scores}
            assert [got[model.config.id2label[i]] for i in range(2)] == pytest.approx(expected.tolist(), abs=TOL), text
    # the empty review is the document [xxbos] alone
    empty = {s["label"]: s["score"] for s in classify("", top_k=None)}
    assert empty[model.config.id2label[0]] == pytest.approx(probabilities_by_hand(model, [BOS])[0].item(), abs=TOL)


def test_generation_pipeline_on_degenerate_prompts_continues_the_defined_ids(tokenizer):
    model = tiny_lm(tokenizer, seed=3)
    generate = pipeline("text-generation", model=model, tokenizer=tokenizer)
    for text, ids in DEGENERATE.items():
        out = generate(text, max_new_tokens=5, do_sample=False, return_tensors=True)
        expected = greedy_by_hand(model, ids, 5)
        assert out[0]["generated_token_ids"] == expected, text
        shown = generate(text, max_new_tokens=5, do_sample=False)[0]["generated_text"]
        assert shown == text + tokenizer.decode(expected[len(ids) :], skip_special_tokens=True)


# ---------------------------------------------------------------------------------------------- data path


def test_tokenize_corpus_names_the_row_without_text_in_any_batch():
    texts = ["fine", "", "ok", "   ", "good", None, "bad"]
    for batch_size in (1, 2, 4, 1000):
        with pytest.raises(ValueError, match="Row 5 has no text"):
            tokenize_corpus(Dataset.from_dict({"text": texts, "label": [0, 1] * 3 + [0]}), batch_size=batch_size)


def test_data_path_keeps_degenerate_documents_with_their_defined_ids(tokenizer):
    # Arrow stores UTF-8: a lone surrogate cannot be put in a dataset at all (datasets refuses it).
    texts = [t for t in DEGENERATE if not any("\ud800" <= c <= "\udfff" for c in t)]
    dataset = Dataset.from_dict({"text": texts, "label": [i % 2 for i in range(len(texts))]})
    ids = numericalize(tokenize_corpus(dataset), tokenizer)
    assert ids["input_ids"] == [DEGENERATE[t] for t in texts]
    assert ids["label"] == [i % 2 for i in range(len(texts))]

    # the LM stream is every document's ids in order, empty documents included (one 'xxbos' each)
    stream = LMStreamDataset(ids["input_ids"], rows=2, bptt=3)
    flat = [i for doc in ids["input_ids"] for i in doc]
    assert stream.n_tokens == len(flat) and stream.n_documents == len(texts)
    rows = [torch.cat([stream[w * 2 + r]["input_ids"] for w in range(stream.n_windows)]).tolist() for r in range(2)]
    assert rows == [flat[: stream.row_len], flat[stream.row_len : 2 * stream.row_len]]

    # the collator pads the one-token documents on the right; the literal xxpad (id 1) keeps mask 1
    batch = ClassificationCollator(pad_token_id=PAD)([ids[0], ids[-2], ids[-1]])
    assert batch["input_ids"].tolist() == [[2, 1, 1, 1], [2, 2, 0, 1], [2, 10, 0, 1]]
    assert batch["attention_mask"].tolist() == [[1, 0, 0, 0], [1, 1, 1, 1], [1, 1, 1, 0]]


def test_splits_of_a_corpus_of_empty_reviews():
    features = Features({"text": Value("string"), "label": ClassLabel(names=["neg", "pos"])})
    dsdict = DatasetDict(
        train=Dataset.from_dict({"text": [""] * 10, "label": [0, 1] * 5}, features=features),
        test=Dataset.from_dict({"text": [" "] * 4, "label": [0, 1] * 2}, features=features),
    )
    train, valid = lm_corpus(dsdict, valid_pct=0.25)
    assert (len(train), len(valid)) == (10, 4)  # 14 documents, 25% held out (rounded up by datasets)
    splits = classification_splits(dsdict, train_docs=4, valid_docs=2)
    assert sorted(Counter(splits["train"]["label"]).values()) == [2, 2]
    assert numericalize(tokenize_corpus(train), tiny_tokenizer())["input_ids"] == [[BOS]] * 10


@pytest.mark.parametrize("label", [2, -1, 7, 0.5, "pos", None])
def test_labels_outside_the_label_set_are_errors_naming_the_value(tokenizer, label):
    """IMDB's unsupervised split has label -1; a float or a string label must not be truncated or crash
    deep inside torch: the collator or the model says which value is wrong."""
    model = tiny_classifier(tokenizer)
    features = [{"input_ids": [2, 10, 11], "label": 1}, {"input_ids": [2, 12], "label": label}]
    with pytest.raises(ValueError, match=re.escape(repr(label) if not isinstance(label, int) else f"{[1, label]}")):
        batch = ClassificationCollator(pad_token_id=PAD)(features)
        model(**batch)


# ---------------------------------------------------------------------------------------------- training


def test_training_step_on_degenerate_documents_is_finite_and_equals_the_loss_by_hand(tokenizer):
    """A classifier step on a batch holding an empty review, a NUL, a literal 'xxpad' and a long review:
    the loss is cross-entropy of the logits (recomputed with the same dropout masks), every gradient finite."""
    model = tiny_classifier(tokenizer).train()
    texts = ["", "\x00", "xxbos xxunk xxpad", "the movie was good . " * 20]
    features = [{"input_ids": tokenizer(t)["input_ids"], "label": i % 2} for i, t in enumerate(texts)]
    batch = ClassificationCollator(pad_token_id=PAD)(features)
    torch.manual_seed(5)
    out = model(**batch)
    out.loss.backward()
    assert math.isfinite(out.loss.item())
    assert out.loss.item() == pytest.approx(F.cross_entropy(out.logits, batch["labels"]).item(), abs=TOL)
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)

    lm = tiny_lm(tokenizer).train()
    stream = LMStreamDataset([[2], [2, 0], [2, 2, 0, 1], [2] + [9, 10, 11, 12, 22] * 10], rows=2, bptt=4)
    item = [stream[i] for i in range(2)]
    inputs = torch.stack([x["input_ids"] for x in item])
    targets = torch.stack([x["shift_labels"] for x in item])
    torch.manual_seed(6)
    lm_out = lm(input_ids=inputs, shift_labels=targets, skip_logits=False)
    lm_out.loss.backward()
    by_hand = F.cross_entropy(lm_out.logits.flatten(0, 1), targets.flatten())
    assert lm_out.loss.item() == pytest.approx(by_hand.item(), abs=TOL) and math.isfinite(by_hand.item())
    assert all(torch.isfinite(p.grad).all() for p in lm.parameters() if p.grad is not None)
