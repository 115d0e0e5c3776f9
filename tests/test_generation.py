"""Generation: the recurrent state is `generate()`'s cache in every decoding mode (one token per step after
the prompt), batched prompts give what each gives alone, fastai's `predict` settings, and bad input."""

import logging
import threading
import warnings

import pytest
import torch
from transformers import GenerationConfig, TextIteratorStreamer, pipeline

from awd_lstm_hf import AWDLSTMConfig, AWDLSTMForCausalLM, AWDLSTMTokenizer
from awd_lstm_hf.tokenization_awd_lstm import read_itos_pickle

TOL = 1e-5
VOCAB = 60
UNK = 0


def small_lm(layers=2, vocab_size=VOCAB, seed=0):
    torch.manual_seed(seed)
    config = AWDLSTMConfig(vocab_size=vocab_size, embedding_size=8, hidden_size=12, num_hidden_layers=layers)
    return AWDLSTMForCausalLM(config).eval()


class CountInputWidths:
    """Records the width of every forward the encoder sees."""

    def __init__(self, model):
        self.widths = []
        model.model.register_forward_pre_hook(self, with_kwargs=True)

    def __call__(self, module, args, kwargs):
        self.widths.append(kwargs["input_ids"].shape[1])


@pytest.fixture(scope="module")
def tokenizer(fixtures_dir):
    return AWDLSTMTokenizer.from_itos(read_itos_pickle(fixtures_dir / "fastai_vocab" / "itos.pkl"))


# ---------------------------------------------------------------- the carried state, every decoding mode

MODES = {
    "greedy": dict(do_sample=False),
    "sampling": dict(do_sample=True, temperature=0.75, top_k=0),
    "top_k_top_p": dict(do_sample=True, top_k=10, top_p=0.9),
    "min_p": dict(do_sample=True, top_k=0, min_p=0.05),
    "repetition_penalty": dict(do_sample=False, repetition_penalty=1.5),
    "no_repeat_ngram": dict(do_sample=False, no_repeat_ngram_size=2),
    "beam_search": dict(do_sample=False, num_beams=4, num_return_sequences=2),
    "num_return_sequences": dict(do_sample=True, top_k=0, num_return_sequences=3),
}


@torch.no_grad()
@pytest.mark.parametrize("layers", [1, 2, 3])
@pytest.mark.parametrize("mode", list(MODES))
def test_cached_generation_equals_recomputing_the_prefix(layers, mode):
    model = small_lm(layers, seed=layers)
    prompt = torch.randint(9, VOCAB, (2, 7))
    counter = CountInputWidths(model)
    torch.manual_seed(5)
    cached = model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=12, **MODES[mode])
    assert counter.widths[0] == 7 and set(counter.widths[1:]) == {1}  # after the prompt, one token per step
    torch.manual_seed(5)
    uncached = model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=12, use_cache=False, **MODES[mode])
    assert torch.equal(cached, uncached)
    assert UNK not in cached[:, 7:].tolist()  # fastai's no_unk, on by default


@torch.no_grad()
@pytest.mark.parametrize("layers", [1, 2, 3])
@pytest.mark.parametrize("do_sample", [False, True])
def test_generation_equals_an_independent_loop(layers, do_sample):
    """Greedy and seeded sampling at temperature 0.75 (fastai's predict), against a plain loop that
    recomputes the whole prefix from a zero state at every step."""
    model = small_lm(layers, seed=layers)
    prompt = torch.randint(9, VOCAB, (1, 7))
    torch.manual_seed(11)
    banned = [UNK, model.config.eos_token_id]  # so that both run all 15 steps
    generated = model.generate(prompt, max_new_tokens=15, do_sample=do_sample, temperature=0.75 if do_sample else None,
                               top_k=0, suppress_tokens=banned)
    torch.manual_seed(11)
    manual = prompt
    for _ in range(15):
        logits = model(manual).logits[:, -1]
        logits[:, banned] = float("-inf")
        if do_sample:
            token = torch.multinomial(torch.softmax(logits / 0.75, dim=-1), 1)
        else:
            token = logits.argmax(-1, keepdim=True)
        manual = torch.cat([manual, token], 1)
    assert torch.equal(generated, manual)


def reference_beam_search(model, prompt, beams, steps, banned):
    """Textbook beam search recomputing every prefix from zeros: keep the `beams` best (beam, token)
    extensions by total log-probability."""
    sequences, scores = prompt, torch.zeros(1)
    for _ in range(steps):
        log_probs = torch.log_softmax(model(sequences).logits[:, -1].float(), dim=-1)
        log_probs[:, banned] = float("-inf")
        totals = (scores[:, None] + log_probs).flatten()
        best = totals.topk(beams)
        rows, tokens = best.indices // log_probs.shape[1], best.indices % log_probs.shape[1]
        sequences, scores = torch.cat([sequences[rows], tokens[:, None]], 1), best.values
    return sequences, scores


