"""Property tests of AWDLSTMTokenizer on arbitrary text (hypothesis): it never raises, and decoding
gives text that tokenizes back to the same tokens, unknown words as 'xxunk'.

spaCy makes each example cost milliseconds, so the example counts are modest; hypothesis' database
replays any failure it found first on the next run.
"""

import json
import re
from collections import Counter

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from awd_lstm_hf.tokenization_awd_lstm import (
    SPECIAL_TOKENS,
    TK_REP,
    TK_WREP,
    UNK,
    _ALL_CAPS,
    AWDLSTMTokenizer,
    _is_whitespace_token,
    fastai_tokenize_batch,
    read_itos_pickle,
)

PROPERTY = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Any text at all: every code point, lone surrogates, control characters and NUL included.
ANY_TEXT = st.text(st.characters(codec=None, exclude_categories=()))
# Text that looks like a review: words, punctuation, clitics, markup, special token strings and words of
# any script (digits, emoji, combining marks, control characters, lone surrogates inside), joined by the
# spacing people type.
WORDS = st.sampled_from(["the", "movie", "was", "good", "I", "loved", "it", "Great", "BAD", "X-MEN", "9/10", "100%"])
PUNCTUATION = st.sampled_from([".", ",", "!", "?", "...", "(", ")", '"', "'", "n't", "'s", "-", "$", "#", "<br />", "&amp;"])
ODD = st.sampled_from(["xxbos", "xxpad", "xxunk", "xxeos", "xxfld", "xxfake", "😀", "e\u0301", "\x00", "\ud800"])
WORDISH = st.text(st.characters(codec=None, categories=("L", "M", "N", "So", "Cc", "Cs")), min_size=1, max_size=6)
SEPARATORS = st.sampled_from(["", " ", " ", "\n", "  "])


def joined(pieces):
    return st.lists(st.tuples(pieces, SEPARATORS), max_size=14).map(lambda pairs: "".join(p + sep for p, sep in pairs))


REVIEWLIKE = joined(st.one_of(WORDS, PUNCTUATION, ODD, WORDISH))
# Pieces whose spacing decides how spaCy and fastai's case rules split them: clitics and apostrophes glued or not
# to words of spaCy's exception table ("'cause", "'em", "goin'"), hyphens after a chunk ending in a clitic
# ("20's - x") or next to a capital ('I-max', 'B-side'), quotes, brackets and currency. Written without a
# space, some pairs read as other tokens; decoding must keep that space.
GLUE_PRONE = st.sampled_from(["20", "'s", "s", "-", "'", "cause", "em", "bout", "Indians", "waiting", "do",
                              "n't", "x", "men", "goin", "o", "clock", "(", ")", ",", ".", '"', "$", "5", "B", "I",
                              "So", "side", "they", "'ve"])
GLUE_PRONE_TEXT = st.lists(st.tuples(GLUE_PRONE, st.sampled_from(["", " "])), max_size=10).map(
    lambda pairs: "".join(p + sep for p, sep in pairs))
# Anything between the pieces too: arbitrary runs of symbols and punctuation.
TEXTLIKE = joined(st.one_of(WORDS, PUNCTUATION, ODD, st.text(max_size=6)))
# A literal rule marker in the input ('xxmaj', 'xxup', 'xxrep', 'xxwrep') is, after tokenizing, the same
# token as the marker fastai's rules write, and decoding reads it as one: by design, as in fastai.
RULE_MARKER_TEXT = re.compile("xx(maj|up|w?rep)", re.IGNORECASE)


def repeated_word_run(tokens: list[str]) -> bool:
    """A word three or more times in a row (only whitespace between). tokenize(x) never holds one (fastai's
    word-repeat rule folded it), so decoding made it: distinct unknown words all became 'xxunk', or a
    literal 'xxbos' followed the leading one. fastai folds it into 'xxwrep n ...' when the decoded text is
    tokenized."""
    words, rest = [], list(tokens)
    while rest:  # 'xxwrep 3 w' counts as three w; a word is compared with its case marker ('XXUNK XXUNK')
        if rest[0] == TK_WREP and len(rest) > 2 and rest[1].isdecimal():
            count, rest = int(rest[1]), rest[2:]
        else:
            count = 1
        marker = rest.pop(0) if rest[0] in ("xxup", "xxmaj") and len(rest) > 1 else None
        word = rest.pop(0)
        words += [(None if word == "i" else marker, word)] * count  # 'i', 'xxmaj i', 'xxup i' are all 'I'
    run, last = 0, None
    for token in words:
        if _is_whitespace_token(token[1]):
            continue
        if run >= 2 and token[0] == last[0] and re.fullmatch(re.escape(last[1]) + r"\W.*", token[1], re.DOTALL):
            return True  # the rule's third word may run into punctuation: 'xxunk xxunk xxunk-'
        run, last = (run + 1 if token == last else 1), token
        if run >= 3:
            return True
    return False


