"""AWDLSTMTokenizer: fastai-exact tokenization and numericalization, vocabulary, decoding, I/O."""

import json
import os
import pickle
import re
import shutil
from collections import Counter
from pathlib import Path

import pytest
import spacy

from awd_lstm_hf.tokenization_awd_lstm import (
    SPECIAL_TOKENS,
    AWDLSTMTokenizer,
    apply_fastai_rules,
    build_vocab,
    fastai_tokenize_batch,
    read_itos_pickle,
)

FAKE8 = ["xxfake"] * 8


def read_jsonl(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f]


@pytest.fixture(scope="module")
def vocab_dir(fixtures_dir) -> Path:
    return fixtures_dir / "fastai_vocab"


@pytest.fixture(scope="module")
def fastai_itos(vocab_dir) -> list[str]:
    return read_itos_pickle(vocab_dir / "itos.pkl")


@pytest.fixture(scope="module")
def tokenizer(fastai_itos) -> AWDLSTMTokenizer:
    return AWDLSTMTokenizer.from_itos(fastai_itos)


def tokenizer_covering(*texts: str) -> AWDLSTMTokenizer:
    """A tokenizer whose vocabulary holds every token of `texts` (so that decoding is lossless)."""
    counts = Counter(token for tokens in fastai_tokenize_batch(texts) for token in tokens)
    return AWDLSTMTokenizer.from_counts(counts, min_freq=1)


# ------------------------------------------------------------------------------------------------
# Tokenization: fastai's ground truth
# ------------------------------------------------------------------------------------------------


def test_tokenize_matches_fastai_on_imdb_sample(tokenizer, fixtures_dir):
    records = read_jsonl(fixtures_dir / "fastai_tokenizer" / "imdb_train_sample.jsonl")
    assert len(records) == 316
    mismatches = [r["text"][:80] for r in records if ["xxbos"] + tokenizer.tokenize(r["text"]) != r["tokens"]]
    assert mismatches == []


def test_batch_function_matches_fastai_on_imdb_sample(fixtures_dir):
    records = read_jsonl(fixtures_dir / "fastai_tokenizer" / "imdb_train_sample.jsonl")
    assert fastai_tokenize_batch(r["text"] for r in records) == [r["tokens"] for r in records]


# fastai_reference.md 4.6, training path (post-rule applied).
# fmt: off
FASTAI_VECTORS = [
    (
        "This movie was GREAT!!!! I loved it.<br /><br />Would watch again.",
        ["xxbos", "xxmaj", "this", "movie", "was", "xxup", "great", "xxrep", "4", "!", "i", "loved", "it", ".",
         "\n\n", "xxmaj", "would", "watch", "again", "."],
    ),
    (
        "I don't know... it's the BEST film of 2019, rated 9/10 - see http://www.imdb.com/title/tt0111161/ #1",
        ["xxbos", "i", "do", "n't", "know", "…", "it", "'s", "the", "xxup", "best", "film", "of", "2019", ",",
         "rated", "9", "/", "10", "-", "see", "http", ":", "/", "/", "xxrep", "3", "w", ".imdb.com", "/", "title",
         "/", "tt0", "xxrep", "4", "1", "61", "/", "#", "1"],
    ),
    (
        "Café résumé naïve: the crème brûlée was très bien 😀👍 at $12.50 &amp; more",
        ["xxbos", "xxmaj", "café", "résumé", "naïve", ":", "the", "crème", "brûlée", "was", "très", "bien", "😀",
         "👍", "at", "$", "12.50", "&", "&", "more"],
    ),
    (
        "word word word word and no no no NO. Hmmmmm... soooo good",
        ["xxbos", "xxwrep", "4", "word", "and", "xxwrep", "3", "no", "xxup", "no", ".", "h", "xxrep", "5", "m", "…",
         "s", "xxrep", "4", "o", "good"],
    ),
    (
        "ALL CAPS SENTENCE HERE. McDonald's iPhone USA-based X-Men &quot;quoted&quot; I'm   spaced \\n out",
        ["xxbos", "xxup", "all", "xxup", "caps", "xxup", "sentence", "xxup", "here", ".", "mcdonald", "'s", "iphone",
         "usa", "-", "based", "x", "-", "men", "&", "'", "quoted", "&", "'", "xxmaj", "i", "'m", "spaced", "\n▁",
         "out"],
    ),
    ("1000 people paid $2000", ["xxbos", "1", "xxrep", "3", "0", "people", "paid", "$", "2", "xxrep", "3", "0"]),
    ('"Hello" (World) said Bob.', ["xxbos", '"', "hello", '"', "(", "world", ")", "said", "xxmaj", "bob", "."]),
    ("I saw X-Men and McDonald's ad", ["xxbos", "i", "saw", "x", "-", "men", "and", "mcdonald", "'s", "ad"]),
    ("Zzz... Aaaah NOOO", ["xxbos", "xxmaj", "zzz", "…", "a", "xxrep", "3", "a", "h", "n", "xxrep", "3", "o"]),
    ("a.b/c#d \\ e", ["xxbos", "a.b", "/", "c", "#", "d", "\\", "e"]),
    ("It was...... ok....", ["xxbos", "xxmaj", "it", "was", "…", "…", "ok", "…", "."]),
    ("&lt;b&gt;bold&lt;/b&gt; &nbsp; x", ["xxbos", "<", "b", ">", "bold", "<", "/", "b", ">", "&", "x"]),
    ("word\tword\tword word", ["xxbos", "xxwrep", "4", "word"]),
    ("A movie. <br /><br /> The end.", ["xxbos", "a", "movie", ".", "\n\n▁", "xxmaj", "the", "end", "."]),
    ("", ["xxbos"]),
]
# fmt: on


