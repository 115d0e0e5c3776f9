# Copyright 2025 The awd-lstm-hf authors.
#
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#
#     http://www.apache.org/licenses/LICENSE-2.0
#
# Unless required by applicable law or agreed to in writing, software
# distributed under the License is distributed on an "AS IS" BASIS,
# WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
# See the License for the specific language governing permissions and
# limitations under the License.
"""fastai's default text pipeline (rules + spaCy) and vocabulary as a `transformers` tokenizer.

This file is copied next to saved models for `trust_remote_code`, so it only imports the standard
library, `transformers` and (optionally) spaCy.
"""

import functools
import html
import json
import os
import pickle
import re
from collections import Counter
from collections.abc import Iterable, Mapping

from transformers import AddedToken, PreTrainedTokenizer

try:
    import spacy
except ImportError:
    spacy = None


VOCAB_FILES_NAMES = {"vocab_file": "vocab.json"}

UNK, PAD, BOS, EOS, FLD = "xxunk", "xxpad", "xxbos", "xxeos", "xxfld"
TK_REP, TK_WREP, TK_UP, TK_MAJ = "xxrep", "xxwrep", "xxup", "xxmaj"
FAKE = "xxfake"
# fastai's `defaults.text_spec_tok`: every fastai vocabulary starts with these, in this order.
SPECIAL_TOKENS = (UNK, PAD, BOS, EOS, FLD, TK_REP, TK_WREP, TK_UP, TK_MAJ)
# fastai maps every token missing from the vocabulary to id 0 (`o2i` is a `defaultdict(int)`).
UNK_ID = 0


# ----------------------------------------------------------------------------------------------
# Pre-tokenization rules (fastai's `defaults.text_proc_rules`, applied in this order)
# ----------------------------------------------------------------------------------------------

# Plain substring replacements, in fastai's order. Some are lossy on purpose ('&amp;' -> '&&',
# '...' -> ' …'): the vocabularies of pretrained fastai models were built from this exact output.
_HTML_FIXES = (
    ("#39;", "'"),
    ("amp;", "&"),
    ("#146;", "'"),
    ("nbsp;", " "),
    ("#36;", "$"),
    ("\\n", "\n"),
    ("quot;", "'"),
    ("<br />", "\n"),
    ('\\"', '"'),
    ("<unk>", UNK),
    (" @.@ ", "."),
    (" @-@ ", "-"),
    ("...", " …"),
)
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")
_CHAR_REPEAT = re.compile(r"(\S)(\1{2,})")
_WORD_REPEAT = re.compile(r"(?:\s|^)(\w+)\s+((?:\1\s+)+)\1(\s|\W|$)")
_SPLIT_CHARS = re.compile(r"([/#\\])")
_SPACE_RUN = re.compile(" {2,}")
# fastai writes `[A-Z]+[^a-z\s]*`: the same chunks, since [A-Z] is in [^a-z\s], but two quantifiers over the
# same capitals backtrack quadratically on a capitals chunk ending in a lowercase letter ('ACGT...s').
_ALL_CAPS = re.compile(r"(\s|^)([A-Z][^a-z\s]*)(?=\s|$)")
_CAPITALISED = re.compile(r"(\s|^)([A-Z][^A-Z\s]*)(?=\s|$)")


def _replace_lone_surrogates(text: str) -> str:
    """Replace unpaired surrogates (not encodable as UTF-8, spaCy would crash) by U+FFFD."""
    return _LONE_SURROGATE.sub("\ufffd", text)


def _fix_html(text: str) -> str:
    """Undo the HTML and WikiText debris of web text the way fastai does, then unescape entities."""
    for old, new in _HTML_FIXES:
        text = text.replace(old, new)
    return html.unescape(text)


def _mark_char_repeats(text: str) -> str:
    """'cccc' -> ' xxrep 4 c ': a character repeated 3+ times becomes one marker, a count and the char."""
    return _CHAR_REPEAT.sub(lambda m: f" {TK_REP} {len(m[2]) + 1} {m[1]} ", text)