def unknown_in_one_letter_capital_chunk(tokens: list[str]) -> bool:
    """'A:' is 'xxup a :' (fastai marks chunks of 2+ characters, so the decoder glues what follows a marked
    one-letter token); when the rest of that chunk became the word 'xxunk', the chunk can't be rebuilt. Nor
    can 'Ive' ('xxmaj i ve'), "B20's" or "B('s" once "'s" is unknown ('xxmaj' chunks go on until a lowercase
    letter follows their capital, which the unknown word held): 'I xxunk' loses the marker, 'Ixxunk' is one word."""
    for index, token in enumerate(tokens[:-1]):
        if token == "xxmaj":
            rest = [tokens[index + 1][1:], *tokens[index + 2 :]]
            awaited = next((i for i, following in enumerate(rest) if re.search("[a-z]", following)), len(rest))
            if UNK in rest[: awaited + 1]:
                return True
        if token == "xxup" and len(tokens[index + 1]) == 1:
            for following in tokens[index + 2 :]:
                if _is_whitespace_token(following):
                    break
                if following == UNK:
                    return True
    return False


def stable_alone(tokens: list[str]) -> bool:
    """Every word token tokenizes to itself on its own. spaCy splits a chunk from its ends, so a token it
    kept whole only because of its neighbours ('æœ∑´' inside '…æœ∑´®', 'yx?' inside 'yx?®') splits when
    decoding puts it between spaces: the decoder cannot know which neighbours were glued in the source."""
    words = sorted({t for t in tokens if not _is_whitespace_token(t) and t not in SPECIAL_TOKENS})
    return all(alone == ["xxbos", word] for word, alone in zip(words, fastai_tokenize_batch(words)))


# fastai's `replace_all_caps` regex, verbatim (fastai/text/core.py)
FASTAI_ALL_CAPS = re.compile(r"(\s|^)([A-Z]+[^a-z\s]*)(?=(\s|$))")
# Text rich in what the all-caps rule looks at: capitals, lowercase, digits, punctuation, non-ASCII letters, spaces.
CAPITALS_RICH = st.text(
    st.sampled_from([*"ABCXYZ" * 3, *"abz", *"09", *".,'!-_", "É", "é", "ß", " ", " ", "\t", "\n"]), max_size=40
)


@settings(PROPERTY, max_examples=2000)
@given(CAPITALS_RICH)
def test_all_caps_regex_finds_what_fastais_finds(text):
    """Our all-caps regex (linear time) matches the same chunks, with the same groups, as fastai's."""

    def matches(pattern):
        return [(match.span(), match[1], match[2]) for match in pattern.finditer(text)]

    assert matches(_ALL_CAPS) == matches(FASTAI_ALL_CAPS)


def repeat_counts(tokens: list[str]) -> set[str]:
    return {count for marker, count in zip(tokens, tokens[1:]) if marker in (TK_REP, TK_WREP)}


@PROPERTY
@given(st.one_of(ANY_TEXT, TEXTLIKE))
def test_tokenizer_never_raises_and_always_starts_with_bos(text):
    tokenizer = AWDLSTMTokenizer.from_itos([*SPECIAL_TOKENS, "the", "movie", "."])
    tokens = tokenizer.tokenize(text)
    ids = tokenizer(text)["input_ids"]
    assert ids[0] == tokenizer.bos_token_id and len(ids) == len(tokens) + 1
    assert ids[1:] == [tokenizer.convert_tokens_to_ids(t) for t in tokens]  # unknown tokens are 0 (xxunk)
    assert all(isinstance(t, str) and t for t in tokens)
    for skip in (False, True):
        assert isinstance(tokenizer.decode(ids, skip_special_tokens=skip), str)


@PROPERTY
@given(REVIEWLIKE, st.data())
def test_decoded_text_tokenizes_back_with_unknown_words_as_xxunk(text, data):
    assert_decoded_text_tokenizes_back(text, data)


@settings(PROPERTY, max_examples=300)
@given(GLUE_PRONE_TEXT, st.data())
def test_decoding_keeps_the_spaces_spacy_splits_by(text, data):
    """The same property, densely over the pieces whose spacing spaCy reads ("' cause" is two tokens,
    "'cause" one; "20's - x" is "20", "'s", '-', 'x' but "20's-x" is "20's", '-', 'x')."""
    assert_decoded_text_tokenizes_back(text, data)