@pytest.mark.parametrize(("text", "tokens"), FASTAI_VECTORS)
def test_fastai_reference_vectors(tokenizer, text, tokens):
    assert ["xxbos"] + tokenizer.tokenize(text) == tokens
    assert fastai_tokenize_batch([text]) == [tokens]


@pytest.mark.parametrize(
    ("text", "tokens"),
    [
        # fastai treats special-token strings in the text as ordinary text: no splitting on them.
        ("hello xxbos world", ["hello", "xxbos", "world"]),
        ("XXBOS Xxunk", ["xxup", "xxbos", "xxmaj", "xxunk"]),
        ("xxunkword wordxxbos", ["xxunkword", "wordxxbos"]),
        ("(xxbos) xxmaj's <unk>", ["(", "xxbos", ")", "xxmaj", "'s", "xxunk"]),
    ],
)
def test_special_token_strings_in_text(tokenizer, text, tokens):
    assert tokenizer.tokenize(text) == tokens


def test_special_token_strings_are_encoded_like_fastai(tokenizer):
    the, world = tokenizer.convert_tokens_to_ids(["the", "world"])
    assert tokenizer("the xxbos world")["input_ids"] == [2, the, 2, world]
    assert tokenizer("xxunkword <unk>")["input_ids"] == [2, 0, 0]


def test_spacy_special_cases_are_not_needed(fixtures_dir):
    """fastai registers its special tokens as spaCy special cases; we skip them (they slow spaCy
    down) because they never change the output: spaCy never splits a run of lowercase letters."""
    with_special_cases = spacy.blank("en").tokenizer
    for token in SPECIAL_TOKENS:
        with_special_cases.add_special_case(token, [{"ORTH": token}])
    texts = [r["text"] for r in read_jsonl(fixtures_dir / "fastai_tokenizer" / "imdb_train_sample.jsonl")]
    texts += [
        f"{token}{affix} {affix}{token} x{token}y {token}-{token} ({token}) {token}'s {token}n't {token}/{token}"
        for token in SPECIAL_TOKENS
        for affix in ("", ".", ",", "'", '"', "!", "...", ":", ")", "-", "'s", "$", "#", "@")
    ]
    expected = [
        [token.text.replace(" ", "▁") for token in doc]
        for doc in with_special_cases.pipe(apply_fastai_rules(text) for text in texts)
    ]
    assert fastai_tokenize_batch(texts) == expected


