"""The same text gives the same output however it is called: alone, repeated or mixed in a batch of other
lengths, after other calls, padded on either side, and from several threads sharing one pipeline.

The reference is always the text alone in a fresh call; fp32 results agree to 1e-5 (batched kernels sum
in another order), greedy tokens exactly.
"""

from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from tiny_models import WORDS, greedy_by_hand, tiny_classifier, tiny_lm, tiny_tokenizer
from transformers import pipeline

TOL = 1e-5
TEXTS = [
    "",
    "good",
    "the movie was good , and i loved it .",
    "not a film ! " * 9,  # longer than max_len (15): only its last window is pooled
    "bad plot and bad actors .\n\nthe film was not good",
]


@pytest.fixture(scope="module")
def tokenizer():
    return tiny_tokenizer()


@pytest.fixture(scope="module")
def classifier(tokenizer):
    return tiny_classifier(tokenizer, seed=1)


@pytest.fixture(scope="module")
def lm(tokenizer):
    return tiny_lm(tokenizer, seed=2)


@torch.no_grad()
def alone(model, tokenizer, text: str) -> torch.Tensor:
    """Logits of the text alone: (labels) for the classifier, (length, vocab) for the LM."""
    logits = model(torch.tensor([tokenizer(text)["input_ids"]])).logits[0]
    return logits


@torch.no_grad()
def batched(model, tokenizer, texts: list[str], side: str) -> list[torch.Tensor]:
    """Each row's logits from one padded batch (for the LM, at that row's real positions)."""
    tokenizer.padding_side = side
    try:
        batch = tokenizer(texts, padding=True, return_tensors="pt")
    finally:
        tokenizer.padding_side = "right"
    logits = model(**batch).logits
    if logits.dim() == 2:
        return list(logits)
    return [row[mask.bool()] for row, mask in zip(logits, batch["attention_mask"])]