def _mark_word_repeats(text: str) -> str:
    """'w w w w' -> ' xxwrep 4 w ': a word repeated 3+ times (any whitespace between) becomes one marker."""
    return _WORD_REPEAT.sub(lambda m: f" {TK_WREP} {len(m[2].split()) + 2} {m[1]} {m[3]}", text)


def _space_out_split_chars(text: str) -> str:
    """Put spaces around '/', '#' and '\\' so that spaCy splits on them (URLs, '9/10', '#1')."""
    return _SPLIT_CHARS.sub(r" \1 ", text)


def _collapse_spaces(text: str) -> str:
    """Collapse runs of U+0020 spaces (only those: tabs and newlines are kept as tokens)."""
    return _SPACE_RUN.sub(" ", text)


def _mark_all_caps(text: str) -> str:
    """'GREAT' -> 'xxup great' for whitespace-delimited chunks in capitals (a lone capital is just lowered)."""
    return _ALL_CAPS.sub(lambda m: m[1] + (f"{TK_UP} " if len(m[2]) > 1 else "") + m[2].lower(), text)


def _mark_capitalised(text: str) -> str:
    """'Word' -> 'xxmaj word' for chunks with one leading capital ('I' and 'A' are just lowered)."""
    return _CAPITALISED.sub(lambda m: m[1] + (f"{TK_MAJ} " if len(m[2]) > 1 else "") + m[2].lower(), text)


def _lower_and_add_bos(text: str) -> str:
    """Lowercase everything (the markers keep the case), strip, and start the document with 'xxbos'."""
    return f"{BOS} " + text.lower().strip()


_RULES = (
    _replace_lone_surrogates,
    _fix_html,
    _mark_char_repeats,
    _mark_word_repeats,
    _space_out_split_chars,
    _collapse_spaces,
    _mark_all_caps,
    _mark_capitalised,
    _lower_and_add_bos,
)


def apply_fastai_rules(text: str) -> str:
    """Run fastai's default pre-tokenization rules on one raw text (the result starts with 'xxbos')."""
    for rule in _RULES:
        text = rule(text)
    return text


@functools.cache
def _spacy_tokenizer():
    """spaCy's blank-English tokenizer, as fastai uses it, built once per process (on first use).

    fastai also registers its special tokens as spaCy special cases. Those change no output, since
    spaCy's English rules never split a run of lowercase letters (the tests check it), but every
    special-case hit turns spaCy's cache off for the rest of the document: 3 to 4 times slower.
    """
    if spacy is None:
        raise ImportError("AWDLSTMTokenizer needs spaCy 3.8 to tokenize text: pip install 'spacy>=3.8,<3.9'")
    return spacy.blank("en").tokenizer


def fastai_tokenize_batch(texts: Iterable[str]) -> list[list[str]]:
    """Tokenize raw texts exactly like fastai's training path, leading 'xxbos' included.

    Rules, then spaCy, then the post-rule turning spaces inside (whitespace) tokens into '▁', which is
    the form fastai vocabularies are built from. The spaCy tokenizer is a per-process module cache,
    so this plain function pickles and hashes deterministically for `datasets.map(num_proc=...)`.
    """
    docs = _spacy_tokenizer().pipe(apply_fastai_rules(text) for text in texts)
    return [[token.text.replace(" ", "▁") for token in doc] for doc in docs]


# ----------------------------------------------------------------------------------------------
# Vocabulary
# ----------------------------------------------------------------------------------------------