@pytest.mark.parametrize(
    ("text", "tokens"),
    [
        ("", []),
        ("   ", []),
        ("\n\t \n", []),
        ("a\ud800b", ["a", "\ufffd", "b"]),  # lone surrogate: spaCy cannot encode it, replaced by U+FFFD
        ("x\x00y \x07", ["x\x00y", "\x07"]),
        ("ok 😀👍🏽!", ["ok", "😀", "👍", "🏽", "!"]),
    ],
)
def test_robust_to_odd_input(tokenizer, text, tokens):
    assert tokenizer.tokenize(text) == tokens


def test_encoding_adds_only_xxbos(tokenizer):
    assert tokenizer("")["input_ids"] == [2]
    assert tokenizer("   ")["input_ids"] == [2]
    assert tokenizer("", add_special_tokens=False)["input_ids"] == []
    the = tokenizer.convert_tokens_to_ids("the")
    assert tokenizer.encode("The the") == [2, 8, the, the]
    assert tokenizer.encode("The the", add_special_tokens=False) == [8, the, the]
    assert tokenizer("the", return_special_tokens_mask=True)["special_tokens_mask"] == [1, 0]


def test_batch_padding_is_right_sided_with_xxpad(tokenizer):
    the = tokenizer.convert_tokens_to_ids("the")
    batch = tokenizer(["the the", "the"], padding=True)
    assert batch["input_ids"] == [[2, the, the], [2, the, 1]]
    assert batch["attention_mask"] == [[1, 1, 1], [1, 1, 0]]


def test_tokenizer_settings(tokenizer):
    assert tokenizer.all_special_tokens == ["xxbos", "xxeos", "xxunk", "xxpad"]
    special_ids = [tokenizer.unk_token_id, tokenizer.pad_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id]
    assert special_ids == [0, 1, 2, 3]
    assert tokenizer.convert_tokens_to_ids(["xxmaj", "xxup", "xxrep", "xxwrep", "xxfld"]) == [8, 7, 5, 6, 4]
    assert tokenizer.padding_side == "right"
    assert tokenizer.model_max_length >= 10**29
    assert tokenizer.model_input_names == ["input_ids", "attention_mask"]
    assert tokenizer.clean_up_tokenization_spaces is False


def test_batch_function_is_picklable_and_hashes_deterministically():
    from datasets.fingerprint import Hasher

    before = Hasher.hash(fastai_tokenize_batch)
    fastai_tokenize_batch(["builds the spaCy tokenizer"])
    assert Hasher.hash(fastai_tokenize_batch) == before
    assert pickle.loads(pickle.dumps(fastai_tokenize_batch)) is fastai_tokenize_batch


def test_tokenizer_pickles(tokenizer):
    clone = pickle.loads(pickle.dumps(tokenizer))
    assert clone("I LOVED it!!!")["input_ids"] == tokenizer("I LOVED it!!!")["input_ids"]


# ------------------------------------------------------------------------------------------------
# Vocabulary and numericalization
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("itos_file", ["itos.pkl", "itos.json"])
def test_numericalize_matches_fastai(vocab_dir, itos_file):
    if itos_file.endswith(".pkl"):
        itos = read_itos_pickle(vocab_dir / itos_file)
    else:
        itos = json.loads((vocab_dir / itos_file).read_text(encoding="utf-8"))
    tokenizer = AWDLSTMTokenizer.from_itos(itos)
    assert len(tokenizer) == tokenizer.vocab_size == 8768
    records = read_jsonl(vocab_dir / "numericalized.jsonl")
    assert len(records) == 40
    for record in records:
        assert tokenizer(record["text"])["input_ids"] == record["ids"]
        assert tokenizer.convert_ids_to_tokens(record["ids"]) == [
            token if token_id else "xxunk" for token, token_id in zip(record["tokens"], record["ids"])
        ]


