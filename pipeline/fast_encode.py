"""Exact fast encoding: our HF byte-level BPE vocabulary run on tiktoken's engine, where checked equal.

tiktoken and HF apply BPE differently. HF merges the adjacent pair with the lowest *merge rank*;
tiktoken merges the pair whose *concatenation* has the lowest *token id*, and returns a whole
pre-token directly when it is itself in the vocabulary. The two agree when ids follow merge order,
every token is made by exactly one merge, and no two tokens join into a third by any pair but its
merge; vocabularies trained by HF's BpeTrainer have that shape. `Encoder` checks the first two
exactly, the third through its consequence that every token's own text encodes (in HF) to that
token alone, then compares both engines on a probe text; it uses HF (without special-token
matching) if any check fails. These checks are strong evidence, not a proof (a review's fuzzing
found no vocabulary that passed them and still differed). `engine` says which one runs.
"""

from __future__ import annotations

import json
from itertools import chain
from pathlib import Path

import numpy as np
import tiktoken
from tokenizers import Tokenizer

from pipeline.tokenizer import BOS_ID, PAD_ID, SPECIALS, TokenizerError

# GPT-2's pre-tokenizer split, which HF's ByteLevel(use_regex=True) runs too: contractions, letter
# runs, digit runs, other-symbol runs (each optionally after one space), then whitespace. HF writes
# the whitespace branches `\s+(?!\S)|\s+`: a run before a word leaves its last char for the word
# (" world"), a run at the end is taken whole. This is tiktoken's r50k spelling of the same split:
# `\s++$` takes a final run whole, `\s+(?!\S)` the rest of a run but its last char, and the bare
# `\s` that last char when no word claims it (HF's `\s+` only ever matches one char there, since
# `\s+(?!\S)` already took any longer run). Possessive `++` cannot change a match that ends its
# branch; it stops the regex VM retrying shorter runs, ~15% faster. Tests prove equal splits.
GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s"""

# Exercises what the engines could disagree on: contractions, whitespace runs before words and at
# the end, tabs and newlines, digits, accents, CJK, emoji (multi-byte, ZWJ sequences), long words
# and repeated characters, and literal special-token strings (which must stay text).
PROBE = (
    "Hello, world! It's 'twas I'LL we've they'd. \n\n  Two  spaces,   three,\t\ttabs\t \n"
    "Numbers 1234567890 3.14159 1,000,000 and v2.0-rc1; email@example.com http://x.org/a?b=c\n"
    "Café naïve façade coöperate Ærøskøbing Straße ΑΒΓ αβγ Привет мир שלום مرحبا नमस्ते\n"
    "日本語のテキスト、中文文本。한국어 텍스트 🎭🎉👩‍👩‍👧 ✓ → ∑ ∞ ≠ ½ ² \u00a0nbsp \u3000ideographic\n"
    "[BOS] [PAD][SEP] <|endoftext|> [MASK]text [UNK]\n"
    "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa ------------------------ ............ !!!!!!!!!!!\n"
    "Supercalifragilisticexpialidocious antidisestablishmentarianism pneumonoultramicroscopic\n"
    "    indented code(x) { return x**2; }\n\n\n     \n trailing spaces     "
)


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable character table that ByteLevel vocabularies are written in.

    Printable Latin-1 bytes stand for themselves; the other 68 bytes (controls, space, NBSP,
    soft hyphen) are shifted to U+0100 onwards, in byte order, so every token is visible text.
    """
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table = {b: chr(b) for b in keep}
    shifted = (b for b in range(256) if b not in table)
    table.update((b, chr(256 + i)) for i, b in enumerate(shifted))
    return table


def _merge_pairs(merges: list) -> list[tuple[str, str]]:
    # tokenizers writes merges as ["a", "b"] since 0.20 and as "a b" before.
    return [tuple(m) if isinstance(m, list) else tuple(m.split(" ", 1)) for m in merges]