def build_vocab(token_counts: Mapping[str, int], min_freq: int = 3, max_vocab: int = 60000) -> list[str]:
    """fastai's `make_vocab`: the itos list of a new vocabulary.

    The `max_vocab` most common tokens are taken first and then filtered by `min_freq` (ties keep the
    insertion order of `token_counts`); the special tokens are moved to the front, the list is cut to
    `max_vocab`, and 1 to 8 'xxfake' entries pad it to a multiple of 8 (8 when it already is one).
    """
    vocab = [token for token, count in Counter(token_counts).most_common(max_vocab) if count >= min_freq]
    for token in reversed(SPECIAL_TOKENS):
        if token in vocab:
            vocab.remove(token)
        vocab.insert(0, token)
    vocab = vocab[:max_vocab]
    return vocab + [FAKE] * (8 - len(vocab) % 8)


class _NoGlobalsUnpickler(pickle.Unpickler):
    """An unpickler that refuses every global, so a malicious pickle cannot run code."""

    def find_class(self, module, name):
        raise pickle.UnpicklingError(
            f"refusing to load the global '{module}.{name}': a fastai itos.pkl only holds a list of str"
        )


def check_itos(itos, source: str) -> list[str]:
    """Return `itos` if it is a fastai vocabulary: a list of str starting with fastai's special tokens in
    their order (the model's unk, pad, bos and eos ids are their positions), else raise a ValueError
    naming `source`."""
    if not isinstance(itos, list):
        raise ValueError(f"{source} should hold a vocabulary (a list of str), not a {type(itos).__name__}")
    for index, token in enumerate(itos):
        if not isinstance(token, str):
            raise ValueError(
                f"{source} should hold a vocabulary (a list of str): entry {index} is a {type(token).__name__}"
            )
    if tuple(itos[: len(SPECIAL_TOKENS)]) != SPECIAL_TOKENS:
        raise ValueError(
            f"{source} is not a fastai vocabulary: it should start with {list(SPECIAL_TOKENS)}, "
            f"got {itos[: len(SPECIAL_TOKENS)]}"
        )
    return itos


def read_itos_pickle(path: str | os.PathLike) -> list[str]:
    """Read fastai's `itos.pkl` (a pickled list of str) without allowing any global in the pickle."""
    with open(path, "rb") as f:
        try:
            itos = _NoGlobalsUnpickler(f).load()
        except pickle.UnpicklingError as error:
            raise pickle.UnpicklingError(f"{path}: {error}") from None
        except Exception as error:  # not a pickle at all: the unpickler's own message is cryptic
            raise pickle.UnpicklingError(
                f"{path} is not a readable pickle of a vocabulary ({type(error).__name__}: {error})"
            ) from None
    return check_itos(itos, str(path))


def read_itos_text(path: str | os.PathLike) -> list[str]:
    """A vocabulary written one token per line (UTF-8, lines split on '\\n' only). fastai vocabularies
    often hold tokens with line breaks ('\\n\\n'), which this format cannot store: an empty line is
    refused rather than silently shifting every id after it."""
    with open(path, encoding="utf-8", newline="") as f:
        lines = f.read().split("\n")
    if lines[-1] == "":
        lines.pop()  # the final newline
    if "" in lines:
        raise ValueError(
            f"{path}: line {lines.index('') + 1} is empty. A text vocabulary holds one token per line, so "
            "tokens containing line breaks (fastai's '\\n\\n', '\\n\\n▁') cannot be stored in it: use the "
            "itos.pkl or a .json list"
        )
    return check_itos(lines, str(path))


def read_itos(path: str | os.PathLike) -> list[str]:
    """A fastai vocabulary from `itos.pkl` (no pickled global allowed), a `.json` list of str or a `.txt`
    file with one token per line; any problem is a ValueError naming the file."""
    suffix = os.path.splitext(path)[1]
    try:
        if suffix == ".json":
            with open(path, encoding="utf-8") as f:
                return check_itos(json.load(f), str(path))
        return read_itos_text(path) if suffix == ".txt" else read_itos_pickle(path)
    except (pickle.UnpicklingError, EOFError, ValueError) as error:  # JSON and Unicode errors are ValueErrors
        raise ValueError(
            f"cannot read the vocabulary {path} (expected fastai's itos.pkl, a .json list of strings or a "
            f".txt file with one token per line): {type(error).__name__}: {error}"
        ) from error