def test_vocabulary_lookup_rules():
    itos = [*SPECIAL_TOKENS, "the", "xxfake", "a", "the", "xxfake", "xxfake"]
    tokenizer = AWDLSTMTokenizer.from_itos(itos)
    assert len(tokenizer) == tokenizer.vocab_size == 15
    assert tokenizer.convert_tokens_to_ids(["the", "a", "xxfake", "unseen"]) == [9, 11, 0, 0]  # first wins
    assert tokenizer.convert_ids_to_tokens([10, 12, 14]) == ["xxfake", "the", "xxfake"]
    assert "xxfake" not in tokenizer.get_vocab()
    assert tokenizer.itos == itos
    with pytest.raises(IndexError, match="outside the vocabulary"):
        tokenizer.convert_ids_to_tokens([15])


def test_added_tokens_follow_the_whole_itos():
    tokenizer = AWDLSTMTokenizer.from_itos([*SPECIAL_TOKENS, "the", "xxfake", "xxfake", "xxfake"])
    assert tokenizer.add_tokens(["covid", "the"]) == 1
    assert len(tokenizer) == 14
    assert tokenizer.convert_tokens_to_ids(["covid", "the"]) == [13, 9]
    assert tokenizer.convert_ids_to_tokens(13) == "covid"


@pytest.mark.parametrize(
    ("counts", "kwargs", "expected"),
    [
        # Ties keep insertion order; min_freq drops 'd'; the special 'xxmaj' moves to the front; 13 -> +3.
        (
            Counter({"b": 5, "a": 5, "xxmaj": 4, "c": 3, "d": 2, "e": 3}),
            {},
            [*SPECIAL_TOKENS, "b", "a", "c", "e", "xxfake", "xxfake", "xxfake"],
        ),
        # Already a multiple of 8 (16): 8 'xxfake' are added, never 0.
        ({f"w{i}": 3 for i in range(1, 8)}, {}, [*SPECIAL_TOKENS, *(f"w{i}" for i in range(1, 8)), *FAKE8]),
        # The specials push the tail out: cut to max_vocab=12, then padded to 16.
        (
            Counter({"a": 9, "b": 8, "c": 7, "d": 6, "e": 5}),
            {"max_vocab": 12},
            [*SPECIAL_TOKENS, "a", "b", "c", "xxfake", "xxfake", "xxfake", "xxfake"],
        ),
        # A plain dict; the most frequent token is a special token; min_freq=2.
        ({"z": 2, "xxunk": 10, "y": 2, "x": 1}, {"min_freq": 2}, [*SPECIAL_TOKENS, "z", "y", *FAKE8[:5]]),
        # most_common(max_vocab) comes first: with max_vocab=11, 'c' (3rd most common) is never seen.
        (Counter({"a": 3, "b": 3, "c": 3}), {"max_vocab": 11}, [*SPECIAL_TOKENS, "a", "b", *FAKE8[:5]]),
        (Counter(), {}, [*SPECIAL_TOKENS, *FAKE8[:7]]),
    ],
)
def test_build_vocab(counts, kwargs, expected):
    assert build_vocab(counts, **kwargs) == expected
    assert AWDLSTMTokenizer.from_counts(counts, **kwargs).itos == expected


# ------------------------------------------------------------------------------------------------
# Decoding
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "decoded"),
    [
        (
            "This movie was GREAT!!!! I loved it.<br /><br />Would watch again.",
            "This movie was GREAT!!!! I loved it.\n\nWould watch again.",
        ),
        ("I don't know... it's the BEST film, isn't it?", "I don't know… it's the BEST film, isn't it?"),
        ('"Hello" (World) said Bob.', '"hello" (world) said Bob.'),  # fastai loses these capitals
        (
            "word word word word and no no no NO. Hmmmmm... soooo good",
            "word word word word and no no no NO. hmmmmm… soooo good",
        ),
        ("1000 people paid $2000 for 9/10 x-men #1", "1000 people paid $2000 for 9/10 x-men #1"),
        ("A movie. <br /><br /> The end.", "a movie.\n\n The end."),
    ],
)
def test_decode_whole_document(text, decoded):
    tokenizer = tokenizer_covering(text)
    ids = tokenizer(text)["input_ids"]
    assert 0 not in ids
    assert tokenizer.decode(ids) == "xxbos " + decoded  # special tokens shown, as in transformers
    assert tokenizer.decode(ids, skip_special_tokens=True) == decoded