@torch.no_grad()
@pytest.mark.parametrize("layers", [1, 3])
def test_beam_search_equals_a_reference_search(layers):
    model = small_lm(layers, seed=20 + layers)
    prompt = torch.randint(9, VOCAB, (1, 6))
    banned = [UNK, model.config.eos_token_id]  # no beam ends early, so every hypothesis has the same length
    out = model.generate(prompt, max_new_tokens=10, num_beams=4, num_return_sequences=4, do_sample=False,
                         suppress_tokens=banned, length_penalty=0.0, return_dict_in_generate=True, output_scores=True)
    expected, expected_scores = reference_beam_search(model, prompt, 4, 10, banned)
    assert torch.equal(out.sequences, expected)
    assert (out.sequences_scores - expected_scores).abs().max() <= 1e-4


@torch.no_grad()
@pytest.mark.parametrize("do_sample", [False, True])
def test_left_padded_batch_generates_what_each_prompt_generates_alone(do_sample):
    model = small_lm(3, seed=7)
    lengths = [1, 9, 23, 41, 60]
    prompts = [torch.randint(9, VOCAB, (n,)) for n in lengths]
    ids = torch.full((5, 60), model.config.pad_token_id)
    mask = torch.zeros_like(ids)
    for row, prompt in enumerate(prompts):
        ids[row, 60 - len(prompt):], mask[row, 60 - len(prompt):] = prompt, 1
    settings = dict(max_new_tokens=8, return_dict_in_generate=True, output_logits=True)
    if do_sample:  # rows draw from one random stream, so compare with temperature -> 0 (the argmax)
        settings |= dict(do_sample=True, temperature=1e-4, top_k=0)
    batched = model.generate(ids, attention_mask=mask, **settings)
    for row, prompt in enumerate(prompts):
        alone = model.generate(prompt[None], **settings)
        assert torch.equal(batched.sequences[row, 60:], alone.sequences[0, len(prompt):])
        for step_batched, step_alone in zip(batched.logits, alone.logits):
            assert (step_batched[row] - step_alone[0]).abs().max() <= TOL


@torch.no_grad()
def test_continuing_from_a_returned_cache_equals_one_longer_run():
    model = small_lm(2, seed=3)
    prompt = torch.randint(9, VOCAB, (2, 5))
    mask = torch.ones_like(prompt)
    first = model.generate(prompt, attention_mask=mask, max_new_tokens=6, do_sample=False, return_dict_in_generate=True)
    counter = CountInputWidths(model)
    second = model.generate(first.sequences, attention_mask=torch.ones_like(first.sequences), cache=first.cache,
                            max_new_tokens=7, do_sample=False)
    assert set(counter.widths) == {1}  # nothing of the first run is recomputed
    whole = model.generate(prompt, attention_mask=mask, max_new_tokens=13, do_sample=False)
    assert torch.equal(second, whole)