# ----------------------------------------------------------------------------------------------
# Detokenization
# ----------------------------------------------------------------------------------------------

# A token starting with one of these closes something or is trailing punctuation: no space before it.
_NO_SPACE_BEFORE = frozenset(".,!?;:)]}…”’»")
# After one of these tokens the next token follows without a space ('$12', '(word', '#1', '9/10').
_NO_SPACE_AFTER = frozenset(["(", "[", "{", "“", "‘", "«", "$", "#", "/", "\\"])
# spaCy splits English clitics off their word ("do n't", "it 's"); glue them back.
_CLITICS = frozenset(
    clitic.replace("'", apostrophe) for clitic in ("n't", "'s", "'m", "'re", "'ve", "'ll", "'d") for apostrophe in "'’"
)
_QUOTES = frozenset(['"', "'"])
_SPLIT_TOKENS = frozenset(["/", "#", "\\"])


def _is_whitespace_token(token: str) -> bool:
    return token.replace("▁", " ").isspace()


def _glues_to_previous(chunk: tuple[str, ...], token: str) -> bool:
    """Closing punctuation ('.', '…', ')') follows the previous word without a space where spaCy splits it
    back off (its suffix rules: '@.' or 'ok%' stay one token, '100%' does not). A token that merely starts
    with one ('.it', ':-)') was split by a space and would merge into the word. Without spaCy (decoding
    only), any token made of closing punctuation is glued."""
    if not set(token) <= _NO_SPACE_BEFORE | {"%"}:
        return False
    if spacy is None:
        return token != "%"
    return _spacy_splits(chunk, token)


@functools.lru_cache(maxsize=65536)
def _spacy_splits(chunk: tuple[str, ...], token: str) -> bool:
    """Whether spaCy reads the tokens of a whitespace-delimited chunk followed by `token`, written without
    spaces, back as those tokens (its suffix rules, exceptions such as the abbreviation 'a.', prefixes as in
    "'s." = "'", "s."). False for an empty chunk."""
    return bool(chunk) and [t.text for t in _spacy_tokenizer()("".join(chunk) + token)] == [*chunk, token]


def _hyphen_splits_off(left: tuple[str, ...], right: str, following: str | None) -> bool:
    """Whether spaCy reads the chunk `left`, '-' and `right` written without spaces back as those tokens: a
    hyphen between a letter or digit and a letter ('x-men', 'B-xxunk'; '9-10' and 'xxunk-ª' stay one token),
    where the whole chunk keeps its splits ("20's-waiting" is "20's", '-', 'waiting': spaCy splits "'s" off a
    chunk's end only), and a clitic `following` that splits off `right` still does ("film-they've" keeps
    "they've" whole). Without spaCy, between ASCII letters or digits of words (not special tokens)."""
    if not left:
        return False
    if spacy is None:
        last = left[-1][-1:]
        return (left[-1] not in SPECIAL_TOKENS and right not in SPECIAL_TOKENS and last.isascii() and last.isalnum()
                and right[:1].isascii() and right[:1].isalpha())
    if (following is not None and following.lower() in _CLITICS and _spacy_splits((right,), following)
            and not _spacy_splits((*left, "-", right), following)):
        return False
    return _spacy_splits((*left, "-"), right)