@pytest.mark.parametrize(
    ("tokens", "decoded"),
    [
        # A continuation starting with a word gets a leading space, none before punctuation or clitics.
        (["xxmaj", "it", "was", "great", "."], " It was great."),
        ([",", "and", "i", "loved", "it", "!"], ", and I loved it!"),
        (["n't", "go"], "n't go"),
        (["'s", "great"], "'s great"),
        (["\n▁", "out"], "\n out"),
        (["line1", "\n\n", "line2"], " line1\n\nline2"),
        # A leading xxbos is a whole document: no leading space.
        (["xxbos", "xxmaj", "it", "was"], "It was"),
        (["xxpad", "xxbos", "fine"], "fine"),
        # Repeats reset after one token (fastai's decoder repeats every following token).
        (["xxbos", "xxrep", "3", "!", "and", "more"], "!!! and more"),
        (["xxbos", "xxwrep", "3", "xxup", "no", "way"], "NO NO NO way"),
        (["xxbos", "s", "xxrep", "4", "o", "good"], "soooo good"),
        # Malformed or dangling markers are dropped.
        (["xxbos", "xxrep", "great"], "great"),
        (["xxbos", "ok", "xxmaj"], "ok"),
        (["xxbos", "he", "said", '"', "hi", '"', "and", "(", "left", ")", "."], 'he said "hi" and (left).'),
        (["xxbos", "good", "xxpad", "xxpad"], "good"),
        # xxup marks a whitespace-delimited chunk: "CAN’T" tokenizes back to xxup ca n’t ("CAn’t" would not).
        (["xxbos", "it", "’s", "xxup", "ca", "n’t"], "it’s CAN’T"),
        ([], ""),
    ],
)
def test_convert_tokens_to_string(tokens, decoded):
    tokenizer = AWDLSTMTokenizer.from_itos(list(SPECIAL_TOKENS))
    assert tokenizer.convert_tokens_to_string(tokens) == decoded


def test_generated_continuation_appends_to_prompt():
    """The text-generation pipeline returns `prompt + decode(new_ids, skip_special_tokens=True)`."""
    prompt = "I liked this movie"
    tokenizer = tokenizer_covering(prompt, "It was great. Really, it's fine")
    prompt_ids = tokenizer(prompt)["input_ids"]
    for continuation, expected in [("It was great.", " It was great."), (", it's fine", ", it's fine")]:
        generated = prompt_ids + tokenizer(continuation, add_special_tokens=False)["input_ids"]
        new_text = tokenizer.decode(generated[len(prompt_ids) :], skip_special_tokens=True)
        assert prompt + new_text == prompt + expected


def test_skip_special_tokens_keeps_rule_markers(tokenizer):
    tokens = ["xxbos", "xxmaj", "it", "xxunk", "is", "xxup", "ok", "xxrep", "3", "!", "xxeos"]
    ids = tokenizer.convert_tokens_to_ids(tokens)
    assert tokenizer.decode(ids) == "xxbos It xxunk is OK!!! xxeos"
    assert tokenizer.decode(ids, skip_special_tokens=True) == "It is OK!!!"
    assert tokenizer.batch_decode([ids, ids[2:3]], skip_special_tokens=True) == ["It is OK!!!", " it"]


# ------------------------------------------------------------------------------------------------
# Saving and loading
# ------------------------------------------------------------------------------------------------


def test_save_and_load_round_trip(tokenizer, fastai_itos, tmp_path):
    saved = tokenizer.save_pretrained(tmp_path)
    assert str(tmp_path / "vocab.json") in saved
    assert json.loads((tmp_path / "vocab.json").read_text(encoding="utf-8")) == fastai_itos
    assert "\n\n▁" in fastai_itos  # a token with newlines survives the JSON list

    reloaded = AWDLSTMTokenizer.from_pretrained(tmp_path)
    assert reloaded.itos == fastai_itos
    assert len(reloaded) == 8768
    text = "This movie was GREAT!!!! I loved it.<br /><br /> Would watch again."
    assert reloaded(text)["input_ids"] == tokenizer(text)["input_ids"]
    assert reloaded.tokenize("hello xxbos") == ["hello", "xxbos"]
    assert reloaded.all_special_tokens == tokenizer.all_special_tokens