def assert_decoded_text_tokenizes_back(text, data):
    """tokenize(decode(encode(x))) == tokenize(x) with out-of-vocabulary tokens replaced by 'xxunk'.

    The vocabulary holds every token of x but a drawn subset of its words, which become unknown. Outside
    the property, by design: literal rule markers and '▁' in x, repeat counts missing from the vocabulary (the
    marker can't be read without them), a word three times in a row made by decoding (see
    `repeated_word_run`), a one-letter capital whose chunk's rest became unknown, words whose case mapping does not round-trip ('ß'.upper() is 'SS') and words spaCy only
    kept whole because of their neighbours (see `stable_alone`). Arbitrary runs of symbols and punctuation
    ('A( 0', 'A0t') are not drawn: the decoder guesses where the source had spaces from the tokens alone,
    and spaCy splits such runs by context that the tokens do not keep."""
    # A literal '▁' is the character fastai writes for spaces inside whitespace tokens: decoded as a space.
    assume(not RULE_MARKER_TEXT.search(text) and "▁" not in text)
    tokens = fastai_tokenize_batch([text])[0]
    assume(all(t.upper().lower() == t for t in tokens) and stable_alone(tokens))
    words = sorted({t for t in tokens if not _is_whitespace_token(t) and t not in SPECIAL_TOKENS} - repeat_counts(tokens))
    unknown = set(data.draw(st.lists(st.sampled_from(words), unique=True))) if words else set()
    tokenizer = AWDLSTMTokenizer.from_counts(Counter(t for t in tokens if t not in unknown), min_freq=1)
    vocab = tokenizer.get_vocab()  # without 'xxfake', which fastai maps to 0 like any unknown token
    expected = [t if t in vocab else UNK for t in tokens[1:]]
    assume(not repeated_word_run(["xxbos", *expected]))
    assume(not unknown_in_one_letter_capital_chunk(expected))

    ids = tokenizer(text)["input_ids"]
    decoded = tokenizer.decode(ids)  # special tokens shown: 'xxbos' first, a literal 'xxpad' kept
    assert tokenizer.tokenize(decoded) == ["xxbos", *expected]
    assert tokenizer.tokenize(tokenizer.decode(ids[1:])) == expected


def test_decode_keeps_bos_and_pad_unless_skipping_special_tokens():
    tokenizer = AWDLSTMTokenizer.from_itos([*SPECIAL_TOKENS, "good", "."])
    ids = tokenizer.convert_tokens_to_ids(["xxpad", "xxpad", "xxbos", "good", "xxunk", ".", "xxeos"])
    assert tokenizer.decode(ids) == "xxpad xxpad xxbos good xxunk. xxeos"
    assert tokenizer.decode(ids, skip_special_tokens=True) == "good."
    # A case marker belongs to the token after it: skipping that token skips its capital too.
    marked = tokenizer.convert_tokens_to_ids(["xxbos", "xxmaj", "xxunk", "good", "xxup", "xxbos", "xxeos"])
    assert tokenizer.decode(marked, skip_special_tokens=True) == "good"
    assert tokenizer.decode(marked) == "xxbos Xxunk good XXBOS xxeos"


def test_text_made_of_special_token_strings_round_trips():
    """fastai never splits text on special token strings: 'xxbos xxunk xxpad' is three words that happen to
    be the special tokens, encoded as their ids after the real leading xxbos, and shown by decode."""
    tokenizer = AWDLSTMTokenizer.from_itos(list(SPECIAL_TOKENS))
    ids = tokenizer("xxbos xxunk xxpad")["input_ids"]
    assert ids == [2, 2, 0, 1]
    assert tokenizer.decode(ids) == "xxbos xxbos xxunk xxpad"
    assert tokenizer.tokenize(tokenizer.decode(ids[1:])) == ["xxbos", "xxunk", "xxpad"]
    assert tokenizer.decode(ids, skip_special_tokens=True) == ""


def test_capitals_decode_to_text_that_tokenizes_back():
    """xxup marks a whole whitespace-delimited chunk and xxmaj a chunk that starts after whitespace, so the
    decoded text must keep a chunk in capitals across spaCy's splits and not glue a marked word to '('."""
    text = "IT'S GREAT, CAN'T WAIT for X-MEN ( Great ) O` 100% ok %"
    tokens = fastai_tokenize_batch([text])[0]
    tokenizer = AWDLSTMTokenizer.from_counts(Counter(tokens), min_freq=1)
    decoded = tokenizer.decode(tokenizer(text)["input_ids"], skip_special_tokens=True)
    assert decoded == "IT'S GREAT, CAN'T WAIT for X-MEN ( Great) O` 100% ok %"
    assert ["xxbos", *tokenizer.tokenize(decoded)] == tokens