@torch.no_grad()
@pytest.mark.parametrize("mode", list(MODES) + ["beam_search_one_returned"])
def test_returned_cache_belongs_to_the_returned_sequences(mode):
    """Row i of a returned cache is the state after reading sequences[i] (but its last token), whatever the
    decoding mode: beam search picks its hypotheses out of reordered beams, so its cache is rebuilt for them."""
    settings = MODES.get(mode, dict(do_sample=False, num_beams=4))
    model = small_lm(2, seed=11)
    prompt, mask = torch.randint(9, VOCAB, (2, 5)), torch.ones(2, 5, dtype=torch.long)
    mask[1, :2] = 0  # the second prompt is left-padded
    torch.manual_seed(0)
    out = model.generate(prompt, attention_mask=mask, max_new_tokens=9, return_dict_in_generate=True, **settings)
    rows = out.sequences.shape[0]
    full_mask = torch.cat([mask.repeat_interleave(rows // 2, 0), torch.ones(rows, 9, dtype=torch.long)], 1)
    expected = model(out.sequences[:, :-1], attention_mask=full_mask[:, :-1]).cache
    assert out.cache.batch_size == rows and out.cache.seen_tokens == out.sequences.shape[1] - 1
    for (h, c), (h_ref, c_ref) in zip(out.cache.states, expected.states):
        assert (h - h_ref).abs().max() <= TOL and (c - c_ref).abs().max() <= TOL


# ---------------------------------------------------------------- fastai's predict settings, config hygiene


@torch.no_grad()
def test_tiny_temperature_gives_the_greedy_tokens_and_zero_keeps_transformers_error():
    model = small_lm(2, seed=4)
    prompt = torch.randint(9, VOCAB, (3, 6))
    greedy = model.generate(prompt, max_new_tokens=12, do_sample=False)
    torch.manual_seed(0)
    assert torch.equal(model.generate(prompt, max_new_tokens=12, do_sample=True, temperature=1e-4, top_k=0), greedy)
    with pytest.raises(ValueError, match="temperature"):
        model.generate(prompt, max_new_tokens=3, do_sample=True, temperature=0.0)


def test_saved_generation_config_never_emits_unk_and_raises_no_warnings(tmp_path, caplog):
    small_lm().save_pretrained(tmp_path)
    model = AWDLSTMForCausalLM.from_pretrained(tmp_path).eval()
    assert GenerationConfig.from_pretrained(tmp_path).suppress_tokens == [UNK]
    prompt = torch.randint(9, VOCAB, (1, 4))
    with warnings.catch_warnings(record=True) as caught, caplog.at_level(logging.WARNING):
        warnings.simplefilter("always")
        model.generate(prompt, max_new_tokens=30)  # the saved defaults
        model.generate(prompt, max_new_tokens=30, do_sample=True, temperature=0.75)  # the seed's call
    assert [str(w.message) for w in caught] == []
    assert [r.getMessage() for r in caplog.records if r.name.startswith("transformers")] == []


# ---------------------------------------------------------------- streaming, stopping, text


def test_streamer_yields_the_decoded_continuation(tokenizer):
    model = small_lm(2, vocab_size=len(tokenizer), seed=1)
    inputs = tokenizer("I liked this movie", return_tensors="pt")
    streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
    outputs = {}
    thread = threading.Thread(target=lambda: outputs.setdefault("ids", model.generate(
        **inputs, max_new_tokens=20, do_sample=False, streamer=streamer)))
    thread.start()
    streamed = "".join(streamer)
    thread.join()
    expected = tokenizer.decode(outputs["ids"][0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
    assert streamed.strip() == expected.strip()


def test_stop_strings_stop_at_the_first_match_in_the_continuation(tokenizer):
    model = small_lm(2, vocab_size=len(tokenizer), seed=2)
    inputs = tokenizer("I liked this movie", return_tensors="pt")
    prompt_length = inputs["input_ids"].shape[1]
    free = model.generate(**inputs, max_new_tokens=25, do_sample=False)[0, prompt_length:].tolist()
    texts = [tokenizer.decode(free[:n], skip_special_tokens=True) for n in range(1, 26)]
    stop = texts[5].split()[-1]  # a word the free run produces (maybe earlier too)
    first_match = next(n for n, text in enumerate(texts, 1) if stop in text)
    stopped = model.generate(**inputs, max_new_tokens=25, do_sample=False, stop_strings=[stop], tokenizer=tokenizer)
    assert stopped[0, prompt_length:].tolist() == free[:first_match]
    with pytest.raises(ValueError, match="tokenizer"):
        model.generate(**inputs, max_new_tokens=5, stop_strings=["x"])


def test_pipeline_output_starts_with_the_prompt_and_spaces_the_continuation(tokenizer, tmp_path):
    small_lm(2, vocab_size=len(tokenizer)).save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    generator = pipeline("text-generation", model=str(tmp_path))
    forced = tokenizer.convert_tokens_to_ids(["xxmaj", "it", "was", "n't", "bad", ",", "really", "."])

    def allowed(batch_id, ids):
        step = ids.shape[0] - prompt_length
        return [forced[min(step, len(forced) - 1)]]

    for prompt in ["I liked this movie", "It's a GREAT film"]:
        prompt_length = len(tokenizer(prompt)["input_ids"])
        text = generator(prompt, max_new_tokens=len(forced), do_sample=False, prefix_allowed_tokens_fn=allowed)[0]["generated_text"]
        assert text == prompt + " It wasn't bad, really."


# ---------------------------------------------------------------- bad input


@torch.no_grad()
def test_empty_and_whitespace_prompts_start_from_bos(tokenizer):
    model = small_lm(2, vocab_size=len(tokenizer), seed=3)
    from_bos = model.generate(torch.tensor([[tokenizer.bos_token_id]]), max_new_tokens=6, do_sample=False)
    for prompt in ["", "   ", "\n\t "]:
        ids = tokenizer(prompt, return_tensors="pt")
        assert ids["input_ids"].tolist() == [[tokenizer.bos_token_id]]
        assert torch.equal(model.generate(**ids, max_new_tokens=6, do_sample=False), from_bos)


@torch.no_grad()
def test_zero_new_tokens_returns_the_prompt(tokenizer, tmp_path):
    model = small_lm(2, seed=3)
    prompt = torch.randint(9, VOCAB, (2, 5))
    assert torch.equal(model.generate(prompt, max_new_tokens=0), prompt)
    out = model.generate(prompt, max_new_tokens=0, num_return_sequences=2, do_sample=True, return_dict_in_generate=True)
    assert torch.equal(out.sequences, prompt.repeat_interleave(2, 0))
    lm = small_lm(2, vocab_size=len(tokenizer))
    generator = pipeline("text-generation", model=lm, tokenizer=tokenizer)
    assert generator("I liked this movie", max_new_tokens=0)[0]["generated_text"] == "I liked this movie"


@torch.no_grad()
def test_a_long_prompt_is_read_in_one_forward():
    model = small_lm(2, seed=9)
    prompt = torch.randint(9, VOCAB, (1, 100_000))
    counter = CountInputWidths(model)
    out = model.generate(prompt, max_new_tokens=3, do_sample=False)
    assert counter.widths == [100_000, 1, 1]
    state = model(prompt[:, :-1], use_cache=True).cache  # the same state as reading it up to the last token
    assert torch.equal(out[:, :100_000], prompt)
    step = model(prompt[:, -1:], cache=state).logits[:, -1]
    step[:, UNK] = float("-inf")
    assert out[0, 100_000].item() == step.argmax().item()