def test_load_without_vocab_file_fails_clearly(tokenizer, tmp_path):
    tokenizer.save_pretrained(tmp_path)
    (tmp_path / "vocab.json").unlink()
    with pytest.raises(ValueError, match="vocab.json"):
        AWDLSTMTokenizer.from_pretrained(tmp_path)


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (b"{oops", "JSONDecodeError: Expecting property name"),
        (b'["xxunk", "xxpad"', "JSONDecodeError"),  # truncated
        (b'["xxunk", "\xff"]', "UnicodeDecodeError"),
        (b'{"xxunk": 0}', "a list of str\\), not a dict"),
    ],
    ids=["invalid", "truncated", "not-utf8", "not-a-list"],
)
def test_a_corrupt_vocab_file_is_an_error_naming_it(tokenizer, tmp_path, content, problem):
    tokenizer.save_pretrained(tmp_path)
    (tmp_path / "vocab.json").write_bytes(content)
    message = re.escape(f"cannot read the vocabulary {tmp_path / 'vocab.json'} ") + f".*{problem}"
    with pytest.raises(ValueError, match=message):
        AWDLSTMTokenizer.from_pretrained(tmp_path)


def test_file_works_as_remote_code(tmp_path):
    """Saved models carry this file for `trust_remote_code`: it must load on its own, spaCy optional."""
    import importlib.util

    from transformers.dynamic_module_utils import get_imports

    import awd_lstm_hf.tokenization_awd_lstm as module

    copy = shutil.copy(module.__file__, tmp_path / "tokenization_awd_lstm.py")
    assert "spacy" not in get_imports(copy)  # imported inside `try`, so not required by check_imports
    spec = importlib.util.spec_from_file_location("standalone_tokenization_awd_lstm", copy)
    standalone = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(standalone)
    tokenizer = standalone.AWDLSTMTokenizer.from_itos(SPECIAL_TOKENS)
    assert tokenizer.tokenize("Hi WORLD") == ["xxmaj", "hi", "xxup", "world"]


class _Evil:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return os.mkdir, (self.path,)


@pytest.mark.parametrize(
    ("payload", "global_name"),
    [
        (lambda path: os.system, "system"),
        (lambda path: [_Evil(str(path / "pwned"))], "mkdir"),
        (lambda path: ["ok", Path("x")], "pathlib"),
    ],
)
def test_read_itos_pickle_refuses_globals(tmp_path, payload, global_name):
    path = tmp_path / "itos.pkl"
    path.write_bytes(pickle.dumps(payload(tmp_path)))
    with pytest.raises(pickle.UnpicklingError, match=f"refusing to load the global .*{global_name}"):
        read_itos_pickle(path)
    assert not (tmp_path / "pwned").exists()


@pytest.mark.parametrize("content", [{"a": 1}, ("xxunk", "xxpad"), ["xxunk", 1], "xxunk", []])
def test_read_itos_pickle_requires_a_list_of_str(tmp_path, content):
    path = tmp_path / "itos.pkl"
    path.write_bytes(pickle.dumps(content))
    with pytest.raises(ValueError, match="vocabulary"):
        read_itos_pickle(path)


@pytest.mark.parametrize(
    "itos",
    [["a", "b", "c"], list(reversed(SPECIAL_TOKENS)), [*SPECIAL_TOKENS[:4], "the", *SPECIAL_TOKENS[4:]]],
    ids=["no-special-tokens", "reordered", "missing-marker"],
)
def test_a_vocabulary_not_laid_out_like_fastais_is_refused(itos):
    """The model's unk/pad/bos/eos ids are the positions of fastai's special tokens: any other layout
    would silently give those ids to other words."""
    with pytest.raises(ValueError, match="not a fastai vocabulary"):
        AWDLSTMTokenizer.from_itos(itos)