def close(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.shape == b.shape and bool((a - b).abs().max() <= TOL) if a.numel() else a.shape == b.shape


# ---------------------------------------------------------------------------------------------- forward passes


@pytest.mark.parametrize("head", ["classifier", "lm"])
@pytest.mark.parametrize("side", ["left", "right"])
def test_each_text_gets_its_own_logits_alone_repeated_or_mixed(head, side, tokenizer, request):
    model = request.getfixturevalue(head)
    reference = {text: alone(model, tokenizer, text) for text in TEXTS}
    compositions = [TEXTS, TEXTS[::-1], [TEXTS[2]] * 4, [TEXTS[0], TEXTS[3], TEXTS[0]], [TEXTS[1]]]
    for texts in compositions:
        for text, logits in zip(texts, batched(model, tokenizer, texts, side)):
            assert close(logits, reference[text]), (texts, text)


@pytest.mark.parametrize("head", ["classifier", "lm"])
def test_no_state_leaks_from_earlier_calls(head, tokenizer, request):
    """Calls of other batch sizes and lengths, with and without a mask, leave nothing behind: the next call
    gives bit-for-bit the same logits as the first one."""
    model = request.getfixturevalue(head)
    text = TEXTS[2]
    first = alone(model, tokenizer, text)
    batched(model, tokenizer, TEXTS, "left")
    with torch.no_grad():
        model(torch.randint(9, 27, (7, 40)))
        if head == "lm":
            model(torch.randint(9, 27, (1, 3)), use_cache=True)
    assert torch.equal(alone(model, tokenizer, text), first)


def test_an_lm_state_passed_in_is_not_changed_by_the_call(lm, tokenizer):
    """The returned cache is a new object: continuing twice from one state gives the same logits twice."""
    with torch.no_grad():
        state = lm(torch.tensor([tokenizer("the movie was")["input_ids"]])).cache
        saved = [(h.clone(), c.clone()) for h, c in state.states]
        nxt = torch.tensor([tokenizer("good .", add_special_tokens=False)["input_ids"]])
        first = lm(nxt, cache=state).logits
        second = lm(nxt, cache=state).logits
    assert torch.equal(first, second)
    assert all(torch.equal(h, h0) and torch.equal(c, c0) for (h, c), (h0, c0) in zip(state.states, saved))


# ---------------------------------------------------------------------------------------------- generation


def test_greedy_generation_is_the_same_alone_batched_and_after_other_calls(lm, tokenizer):
    prompts = TEXTS[1:4]
    expected = [greedy_by_hand(lm, tokenizer(p)["input_ids"], 6) for p in prompts]
    with torch.no_grad():
        lm.generate(torch.randint(9, 27, (3, 11)), max_new_tokens=4, do_sample=False)  # an unrelated call first
        for p, want in zip(prompts, expected):
            assert lm.generate(**tokenizer(p, return_tensors="pt"), max_new_tokens=6, do_sample=False)[0].tolist() == want
        tokenizer.padding_side = "left"  # generate() continues after the last column: prompts padded on the left
        try:
            batch = tokenizer(prompts, padding=True, return_tensors="pt")
        finally:
            tokenizer.padding_side = "right"
        out = lm.generate(**batch, max_new_tokens=6, do_sample=False)
    width = batch["input_ids"].shape[1]
    for row, mask, want in zip(out, batch["attention_mask"], expected):
        assert row[:width][mask.bool()].tolist() + row[width:].tolist() == want


# ---------------------------------------------------------------------------------------------- threads


def test_threads_sharing_one_classification_pipeline_get_the_serial_results(classifier, tokenizer):
    classify = pipeline("text-classification", model=classifier, tokenizer=tokenizer)
    jobs = [TEXTS[i % len(TEXTS)] for i in range(20)]
    serial = [classify(text, top_k=None) for text in jobs]
    with ThreadPoolExecutor(max_workers=4) as pool:
        threaded = list(pool.map(lambda text: classify(text, top_k=None), jobs))
    for want, got in zip(serial, threaded):
        assert {s["label"]: s["score"] for s in got} == pytest.approx({s["label"]: s["score"] for s in want}, abs=TOL)


def test_threads_sharing_one_generation_pipeline_get_the_serial_results(lm, tokenizer):
    generate = pipeline("text-generation", model=lm, tokenizer=tokenizer)
    jobs = [TEXTS[i % len(TEXTS)] for i in range(10)]

    def run(text):
        return generate(text, max_new_tokens=5, do_sample=False, return_tensors=True)[0]["generated_token_ids"]

    serial = [run(text) for text in jobs]
    assert serial[1] == greedy_by_hand(lm, tokenizer(jobs[1])["input_ids"], 5)
    with ThreadPoolExecutor(max_workers=4) as pool:
        assert list(pool.map(run, jobs)) == serial


@torch.no_grad()
def test_threads_calling_the_models_directly_get_the_serial_logits(classifier, lm, tokenizer):
    jobs = [(model, TEXTS[i % len(TEXTS)]) for i in range(10) for model in (classifier, lm)]
    serial = [alone(model, tokenizer, text) for model, text in jobs]
    with ThreadPoolExecutor(max_workers=4) as pool:
        threaded = list(pool.map(lambda job: alone(job[0], tokenizer, job[1]), jobs))
    assert all(torch.equal(a, b) for a, b in zip(serial, threaded))


# ---------------------------------------------------------------------------------------------- property

SENTENCES = st.lists(st.sampled_from(WORDS), max_size=25).map(" ".join)


@pytest.mark.slow  # about a second an example on the shared CPUs
@settings(max_examples=20, deadline=None)
@given(texts=st.lists(SENTENCES, min_size=1, max_size=6), side=st.sampled_from(["left", "right"]))
def test_any_batch_gives_each_row_its_logits_alone(classifier, lm, tokenizer, texts, side):
    for model in (classifier, lm):
        for text, logits in zip(texts, batched(model, tokenizer, texts, side)):
            assert close(logits, alone(model, tokenizer, text)), (texts, side, text)