def _glue_reads_back(chunk: tuple[str, ...], written: str, token: str) -> bool:
    """Whether `token` may follow `chunk`, whose text ends with `written`, without a space: fastai's repeat rule
    finds no new run of a character across the join ("’’" + "’" would be 'xxrep 3 ’'), and spaCy reads the
    glued chunk back as its tokens ("'cause" after an opening quote is one token: "' cause" keeps its space;
    assumed without spaCy, when decoding only), or fastai's rules space them out anyway ('/', '#', '\\')."""
    if not chunk or token in _SPLIT_TOKENS or chunk[-1] in _SPLIT_TOKENS:
        return True
    char, before, after = token[0].lower(), written.lower(), token.lower()  # lowered: at worst a needless space
    if before.endswith(char) and len(before) - len(before.rstrip(char)) + len(after) - len(after.lstrip(char)) >= 3:
        return False
    return spacy is None or _spacy_splits(chunk, token)


def _clitic_splits_off(chunk: tuple[str, ...], clitic: str) -> bool:
    """Whether spaCy splits `clitic` back off the chunk before it written without a space: "'s" comes off
    most words, the others only off the words of spaCy's exception table ("do|n't", "they|'re", "ca|n't");
    "movien't" stays one token. Without spaCy (decoding only), clitics are glued to any word."""
    return bool(chunk) and (spacy is None or _spacy_splits(chunk, clitic))


