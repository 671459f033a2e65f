"""Quality rules: C4's line filters (Raffel et al. 2020) and Gopher's document filters (Rae et al. 2021).

The rules follow the published heuristics as datatrove implements them (`C4QualityFilter`,
`GopherQualityFilter`, `GopherRepetitionFilter`), with three deliberate simplifications that keep
them dependency-free and linear-time:

* words are whitespace-separated tokens (datatrove runs an NLTK/spaCy word tokenizer); where a
  rule needs the "word itself" (length, stop words) surrounding punctuation is stripped first;
* sentences are counted with a single punctuation regex rather than Punkt;
* n-grams are compared as sequences of whole words (as 64-bit hashes of word ids), not as
  joined strings, so "ab c" and "a bc" are never confused.

Each function returns the name of the rule that fired (a key of `CleanStats.dropped`) or None.
Every threshold is read from the config; a threshold of None switches that one rule off.
"""

from __future__ import annotations

import re
import string
from bisect import bisect_left
from collections import Counter
from itertools import accumulate, count, repeat
from operator import methodcaller
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from pipeline.clean import CleanConfig

# ASCII punctuation plus the typographic marks common in web text, for stripping words to their core.
PUNCTUATION = string.punctuation + "“”‘’«»„‚…—–·•¡¿"
# The eight stop words Gopher requires at least two occurrences of (Rae et al., appendix A).
STOP_WORDS = frozenset({"the", "be", "to", "of", "and", "that", "have", "with"})
BULLETS = ("•", "-", "●", "‣", "◦", "▪")
ELLIPSES = ("...", "…")
# C4: a line is kept only if it ends like a sentence; a closing quote counts.
END_PUNCTUATION = (".", "?", "!", '"', "'", "”", "’")
POLICY_SUBSTRINGS = (
    "terms of use",
    "privacy policy",
    "cookie policy",
    "uses cookies",
    "use of cookies",
    "use cookies",
)
# Wikipedia-style citation markers: "[1]", "[]", "[edit]", "[citation needed]". No nested
# quantifiers, so matching is linear in the line length.
CITATION = re.compile(r"\[\d*\]|\[edit\]|\[citation needed\]", re.IGNORECASE)
# One sentence end: terminal marks, optional closing quotes/brackets, then whitespace or end of line.
SENTENCE_END = re.compile(r"[.!?]+[\"'”’)\]]*(?=\s|$)")
# A letter: a word character that is not a digit or underscore.
_HAS_LETTER = re.compile(r"[^\W\d_]").search
_PARAGRAPH_BREAK = re.compile(r"\n{2,}")
_BLANK_RUNS = re.compile(r"\n{3,}")


def gopher_quality(text: str, cfg: CleanConfig) -> str | None:
    """Gopher's quality filter: length, word shape, symbol ratios, bullet/ellipsis lines, stop words."""
    words = text.split()
    n_words = len(words) or 1
    # Words stripped of surrounding punctuation, without the pure-symbol ones; map/filter keep the
    # per-word work in C, which matters at a million words per play.
    cores = list(filter(None, map(str.strip, words, repeat(PUNCTUATION))))
    if cfg.gopher_min_words is not None and len(cores) < cfg.gopher_min_words:
        return "gopher_short_doc"
    if cfg.gopher_max_words is not None and len(cores) > cfg.gopher_max_words:
        return "gopher_long_doc"
    if cores:
        mean_len = sum(map(len, cores)) / len(cores)
        if cfg.gopher_min_mean_word_length is not None and mean_len < cfg.gopher_min_mean_word_length:
            return "gopher_mean_word_length_low"
        if cfg.gopher_max_mean_word_length is not None and mean_len > cfg.gopher_max_mean_word_length:
            return "gopher_mean_word_length_high"
    if cfg.gopher_max_symbol_word_ratio is not None:
        if text.count("#") / n_words > cfg.gopher_max_symbol_word_ratio:
            return "gopher_hash_ratio"
        if sum(map(text.count, ELLIPSES)) / n_words > cfg.gopher_max_symbol_word_ratio:
            return "gopher_ellipsis_ratio"
    # Blank lines are paragraph separators, not content: counting them would let a pure list with
    # blank lines between items pass the bullet rule, so ratios are over non-blank lines.
    lines = list(filter(None, map(str.strip, text.split("\n")))) or [""]
    if cfg.gopher_max_bullet_lines_ratio is not None:
        bullets = sum(map(methodcaller("startswith", BULLETS), lines))
        if bullets / len(lines) > cfg.gopher_max_bullet_lines_ratio:
            return "gopher_bullet_lines"
    if cfg.gopher_max_ellipsis_lines_ratio is not None:
        trailing = sum(map(methodcaller("endswith", ELLIPSES), lines))
        if trailing / len(lines) > cfg.gopher_max_ellipsis_lines_ratio:
            return "gopher_ellipsis_lines"
    if cfg.gopher_min_alpha_words_ratio is not None:
        alpha = len(list(filter(_HAS_LETTER, words)))
        if alpha / n_words < cfg.gopher_min_alpha_words_ratio:
            return "gopher_alpha_words"
    if cfg.gopher_min_stop_words:
        found = 0
        for core in cores:  # stops at the threshold: prose reaches two stop words within a line
            if core.lower() in STOP_WORDS:
                found += 1
                if found >= cfg.gopher_min_stop_words:
                    break
        else:
            return "gopher_stop_words"
    return None