def tiktoken_ranks(data: dict) -> tuple[dict[bytes, int] | None, str]:
    """tiktoken's mergeable_ranks (token bytes -> id) for a tokenizer.json, or (None, why not).

    Accepts only what tiktoken can reproduce: a plain byte-level BPE with no normalizer, GPT-2's
    split, all 256 bytes present, and merges whose results are distinct tokens with increasing
    ids that, with the bytes and SPECIALS, make up the whole vocabulary.
    """
    model, pre = data.get("model") or {}, data.get("pre_tokenizer") or {}
    if model.get("type") != "BPE" or data.get("normalizer") is not None:
        return None, "not a plain BPE model"
    if any(model.get(k) for k in ("dropout", "continuing_subword_prefix", "end_of_word_suffix", "byte_fallback")):
        return None, "BPE options tiktoken lacks (dropout, affixes, byte fallback)"
    if pre.get("type") != "ByteLevel" or pre.get("add_prefix_space") or not pre.get("use_regex", True):
        return None, "pre-tokenizer is not ByteLevel(add_prefix_space=False, use_regex=True)"
    vocab: dict[str, int] = model["vocab"]
    to_byte = {c: b for b, c in bytes_to_unicode().items()}
    if any(vocab.get(c) is None for c in to_byte):
        return None, "not all 256 byte tokens are in the vocabulary"
    last = max(vocab[c] for c in to_byte)
    made: set[str] = set()
    for a, b in _merge_pairs(model["merges"]):
        token_id = vocab.get(a + b)
        if token_id is None or token_id <= last or a + b in made:
            return None, f"merge {a!r} + {b!r}: token ids must follow merge order"
        last = token_id
        made.add(a + b)
    if set(vocab) != made | set(to_byte) | (set(SPECIALS) & set(vocab)):
        return None, "vocabulary has tokens that no merge produces"
    return {bytes(to_byte[c] for c in tok): i for tok, i in vocab.items() if tok not in SPECIALS}, ""


def _token_not_encoding_to_itself(hf: Tokenizer, vocab: dict[str, int]) -> str | None:
    """The first non-special token whose own (byte-level) text HF's BPE does not turn into that token,
    else None. BpeTrainer's vocabularies pass; a merge table where two tokens join into a third by a
    pair other than its merge does not, and that is where tiktoken's rule would part from HF's."""
    for tok, i in vocab.items():
        if tok not in SPECIALS and [t.id for t in hf.model.tokenize(tok)] != [i]:
            return tok
    return None


def _read_tokenizer_json(path: str | Path) -> dict:
    """A tokenizer.json's content, or TokenizerError naming the file: TOKENIZER=some.jsonl (or any
    other JSON) must be one line of error, not a JSONDecodeError or KeyError traceback."""
    try:
        data = json.loads(Path(path).read_bytes())
    except UnicodeDecodeError:
        raise TokenizerError(f"{path}: not a tokenizer.json: not UTF-8 text") from None
    except json.JSONDecodeError as err:
        raise TokenizerError(f"{path}: not a tokenizer.json: not valid JSON ({err.msg} at line {err.lineno})") from None
    model = data.get("model") if isinstance(data, dict) else None
    vocab = model.get("vocab") if isinstance(model, dict) else None
    if not isinstance(vocab, dict) or not vocab or not all(type(i) is int for i in vocab.values()):
        raise TokenizerError(f"{path}: not a tokenizer.json: no model.vocab mapping tokens to ids; "
                             "train one with `make tokenizer`")
    return data