def _detokenize(tokens: list[str], hidden: frozenset[str] = frozenset([BOS, PAD])) -> str:
    """Readable text from fastai tokens: undo the markers, glue punctuation, clitics and line breaks.

    A word-starting first token gets a leading space, since callers such as the text-generation
    pipeline append the result to the prompt; a leading 'xxbos' or 'xxpad' (a whole, maybe padded,
    document) means no space. Tokens in `hidden` are left out together with a case or repeat marker
    before them (that marker was theirs); other special tokens are shown as words.

    'xxup' capitalises the whole whitespace-delimited chunk it starts ("CAN'T", "X-MEN"), as fastai's
    rule marks a chunk, not a spaCy token, so that tokenizing the decoded text gives the tokens back.
    """
    pieces = []
    glue_next = bool(tokens) and tokens[0] in (BOS, PAD)  # a whole document: no leading space
    case_marker = repeat_marker = None
    repeat_count = None
    upper_chunk = False  # inside a chunk that 'xxup' put in capitals
    after_hyphen = chunk_continues = lone_i = False
    awaits_lowercase = False  # in an 'xxmaj' chunk with no lowercase letter after its capital yet
    hyphen_left = ()  # the chunk before the last '-'
    chunk = ()  # the tokens written since the last space, which spaCy will read as one chunk
    previous = None  # the last token shown as a word, None at the start or after whitespace
    open_quotes = set()
    for index, token in enumerate(tokens):
        if repeat_marker is not None and repeat_count is None:
            if token.isdecimal():
                repeat_count = int(token)
                continue
            repeat_marker = None  # a marker without a count: drop it, keep the token
        if token in hidden:
            case_marker = repeat_marker = None
            continue
        if token in (TK_MAJ, TK_UP):
            case_marker = token
            continue
        if token in (TK_REP, TK_WREP):
            repeat_marker, repeat_count = token, None
            continue

        if _is_whitespace_token(token):
            pieces.append(token.replace("▁", " "))
            glue_next = True
            case_marker = repeat_marker = previous = None
            chunk = ()
            upper_chunk = lone_i = False
            continue

        continues_chunk = chunk_continues and token not in SPECIAL_TOKENS  # glued for the case marker's sake
        awaits_lowercase = awaits_lowercase and continues_chunk
        space = not glue_next and not continues_chunk
        glue_next, chunk_continues = token in _NO_SPACE_AFTER, False
        if token in _QUOTES:
            if token in open_quotes:
                open_quotes.remove(token)
                space = pieces[-1][-1:] in _QUOTES  # '' or "" would be one token
            else:
                open_quotes.add(token)
                glue_next = True
        elif token.lower() in _CLITICS:
            # glued at the start of a continuation ("do" + "n't"), else only where spaCy splits it back off
            space = space and bool(pieces) and not _clitic_splits_off(chunk, token)
        elif token in ("/", "\\"):
            space = False  # fastai's rules space out '/' and '\\' anyway: '9/10'
        elif token == "-":
            # glued to both neighbours once the next token shows spaCy splits it there, but never to a lone 'I':
            # its capital would mark or unmark the joined chunk ('So-I' is not 'xxmaj so - i', 'I-max' is)
            hyphen_left = () if lone_i else chunk
        elif _glues_to_previous(chunk, token) or (not pieces and set(token) <= _NO_SPACE_BEFORE):
            space = False  # also at the start of a continuation: ', and I loved it'
        if not (space or continues_chunk or repeat_marker or _glue_reads_back(chunk, "".join(pieces[-1:]), token)):
            # fastai's rules or spaCy would read the glued chunk as other tokens ("'" + "cause" is "'cause"). A
            # token glued for its case marker stays glued; fastai's rules space out a repeated one anyway.
            space = True
        if case_marker is not None and pieces and not _is_whitespace_token(pieces[-1]):
            # fastai's case rules only mark a chunk that starts after whitespace: "(Word" is never
            # marked, so a marked word after '(' or a quote had a space before it.
            space = True
        elif (after_hyphen and space and (token != "i" or upper_chunk) and repeat_marker is None
              and _hyphen_splits_off(hyphen_left, token, tokens[index + 1] if index + 1 < len(tokens) else None)):
            pieces[-1], space, chunk = "-", False, (*hyphen_left, "-")
        after_hyphen = token == "-" and repeat_marker is None
        if lone_i and not space:  # 'I.' is 'xxup i .' in fastai; an unmarked 'i' glued to '.' was 'i.'
            pieces[-1] = pieces[-1].lower()
        text = token
        if (space and not after_hyphen) or token in _SPLIT_TOKENS:  # a joining hyphen stays in the chunk  # fastai spaces out '/', '#' and '\\' before its case rules
            upper_chunk = False
        lone_i = token == "i" and case_marker is None and not upper_chunk  # written 'I', a chunk of its own
        if case_marker == TK_MAJ:
            text = text[:1].upper() + text[1:]
            # 'xxmaj' marks a chunk with lowercase letters [a-z] after its capital ('A0t' is 'xxmaj a0 t', 'R--a'
            # is 'xxmaj r -- a'): until a token has some, the next token was in the chunk (unless it is unknown)
            awaits_lowercase = chunk_continues = not re.search("[a-z]", text[1:])
        elif awaits_lowercase:
            awaits_lowercase = chunk_continues = not re.search("[a-z]", text)
        elif case_marker == TK_UP or upper_chunk or text == "i":  # fastai lowers a lone 'I' without a marker
            # fastai only marks chunks of 2+ characters: the next token was in it (unless it is unknown)
            chunk_continues = case_marker == TK_UP and len(text) == 1
            text = text.upper()
            upper_chunk = upper_chunk or case_marker == TK_UP
        case_marker = None

        if repeat_marker == TK_REP and len(token) != 1:
            text = f"{TK_REP} {repeat_count} {text}"  # fastai repeats one character: 'xxunk' can't be spelled out
        elif repeat_marker == TK_REP:
            # 's xxrep 4 o' was 'soooo' and '1 xxrep 3 0' was '1000': a run of letters or digits
            # most often continues the word before it (not a special token shown as a word, nor one ending
            # in the same character: fastai would have counted it in the run).
            if (text.isalnum() and previous not in (None, *SPECIAL_TOKENS) and pieces[-1][-1:].isalnum()
                    and pieces[-1][-1:] != text):
                space = False
            elif "".join(pieces[-1:])[-1:] == text:
                space = True  # '(' + '(((' would be 'xxrep 4 ('
            text *= repeat_count
        elif repeat_marker == TK_WREP:
            text = " ".join([text] * repeat_count)
        repeated, repeat_marker = repeat_marker is not None, None

        pieces.append(" " + text if space else text)
        previous = token
        chunk = (token,) if space or repeated else (*chunk, token)
    return "".join(pieces)


