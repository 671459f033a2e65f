"""Quality rules: C4's line filters (Raffel et al. 2020) and Gopher's document filters (Rae et al. 2021).

The rules follow the published heuristics as datatrove implements them (`C4QualityFilter`,
`GopherQualityFilter`, `GopherRepetitionFilter`), with three simplifications that keep them
dependency-free and linear-time:

* words are whitespace-separated tokens (datatrove runs an NLTK/spaCy word tokenizer); where a
  rule needs the "word itself" (length, stop words) surrounding punctuation is stripped first;
* sentences are counted with a single punctuation regex rather than Punkt;
* n-grams are compared as sequences of whole words, not as joined strings, so "ab c" and "a bc"
  are never confused.

and these deliberate differences in detail (each makes a rule match its intent on web text, or is
one reading of the papers where datatrove and RedPajama-v2 differ):

* C4: a line may also end in a typographic closing quote (” ’); citation markers are removed case-
  insensitively with the space before them and the line is stripped again, so "winter. [3]" still
  ends in a full stop and "the chart [3]." keeps none before it; a bracketed number of four digits
  or more ("[2004]") is text, not a citation; words per line are counted after the markers go;
* Gopher stop words match case-insensitively ("The" counts); bullets are • - ● ‣ ◦ ▪; the bullet and
  ellipsis line ratios are over non-blank lines (datatrove counts blank lines too, which halves
  them for double-spaced text);
* Gopher repetition: the top n-gram counts only when it repeats (as RedPajama-v2; datatrove takes
  the first n-gram even if unique), and duplicate lines, paragraphs and n-grams leave out their first
  occurrence (as datatrove; RedPajama-v2 and dolma count every occurrence).

Each rule function returns the name of the rule that fired (a key of `CleanStats.dropped`) or None,
checking its rules in a fixed order and reporting the first that fires. Every threshold is read from
the config; a threshold of None switches that one rule off. They run at tens of MB/s per core in
plain Python by doing per-word work in C (str methods, map/filter, dicts) and by deciding most rules
from cheap exact bounds, falling back to the full computation only when a bound cannot decide.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from itertools import accumulate, compress, count, filterfalse, pairwise, repeat
from operator import itemgetter, ne, sub
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pipeline.clean import CleanConfig

# ASCII punctuation plus the typographic marks common in web text, for stripping words to their core.
PUNCTUATION = string.punctuation + "“”‘’«»„‚…—–·•¡¿"
# The eight stop words Gopher requires at least two occurrences of (Rae et al., appendix A).
STOP_WORDS = frozenset({"the", "be", "to", "of", "and", "that", "have", "with"})
BULLETS = ("•", "-", "●", "‣", "◦", "▪")
ELLIPSES = ("...", "…")
_FIRST_CHAR = itemgetter(slice(None, 1))
_LAST_3_CHARS = itemgetter(slice(-3, None))
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
# Wikipedia-style citation markers: "[1]" to "[999]", "[]", "[edit]", "[citation needed]", with one
# space before them, so "the chart [3]." keeps no space before its full stop. Four digits are text,
# not a reference number ("the [2004] elections"). No nested quantifiers: linear in the line length.
CITATION = re.compile(r" ?(?:\[\d{0,3}\]|\[edit\]|\[citation needed\])", re.IGNORECASE)
_SPACE_RUNS = re.compile(r" {2,}")
# One sentence end: terminal marks, optional closing quotes/brackets, then whitespace or end of line.
SENTENCE_END = re.compile(r"[.!?]+[\"'”’)\]]*(?=\s|$)")
# A letter: a word character that is not a digit or underscore.
_HAS_LETTER = re.compile(r"[^\W\d_]").search
# Spelled with literal newlines first, not "\n{2,}": re then scans for the literal in C, ~5x faster.
_PARAGRAPH_BREAK = re.compile(r"\n\n+")
BLANK_RUNS = re.compile(r"\n\n\n+")
_ASCII_PUNCTUATION = string.punctuation.encode()
# For counting the words with a letter in ASCII text in one C pass: letters become "a", str.split's
# whitespace a space, every other byte is deleted, so each such word leaves one run of "a" and the
# others vanish. (In ASCII, [^\W\d_] is exactly the 52 letters.)
_ASCII_SPACE = b"\t\n\x0b\x0c\r\x1c\x1d\x1e\x1f "
_LETTERS_TO_A = bytes.maketrans(string.ascii_letters.encode() + _ASCII_SPACE, b"a" * 52 + b" " * len(_ASCII_SPACE))
_NOT_LETTER_OR_SPACE = bytes(sorted(set(range(128)) - set(string.ascii_letters.encode() + _ASCII_SPACE)))


def _cores(words: list[str]) -> list[str]:
    """Words stripped of surrounding punctuation, without the pure-symbol ones."""
    return list(filter(None, map(str.strip, words, repeat(PUNCTUATION))))


def gopher_quality(text: str, words: list[str], lines: list[str], cfg: CleanConfig) -> str | None:
    """Gopher's quality filter: length, word shape, symbol ratios, bullet/ellipsis lines, stop words.

    `words` is text.split() and `lines` text.split("\n"), shared with the other rules.
    """
    n_words = len(words) or 1
    # Stripping every word (for the word count and mean length) is the costly step, and prose rarely
    # needs it: stripping removes at most `symbols` chars, an upper bound on the punctuation in the
    # text (every ASCII punctuation byte, plus one per extra UTF-8 byte, which covers every
    # non-ASCII mark), and each pure-symbol word holds at least one of them. So the core count lies
    # in [len(words) - symbols, len(words)] and the core chars in [chars - symbols, chars]; `cores`
    # is computed only when those ranges straddle a threshold.
    data = text.encode()
    symbols = len(data) - len(data.translate(None, _ASCII_PUNCTUATION)) + len(data) - len(text)
    fewest = len(words) - symbols
    cores: list[str] | None = None
    if cfg.gopher_min_words is not None and fewest < cfg.gopher_min_words:
        cores = _cores(words)
        if len(cores) < cfg.gopher_min_words:
            return "gopher_short_doc"
    if cfg.gopher_max_words is not None and len(words) > cfg.gopher_max_words:
        cores = _cores(words) if cores is None else cores
        if len(cores) > cfg.gopher_max_words:
            return "gopher_long_doc"
    lo, hi = cfg.gopher_min_mean_word_length, cfg.gopher_max_mean_word_length
    if lo is not None or hi is not None:
        # The chars of all words; in ASCII text, its bytes that are not whitespace.
        chars = len(data.translate(None, _ASCII_SPACE)) if text.isascii() else sum(map(len, words))
        # Float division rounds monotonically, so a bound on the exact quotient decides its rounding too.
        decided = (
            fewest > 0 and (lo is None or (chars - symbols) / len(words) >= lo) and (hi is None or chars / fewest <= hi)
        )
        if not decided:
            cores = _cores(words) if cores is None else cores
            if cores:
                mean_len = sum(map(len, cores)) / len(cores)
                if lo is not None and mean_len < lo:
                    return "gopher_mean_word_length_low"
                if hi is not None and mean_len > hi:
                    return "gopher_mean_word_length_high"
    if cfg.gopher_max_symbol_word_ratio is not None:
        if text.count("#") / n_words > cfg.gopher_max_symbol_word_ratio:
            return "gopher_hash_ratio"
        if sum(map(text.count, ELLIPSES)) / n_words > cfg.gopher_max_symbol_word_ratio:
            return "gopher_ellipsis_ratio"
    # Blank lines are paragraph separators, not content: counting them would let a pure list with
    # blank lines between items pass the bullet rule, so ratios are over non-blank lines.
    # The lines' first characters (every bullet is one character) and last three, joined with
    # newlines, are counted with str.count: C passes instead of a method call per line.
    stripped = list(filter(None, map(str.strip, lines))) or [""]
    if cfg.gopher_max_bullet_lines_ratio is not None:
        firsts = "".join(map(_FIRST_CHAR, stripped))
        if sum(map(firsts.count, BULLETS)) / len(stripped) > cfg.gopher_max_bullet_lines_ratio:
            return "gopher_bullet_lines"
    if cfg.gopher_max_ellipsis_lines_ratio is not None:
        ends = "\n".join(map(_LAST_3_CHARS, stripped)) + "\n"
        trailing = sum(ends.count(e + "\n") for e in ELLIPSES)
        if trailing / len(stripped) > cfg.gopher_max_ellipsis_lines_ratio:
            return "gopher_ellipsis_lines"
    if cfg.gopher_min_alpha_words_ratio is not None:
        if text.isascii():
            alpha = (b" " + data.translate(_LETTERS_TO_A, _NOT_LETTER_OR_SPACE)).count(b" a")
        else:
            # An all-letter word (str.isalpha, a fast C check) has a letter; only when those alone
            # fall short are the other words searched.
            alpha = sum(map(str.isalpha, words))
            if alpha / n_words < cfg.gopher_min_alpha_words_ratio:
                alpha += len(list(filter(_HAS_LETTER, filterfalse(str.isalpha, words))))
        if alpha / n_words < cfg.gopher_min_alpha_words_ratio:
            return "gopher_alpha_words"
    if cfg.gopher_min_stop_words:
        found = 0
        # Stripped lazily: prose reaches two stop words within a line.
        for core in cores if cores is not None else filter(None, map(str.strip, words, repeat(PUNCTUATION))):
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


# The n-grams of one length that occur more than once: their positions, ascending, and parallel to
# them their names, each the position of that n-gram's first occurrence.
_Level = tuple[list[int], list[int]]


def _repeated(positions: list[int], names: list[int]) -> _Level:
    """The positions (with their names) whose name occurs more than once; every step runs in C."""
    counts = Counter(names)
    if len(counts) == len(names):
        return [], []
    keep = list(map((1).__lt__, map(counts.__getitem__, names)))
    return list(compress(positions, keep)), list(compress(names, keep))


def _ngram_hashes(words: list[str], max_n: int) -> list[_Level]:
    """levels[n] for n = 2..max_n (indexes 0 and 1 are unused): the repeated n-grams.

    An n-gram's name, its first position, is an exact, collision-free hash of it within the
    document. Only level 2 looks at every position (one pass in C over word pairs). An (n+1)-gram
    at i repeats only if the n-grams at i and i+1 both do, and the pair of their names identifies
    it exactly, so each further level is built from the one below alone, in time proportional to
    the repeated positions: in prose a few percent of them, and none after the first empty level.
    """
    levels: list[_Level] = [([], []), ([], [])]
    if max_n >= 2:
        first: dict[tuple[str, str], int] = {}
        names = list(map(first.setdefault, pairwise(words), count()))
        # Most bigrams of prose occur once: find the later occurrences (name != position), then
        # their first ones, rather than counting every bigram.
        later = list(compress(count(), map(ne, names, count()))) if len(first) < len(names) else []
        positions = sorted({*later, *map(names.__getitem__, later)})
        levels.append((positions, list(map(names.__getitem__, positions))))
    while len(levels) <= max_n:
        positions, names = levels[-1]
        if not positions:
            return levels + [([], [])] * (max_n + 1 - len(levels))
        # Consecutive positions of the level below: both n-grams of an (n+1)-gram repeat.
        pairs = list(map((1).__eq__, map(sub, positions[1:], positions)))
        starts = list(compress(positions, pairs))
        first_pair: dict[tuple[int, int], int] = {}
        names = list(map(first_pair.setdefault, compress(pairwise(names), pairs), starts))
        levels.append(_repeated(starts, names))
    return levels


def _dup_ngram_chars(level: _Level, ends: list[int], n: int) -> int:
    """Chars of words inside repeated n-grams, scanning left to right, skipping the n-1 n-grams after
    each repeat so overlapping repeats count once (Gopher's definition). `level` is one level of
    `_ngram_hashes`; `ends` are word-length prefix sums: the n-gram at word i spans
    ends[i + n] - ends[i] chars.

    The plain scan over every position, visiting only the repeated ones: an n-gram that occurs once
    joins the `seen` set but is never looked up, so skipping it changes nothing.
    """
    seen: set[int] = set()
    chars, skip_until = 0, 0
    for i, name in zip(*level, strict=True):
        if i < skip_until:
            continue
        if name in seen:
            chars += ends[i + n] - ends[i]
            skip_until = i + n
        else:
            seen.add(name)
    return chars


def gopher_repetition(text: str, words: list[str], lines: list[str], cfg: CleanConfig) -> str | None:
    """Gopher's repetition filter: duplicated paragraphs/lines and over-frequent or repeated n-grams.

    `words` is text.split() and `lines` text.split("\n"), shared with the other rules.
    """
    n_chars = len(text) or 1
    stripped = text.strip()
    checks = (
        (_PARAGRAPH_BREAK.split(stripped), "para",
         cfg.gopher_max_dup_para_frac, cfg.gopher_max_dup_para_char_frac),
        (list(filter(None, lines)) or [""], "line", cfg.gopher_max_dup_line_frac,
         cfg.gopher_max_dup_line_char_frac),
    )  # fmt: skip
    for items, unit, max_frac, max_char_frac in checks:
        dups, dup_chars = _duplicates(items)
        if max_frac is not None and dups / len(items) > max_frac:
            return f"gopher_dup_{unit}_frac"
        if max_char_frac is not None and dup_chars / n_chars > max_char_frac:
            return f"gopher_dup_{unit}_char_frac"

    top, dup = cfg.gopher_top_ngram_max_frac, cfg.gopher_dup_ngram_max_frac
    levels = _ngram_hashes(words, max(1 + len(top), 4 + len(dup)))
    for n, max_frac in enumerate(top, start=2):
        # An n-gram that occurs once is not repetition (datatrove would still count it, dropping any
        # document of a few words), so only repeated n-grams matter: none at all in most documents.
        if max_frac is None or not levels[n][0]:
            continue
        # Among equally frequent n-grams take the one that occurs first, as datatrove's
        # Counter.most_common does: names enter the Counter in order of first occurrence, and max
        # returns the first maximum. A name is also the first position; chars include the n - 1 spaces.
        first, most = max(Counter(levels[n][1]).items(), key=itemgetter(1))
        if len(" ".join(words[first : first + n])) * most / n_chars > max_frac:
            return f"gopher_top_{n}_gram"

    ends: list[int] | None = None
    for n, max_frac in enumerate(dup, start=5):
        if max_frac is None:
            continue
        if not levels[n][0]:
            break  # no repeated n-gram means no repeated longer n-gram either: the rest all pass
        ends = [0, *accumulate(map(len, words))] if ends is None else ends
        if _dup_ngram_chars(levels[n], ends, n) / n_chars > max_frac:
            return f"gopher_dup_{n}_gram"
    return None


def _sentences(line: str) -> int:
    # A kept line ends in terminal punctuation, so it holds at least one sentence even when the
    # regex misses (a line ending in a closing quote after a comma, say).
    return max(1, len(SENTENCE_END.findall(line)))


def c4_lines(text: str, lines: list[str], cfg: CleanConfig, removed: Counter[str]) -> tuple[str | None, str | None]:
    """C4's line filter: drop non-sentence lines, drop the document on lorem ipsum or `{`.

    `lines` is text.split("\n"). Returns (filtered text, None) or (None, rule). Lines removed are
    counted into `removed` by rule. Blank lines are kept so paragraphs survive (C4 itself joined the
    kept lines with one newline, which erased paragraph structure a language model can use).
    """
    # The phrase rules are decided for the whole document first (one lower() and a few searches in
    # C): a phrase absent from the document is absent from its lines, which then skip their own
    # lower(). Citation removal can join a phrase ("lorem [1]ipsum"), so a line it changed is searched.
    lower = text.lower()
    phrases = (
        (cfg.c4_lorem_ipsum and "lorem ipsum" in lower)
        or (cfg.c4_javascript and "javascript" in lower)
        or (cfg.c4_policy and any(p in lower for p in POLICY_SUBSTRINGS))
    )
    max_word, min_words = cfg.c4_max_word_length, cfg.c4_min_words_per_line
    kept: list[str] = []
    content: list[str] = []  # the kept lines that passed every rule (not the blank ones)
    for raw in lines:
        line = raw.strip()
        if not line:
            kept.append("")
            continue
        # No word is longer than its line, and splitting at most min_words - 1 times counts words up
        # to min_words: both spare a full split of most lines.
        if max_word is not None and len(line) > max_word and max(map(len, line.split())) > max_word:
            removed["c4_long_word"] += 1
            continue
        cited = False
        if cfg.c4_remove_citations and "[" in line:
            # Re-strip and re-collapse: "ended that year. [1]" must still end in its full stop, and
            # "war [1] ended" must not keep a double space.
            uncited = _SPACE_RUNS.sub(" ", CITATION.sub("", line)).strip()
            cited, line = uncited != line, uncited
        if cfg.c4_terminal_punct and (not line.endswith(END_PUNCTUATION) or line.endswith(ELLIPSES)):
            removed["c4_no_terminal_punct"] += 1
            continue
        if min_words is not None and min_words > 0 and len(line.split(None, min_words - 1)) < min_words:
            removed["c4_too_few_words"] += 1
            continue
        lower = line.lower() if phrases or cited else ""
        if cfg.c4_lorem_ipsum and "lorem ipsum" in lower:
            return None, "c4_lorem_ipsum"
        if cfg.c4_javascript and "javascript" in lower:
            removed["c4_javascript"] += 1
            continue
        if cfg.c4_curly_bracket and "{" in line:
            return None, "c4_curly_bracket"  # code, templates or JSON rather than prose
        if cfg.c4_policy and lower and any(p in lower for p in POLICY_SUBSTRINGS):
            removed["c4_policy"] += 1
            continue
        kept.append(line)
        content.append(line)
    # Every such line counts as at least one sentence, so the regex runs only when they alone are too few.
    least = cfg.c4_min_sentences
    if least is not None and len(content) < least and sum(map(_sentences, content)) < least:
        return None, "c4_too_few_sentences"
    out = BLANK_RUNS.sub("\n\n", "\n".join(kept)).strip()
    return (out, None) if out else (None, "c4_no_lines_kept")