class Encoder:
    """Encode documents to ids with a trained tokenizer.json; identical ids from either engine.

    engine="auto" picks tiktoken when the checks (module docstring) find it equal to HF, else HF; "hf"
    forces HF; "tiktoken" raises if a check fails. Literal special strings in text encode as text.
    """

    def __init__(self, path: str | Path, engine: str = "auto", num_threads: int = 1):
        if engine not in ("auto", "tiktoken", "hf"):
            raise ValueError(f"engine must be auto, tiktoken or hf, not {engine!r}")
        data = _read_tokenizer_json(path)
        data["added_tokens"] = []  # HF would match these inside text; ids 0..5 stay reachable by id
        try:
            self._hf = Tokenizer.from_str(json.dumps(data))
        except Exception as err:  # tokenizers raises a bare Exception ("expected `,` or `}`", "unknown variant")
            raise TokenizerError(f"{path}: not a tokenizer.json: {err}") from None
        self._hf.no_padding()
        self._hf.no_truncation()
        vocab = data["model"]["vocab"]
        misplaced = [f"{tok} at {vocab.get(tok)}" for i, tok in enumerate(SPECIALS) if vocab.get(tok) != i]
        if misplaced:
            # Ids 0-5 are [PAD] .. [BOS] everywhere downstream: with another tokenizer an ordinary token
            # (GPT-2's id 5 is '&') would mark a document start wherever it occurs.
            raise TokenizerError(f"{path}: not a tokenizer of this pipeline: the specials {', '.join(SPECIALS)} must "
                                 f"have ids 0-5 ({', '.join(misplaced)}); train one with `make tokenizer`")
        self.vocab_size = max(vocab.values()) + 1
        self.bos_id, self.pad_id = BOS_ID, PAD_ID
        self.num_threads = num_threads
        self.dtype = np.uint16 if self.vocab_size <= 1 << 16 else np.uint32
        to_byte = {c: b for b, c in bytes_to_unicode().items()}
        self._token_bytes = [b""] * self.vocab_size  # id -> bytes, for decode
        for tok, i in vocab.items():
            # Specials are printable ASCII, which the table maps to itself: they decode to their names.
            self._token_bytes[i] = bytes(to_byte[c] for c in tok)

        self._tt: tiktoken.Encoding | None = None
        self.why_not_tiktoken = "engine='hf' requested"
        if engine != "hf":
            ranks, self.why_not_tiktoken = tiktoken_ranks(data)
            if ranks is not None:
                self._tt = tiktoken.Encoding(
                    f"bpe-{len(ranks)}", pat_str=GPT2_PATTERN, mergeable_ranks=ranks, special_tokens={}
                )
                stray = _token_not_encoding_to_itself(self._hf, vocab)
                if stray is not None:
                    self._tt, self.why_not_tiktoken = None, f"token {stray!r} does not encode to itself in HF"
                elif self._tt.encode_ordinary(PROBE) != self._hf_encode([PROBE])[0]:
                    self._tt, self.why_not_tiktoken = None, "tiktoken and HF disagree on the probe text"
            if engine == "tiktoken" and self._tt is None:
                raise ValueError(f"{path}: cannot use tiktoken: {self.why_not_tiktoken}")
        self.engine = "tiktoken" if self._tt is not None else "hf"

    def _hf_encode(self, texts: list[str]) -> list[list[int]]:
        # encode_batch_fast skips offset tracking; add_special_tokens=False: no post-processor ids.
        return [e.ids for e in self._hf.encode_batch_fast(texts, add_special_tokens=False)]

    def encode(self, text: str) -> list[int]:
        return self.encode_batch([text])[0]

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        """Ids per text, no BOS/EOS added. tiktoken threads over texts (it releases the GIL)."""
        if self._tt is None:
            return self._hf_encode(list(texts))
        if self.num_threads > 1:
            try:
                return self._tt.encode_ordinary_batch(list(texts), num_threads=self.num_threads)
            except (KeyboardInterrupt, SystemExit):
                raise
            except BaseException:  # see _tt_encode; redo text by text
                pass
        return [self._tt_encode(t) for t in texts]

    def _tt_encode(self, text: str) -> list[int]:
        try:
            return self._tt.encode_ordinary(text)
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException:
            # tiktoken's regex VM panics (pyo3's PanicException, a BaseException) when a whitespace run
            # of ~1M characters meets its backtracking limit; HF, the reference, encodes it.
            return self._hf_encode([text])[0]

    def encode_to_array(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """All texts' ids concatenated (uint16 when the vocabulary fits, else uint32) and their lengths."""
        encoded = self.encode_batch(texts)
        lengths = np.fromiter(map(len, encoded), np.int64, len(encoded))
        ids = np.fromiter(chain.from_iterable(encoded), self.dtype, int(lengths.sum()))
        return ids, lengths

    def text_bytes(self) -> np.ndarray:
        """UTF-8 bytes of text that each id stands for (int64, by id): 0 for the specials, which mark
        structure ([BOS]) and were never text. Summed over a document's ids, its text's length."""
        lengths = np.array([len(b) for b in self._token_bytes], dtype=np.int64)
        lengths[: len(SPECIALS)] = 0
        return lengths

    def decode(self, ids) -> str:
        """Text for ids (specials appear as their names); bytes that are not valid UTF-8 become U+FFFD."""
        return b"".join(self._token_bytes[i] for i in ids).decode("utf-8", errors="replace")