# ----------------------------------------------------------------------------------------------
# Tokenizer
# ----------------------------------------------------------------------------------------------


class AWDLSTMTokenizer(PreTrainedTokenizer):
    """
    fastai's default word-level text pipeline (spaCy 3.8 and fastai's rules) with a fastai vocabulary.

    `tokenize` gives fastai's tokens without the leading 'xxbos'; encoding with special tokens
    prepends it, as fastai does. Only 'xxunk', 'xxpad', 'xxbos' and 'xxeos' are special tokens: the
    rule markers ('xxmaj', 'xxup', 'xxrep', 'xxwrep', 'xxfld') are ordinary vocabulary entries, so
    `skip_special_tokens=True` keeps their effect on decoding. Input text is never split on special
    token strings: as in fastai, a literal 'xxbos' goes through the rules and spaCy like other text.

    The vocabulary is fastai's ordered itos list, duplicates included (fastai pads it to a multiple
    of 8 with 'xxfake'), so `len(tokenizer)` is the number of embedding rows. A token maps to its
    first position, 'xxfake' and unknown tokens to 0.

    Args:
        vocab_file (`str`, *optional*):
            The itos list as a JSON file (as written by `save_pretrained`), or any file `read_itos` reads.
        itos (`list[str]`, *optional*):
            The itos list itself, instead of `vocab_file` (see `from_itos`).
    """

    vocab_files_names = VOCAB_FILES_NAMES
    model_input_names = ["input_ids", "attention_mask"]

    def __init__(
        self,
        vocab_file: str | None = None,
        itos: list[str] | None = None,
        unk_token: str = UNK,
        pad_token: str = PAD,
        bos_token: str = BOS,
        eos_token: str = EOS,
        **kwargs,
    ):
        if itos is None:
            if vocab_file is None:
                source = kwargs.get("name_or_path") or "the arguments"
                raise ValueError(
                    f"No vocabulary for AWDLSTMTokenizer in {source}: pass `itos` or a `vocab_file` "
                    f"('{VOCAB_FILES_NAMES['vocab_file']}', written by save_pretrained)"
                )
            itos = read_itos(vocab_file)  # a corrupt file is a ValueError naming it
        else:
            itos = check_itos(list(itos), "itos")
        self._itos = itos
        self._token_to_id = {}
        for index, token in enumerate(itos):
            if token != FAKE:
                self._token_to_id.setdefault(token, index)

        kwargs.setdefault("special_tokens_pattern", "bos")
        # fastai never splits text on special token strings, and our decoding does its own spacing.
        kwargs.setdefault("split_special_tokens", True)
        kwargs.setdefault("clean_up_tokenization_spaces", False)
        super().__init__(unk_token=unk_token, pad_token=pad_token, bos_token=bos_token, eos_token=eos_token, **kwargs)

    @classmethod
    def from_itos(cls, itos: Iterable[str], **kwargs) -> "AWDLSTMTokenizer":
        """A tokenizer for a fastai vocabulary (e.g. `read_itos("itos.pkl")` or `learn.dls.vocab`)."""
        return cls(itos=list(itos), **kwargs)

    @classmethod
    def from_counts(
        cls, token_counts: Mapping[str, int], min_freq: int = 3, max_vocab: int = 60000, **kwargs
    ) -> "AWDLSTMTokenizer":
        """A tokenizer with a new vocabulary built from token counts, like fastai's `Numericalize`."""
        return cls.from_itos(build_vocab(token_counts, min_freq=min_freq, max_vocab=max_vocab), **kwargs)

    @property
    def itos(self) -> list[str]:
        """The vocabulary as fastai's ordered id -> token list (a copy)."""
        return list(self._itos)

    @property
    def vocab_size(self) -> int:
        return len(self._itos)

    def get_vocab(self) -> dict[str, int]:
        return {**self._token_to_id, **self._added_tokens_encoder}

    def _update_total_vocab_size(self):
        # One past the highest id: `len(get_vocab())` would miss the duplicate 'xxfake' entries.
        self.total_vocab_size = max(len(self._itos), max(self._added_tokens_decoder, default=-1) + 1)

    def _add_tokens(self, new_tokens: list[str] | list[AddedToken], special_tokens: bool = False) -> int:
        # PythonBackend numbers new tokens from `len(get_vocab())`, which is smaller than the itos when
        # it holds several 'xxfake' entries: new tokens would take the ids of existing rows.
        added = 0
        for token in new_tokens or []:
            if not isinstance(token, (str, AddedToken)):
                raise TypeError(f"Token {token!r} is not a str or an AddedToken but a {type(token)}.")
            content = str(token)
            if not content or content in self._added_tokens_encoder:
                continue
            if isinstance(token, str):
                is_special = special_tokens or content in self.all_special_tokens
                token = AddedToken(content, rstrip=False, lstrip=False, normalized=not is_special, special=is_special)
            elif special_tokens:
                token.special = True
            if content in self._token_to_id:
                index = self._token_to_id[content]
            else:
                index = len(self)
                added += 1
            if token.special and content not in self.all_special_tokens:
                self._extra_special_tokens.append(token)
            self._added_tokens_decoder[index] = token
            self._added_tokens_encoder[content] = index
            self._update_total_vocab_size()
        self._update_trie()
        return added

    def _tokenize(self, text: str, **kwargs) -> list[str]:
        return fastai_tokenize_batch([text])[0][1:]  # fastai's tokens minus the leading 'xxbos'

    def _convert_token_to_id(self, token: str) -> int:
        return self._token_to_id.get(token, UNK_ID)

    def _convert_id_to_token(self, index: int) -> str:
        if not 0 <= index < len(self._itos):
            raise IndexError(f"Token id {index} is outside the vocabulary (0 to {len(self._itos) - 1})")
        return self._itos[index]

    def convert_tokens_to_string(self, tokens: list[str]) -> str:
        return _detokenize(tokens)

    def _decode(
        self,
        token_ids: int | list[int],
        skip_special_tokens: bool = False,
        clean_up_tokenization_spaces: bool | None = None,
        **kwargs,
    ) -> str:
        tokens = self.convert_ids_to_tokens(token_ids)
        if isinstance(tokens, str):
            tokens = [tokens]
        # Like every transformers tokenizer, show the special tokens unless asked to skip them (all of them,
        # 'xxbos' and 'xxpad' included); the rule markers are never skipped, they are read.
        hidden = frozenset(self.all_special_tokens) if skip_special_tokens else frozenset()
        text = _detokenize(tokens, hidden)
        if clean_up_tokenization_spaces is None:
            clean_up_tokenization_spaces = self.clean_up_tokenization_spaces
        return self.clean_up_tokenization(text) if clean_up_tokenization_spaces else text

    def save_vocabulary(self, save_directory: str, filename_prefix: str | None = None) -> tuple[str]:
        if not os.path.isdir(save_directory):
            raise NotADirectoryError(f"Vocabulary path ({save_directory}) should be a directory")
        prefix = f"{filename_prefix}-" if filename_prefix else ""
        vocab_file = os.path.join(save_directory, prefix + VOCAB_FILES_NAMES["vocab_file"])
        with open(vocab_file, "w", encoding="utf-8") as f:
            json.dump(self._itos, f, indent=0)
            f.write("\n")
        return (vocab_file,)


__all__ = [
    "AWDLSTMTokenizer",
    "SPECIAL_TOKENS",
    "apply_fastai_rules",
    "build_vocab",
    "fastai_tokenize_batch",
    "read_itos",
    "read_itos_pickle",
    "read_itos_text",
]