def _duplicates(items: list[str]) -> tuple[int, int]:
    """(count, total chars) of the items that repeat an earlier one; set arithmetic, no Python loop."""
    unique = set(items)
    return len(items) - len(unique), sum(map(len, items)) - sum(map(len, unique))


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser: spreads small word ids over 64 bits so n-gram hashes rarely collide."""
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def _ngram_hashes(words: list[str], max_n: int) -> list[np.ndarray]:
    """hashes[n][i] identifies the n-gram starting at word i, for n = 1..max_n (index 0 unused).

    Words become exact integer ids first, so only whole n-grams are hashed (64-bit, collisions
    ~len(words)^2 / 2^64: negligible), and each n costs one vectorised pass instead of building
    len(words) tuples of strings.
    """
    index = dict(zip(dict.fromkeys(words), count()))  # word -> id in order of first use, all in C
    ids = np.fromiter(map(index.__getitem__, words), np.uint64, len(words))
    x = _mix(ids + np.uint64(1))
    hashes = [x, x]
    for n in range(2, max_n + 1):  # polynomial rolling hash; uint64 arithmetic wraps mod 2^64
        hashes.append(hashes[-1][:-1] * np.uint64(0x9E3779B97F4A7C15) + x[n - 1 :])
    return hashes


def _dup_ngram_chars(h: np.ndarray, ends: list[int], n: int) -> int:
    """Chars of words inside repeated n-grams, scanning left to right, skipping the n-1 n-grams
    after each repeat so overlapping repeats count once (Gopher's definition). `ends` are word-length
    prefix sums: the n-gram at word i spans ends[i + n] - ends[i] chars.

    Equivalent to the plain scan with a `seen` set, but visits only positions whose n-gram occurred
    before: a first occurrence joins `seen` exactly when it is not inside a skipped span, which
    bisecting the (increasing) list of counted repeats answers.
    """
    order = np.argsort(h, kind="stable")  # stable: within a group of equal hashes, earliest first
    sorted_h = h[order]
    starts = np.flatnonzero(np.r_[True, sorted_h[1:] != sorted_h[:-1]])
    first_at = np.empty_like(order)
    first_at[order] = np.repeat(order[starts], np.diff(np.r_[starts, len(h)]))
    repeats = np.flatnonzero(first_at < np.arange(len(h)))
    counted: list[int] = []  # positions counted as repeats; each skips the next n - 1 positions
    # n-grams (named by their first position) that joined `seen` at a later occurrence, their first
    # occurrence having been skipped.
    visited: set[int] = set()
    chars, skip_until = 0, 0
    for j, f in zip(repeats.tolist(), first_at[repeats].tolist(), strict=True):
        if j < skip_until:
            continue
        k = bisect_left(counted, f) - 1
        if f in visited or k < 0 or f >= counted[k] + n:  # an earlier occurrence was visited
            chars += ends[j + n] - ends[j]
            counted.append(j)
            skip_until = j + n
        else:
            visited.add(f)
    return chars


def gopher_repetition(text: str, cfg: CleanConfig) -> str | None:
    """Gopher's repetition filter: duplicated paragraphs/lines and over-frequent or repeated n-grams."""
    n_chars = len(text) or 1
    checks = (
        (_PARAGRAPH_BREAK.split(text.strip()), "para", cfg.gopher_max_dup_para_frac,
         cfg.gopher_max_dup_para_char_frac),
        (list(filter(None, text.split("\n"))) or [""], "line", cfg.gopher_max_dup_line_frac,
         cfg.gopher_max_dup_line_char_frac),
    )  # fmt: skip
    for items, unit, max_frac, max_char_frac in checks:
        dups, dup_chars = _duplicates(items)
        if max_frac is not None and dups / len(items) > max_frac:
            return f"gopher_dup_{unit}_frac"
        if max_char_frac is not None and dup_chars / n_chars > max_char_frac:
            return f"gopher_dup_{unit}_char_frac"

    words = text.split()
    if len(words) < 2:
        return None
    hashes = _ngram_hashes(words, 4 + len(cfg.gopher_dup_ngram_max_frac))
    ends = [0, *accumulate(map(len, words))]
    for n, max_frac in enumerate(cfg.gopher_top_ngram_max_frac, start=2):
        if max_frac is None or len(words) < n:
            continue
        values, counts = np.unique(hashes[n], return_counts=True)
        count = int(counts.max())
        # An n-gram that occurs once is not repetition (datatrove would still count it, dropping
        # any document of a few words); chars include the n - 1 spaces inside the n-gram.
        if count > 1:
            # Among equally frequent n-grams take the one that occurs first, as datatrove's
            # Counter.most_common does; its first position also gives its length.
            i = int(np.argmax(np.isin(hashes[n], values[counts == count])))
            if (ends[i + n] - ends[i] + n - 1) * count / n_chars > max_frac:
                return f"gopher_top_{n}_gram"

    for n, max_frac in enumerate(cfg.gopher_dup_ngram_max_frac, start=5):
        if max_frac is None or len(words) < n:
            continue
        chars = _dup_ngram_chars(hashes[n], ends, n)
        if chars == 0:
            break  # no repeated n-gram means no repeated longer n-gram either: the rest all pass
        if chars / n_chars > max_frac:
            return f"gopher_dup_{n}_gram"
    return None


def _sentences(line: str) -> int:
    # A kept line ends in terminal punctuation, so it holds at least one sentence even when the
    # regex misses (a line ending in a closing quote after a comma, say).
    return max(1, len(SENTENCE_END.findall(line)))


def c4_lines(text: str, cfg: CleanConfig, removed: Counter[str]) -> tuple[str | None, str | None]:
    """C4's line filter: drop non-sentence lines, drop the document on lorem ipsum or `{`.

    Returns (filtered text, None) or (None, rule). Lines removed are counted into `removed` by
    rule. Blank lines are kept so paragraphs survive (C4 itself joined the kept lines with one
    newline, which erased paragraph structure a language model can use).
    """
    kept: list[str] = []
    sentences = 0
    for raw in text.split("\n"):
        line = raw.strip()
        if not line:
            kept.append("")
            continue
        words = line.split()
        if cfg.c4_max_word_length is not None and any(len(w) > cfg.c4_max_word_length for w in words):
            removed["c4_long_word"] += 1
            continue
        if cfg.c4_remove_citations:
            line = CITATION.sub("", line)
        if cfg.c4_terminal_punct and (not line.endswith(END_PUNCTUATION) or line.endswith(ELLIPSES)):
            removed["c4_no_terminal_punct"] += 1
            continue
        if cfg.c4_min_words_per_line is not None and len(words) < cfg.c4_min_words_per_line:
            removed["c4_too_few_words"] += 1
            continue
        lower = line.lower()
        if cfg.c4_lorem_ipsum and "lorem ipsum" in lower:
            return None, "c4_lorem_ipsum"
        if cfg.c4_javascript and "javascript" in lower:
            removed["c4_javascript"] += 1
            continue
        if cfg.c4_curly_bracket and "{" in line:
            return None, "c4_curly_bracket"  # code, templates or JSON rather than prose
        if cfg.c4_policy and any(p in lower for p in POLICY_SUBSTRINGS):
            removed["c4_policy"] += 1
            continue
        sentences += _sentences(line)
        kept.append(line)
    if cfg.c4_min_sentences is not None and sentences < cfg.c4_min_sentences:
        return None, "c4_too_few_sentences"
    out = _BLANK_RUNS.sub("\n\n", "\n".join(kept)).strip()
    return (out, None) if out else (None, "c4_no_lines_kept")