@pytest.mark.parametrize(
    ("text", "decoded"),
    [
        # Two IMDB reviews (unsupervised split): spaCy splits "'s" off the end of a chunk only, so "20's-waiting"
        # is "20's", '-', 'waiting'; and "'cause" is one token (spaCy's exception table), so is "goin'".
        ("in my 20's - waiting for", "in my 20's - waiting for"),
        ("the Indians' cause, and also", "the Indians ' cause, and also"),
        ("it's - x and its-x, (x) - y", "it's - x and its-x, (x) - y"),
        ("goin ' on, goin' on ' em", "goin 'on, goin' on' em"),
        ("X-Men's 'em and 'cause ' cause", "x-men's 'em and 'cause ' cause"),
        ("the film - they've missed", "the film - they've missed"),  # "film-they've" keeps "they've" whole
        # fastai's case rules read whitespace chunks: a lone 'I' joined by a hyphen would mark ('I-max' is
        # 'xxmaj i - max') or unmark ('Note-I' is no 'xxmaj') the chunk, so it keeps its spaces
        ("Note - I watched, and I-Max glasses", "Note - I watched, and I - max glasses"),
        # an 'xxmaj' chunk goes on until a lowercase letter follows its capital: 'R--' alone is 'xxup r--'
        ("an R--a rare B.b film", "an R--a rare B.b film"),
        # a repeat is spaced out by fastai's rule: 'so-ooo' would be 'so-', and '((((' 'xxrep 4 ('
        ("so - ooo and ( (((", "so - ooo and ( ((("),
    ],
)
def test_decoding_keeps_the_space_where_spacy_would_read_the_glued_chunk_otherwise(text, decoded):
    tokens = fastai_tokenize_batch([text])[0]
    tokenizer = AWDLSTMTokenizer.from_counts(Counter(tokens), min_freq=1)
    assert tokenizer.decode(tokenizer(text)["input_ids"], skip_special_tokens=True) == decoded
    assert ["xxbos", *tokenizer.tokenize(decoded)] == tokens


def test_a_hyphen_joins_an_unknown_word_where_spacy_splits_it_back_off():
    """'B-efficiency' is 'xxmaj b - efficiency': with 'efficiency' unknown, 'B-xxunk' gives 'xxmaj b - xxunk'
    back, while 'B- xxunk' would be 'xxup b-', 'xxunk' (an IMDB review)."""
    tokenizer = AWDLSTMTokenizer.from_itos([*SPECIAL_TOKENS, "the", "b", "-", "with"])
    ids = tokenizer("the B-efficiency with")["input_ids"]
    assert tokenizer.convert_ids_to_tokens(ids) == ["xxbos", "the", "xxmaj", "b", "-", "xxunk", "with"]
    assert tokenizer.decode(ids[1:]) == " the B-xxunk with"
    assert tokenizer.tokenize(" the B-xxunk with") == ["the", "xxmaj", "b", "-", "xxunk", "with"]


def test_imdb_reviews_decode_to_text_that_gives_fastais_tokens_back(fixtures_dir):
    """The 316 IMDB reviews fastai tokenized (its own output is the fixture): decoding their ids gives text
    that tokenizes to fastai's tokens again, and with fastai's 8,768-word vocabulary to them with unknown
    words as 'xxunk' (but where decoding made a word repeat, see `repeated_word_run`)."""
    records = [json.loads(line) for line in (fixtures_dir / "fastai_tokenizer" / "imdb_train_sample.jsonl").open()]
    covering = AWDLSTMTokenizer.from_counts(Counter(t for r in records for t in r["tokens"]), min_freq=1)
    fastai_vocab = AWDLSTMTokenizer.from_itos(read_itos_pickle(fixtures_dir / "fastai_vocab" / "itos.pkl"))
    vocab, compared = fastai_vocab.get_vocab(), 0
    for record in records:
        ids = covering(record["text"])["input_ids"]
        assert ["xxbos", *covering.tokenize(covering.decode(ids, skip_special_tokens=True))] == record["tokens"]
        expected = [t if t in vocab else UNK for t in record["tokens"][1:]]
        if repeated_word_run(expected) or unknown_in_one_letter_capital_chunk(expected) or TK_REP in expected:
            continue
        compared += 1
        decoded = fastai_vocab.decode(fastai_vocab(record["text"])["input_ids"][1:])
        assert fastai_vocab.tokenize(decoded) == expected, record["text"][:80]
    assert compared >= 240  # 246 of the 316 reviews
