"""A `.json` file: which layout it has (JSON lines or one array), and the streamed array reader.

The file is never held whole: an incremental scanner tracks only the array's structure (brackets
and string boundaries) and hands each element's text to the JSON parser, so memory is bounded by
the largest element.
"""

from __future__ import annotations

import io
import re
from collections.abc import Iterator
from itertools import count
from typing import TYPE_CHECKING, BinaryIO

from pipeline.json_lines import refuse_cr_line_ends
from pipeline.readers import (
    BLOCK,
    BOM,
    MAX_RECORD_BYTES,
    BadFileError,
    ReadStats,
    Record,
    parse_json,
    text_of,
    text_stream,
)

if TYPE_CHECKING:
    from pipeline.sources import Chunk

_NON_SPACE = re.compile(r"\S")


def json_layout(stream: BinaryIO, path: str) -> str:
    """`jsonl` when a .json file's (decompressed) bytes start with a line holding one JSON value, else
    `json` (an array, streamed; anything else is reported by the array reader).

    A first line that is not a whole value is a multi-line (pretty-printed) object: read as JSON lines,
    each of its lines would be a bad record or, worse, an inner object kept as a record, so it is a
    bad file. Raises BadFileError.
    """
    line_no, first = _first_line(stream)
    if first[:1] != b"{":
        return "json" if first else "jsonl"  # a blank file is no error either way
    if len(first) > MAX_RECORD_BYTES:
        return "jsonl"  # one line, too long to judge here: the JSON lines reader skips it as record_too_long
    try:
        parse_json(first)
    except ValueError:
        refuse_cr_line_ends(first, path, line_no)
        raise BadFileError(path, None, f"line {line_no} is not one whole JSON value, so the file is neither JSON "
                                       "lines nor an array (a pretty-printed JSON object?): write one object "
                                       "per line, or an array of objects") from None
    return "jsonl"


def _first_line(stream: BinaryIO) -> tuple[int, bytes]:
    """The first line that is not blank, and its number; read whole only if it starts an object, and only
    up to just past MAX_RECORD_BYTES: a one-line file of GBs (`{"data": [...]}`) was read whole, then
    parsed, in the process that plans the chunks (1 GB for a 300 MB file)."""
    line_no, piece = 1, stream.readline(BLOCK).removeprefix(BOM)
    while piece:
        start = piece.lstrip()
        if start:
            if start[:1] == b"{" and not piece.endswith(b"\n"):
                start += stream.readline(MAX_RECORD_BYTES + 1 - len(start))
            return line_no, start
        if piece.endswith(b"\n"):  # else a long blank line goes on in the next piece
            line_no += 1
        piece = stream.readline(BLOCK)
    return line_no, b""


class _Malformed(Exception):
    """The array's structure is broken, so no later element can be trusted."""


class _ArrayScanner:
    """Splits a streamed top-level JSON array into element texts without holding the whole file.

    Only structure is tracked (brackets and string boundaries) and each element is parsed
    separately. The buffer keeps just the element being scanned.
    """

    def __init__(self, stream: io.TextIOWrapper):
        self.stream, self.buf, self.pos, self.line, self.eof = stream, "", 0, 1, False

    def _more(self) -> int:
        """Drop the consumed prefix and read on; how far indices moved back, or -1 at end of file."""
        if self.eof:
            return -1
        shift, self.buf, self.pos = self.pos, self.buf[self.pos :], 0
        # Read at least what is held, so a huge element is rescanned O(log size) times, not O(size).
        data = self.stream.read(max(BLOCK, len(self.buf)))
        if not data:
            self.eof = True
            return -1
        self.buf += data
        return shift

    def advance(self, to: int) -> None:
        self.line += self.buf.count("\n", self.pos, to)
        self.pos = to

    def peek(self) -> str | None:
        """Skip whitespace; the next character (not consumed), or None at end of file."""
        while True:
            m = _NON_SPACE.search(self.buf, self.pos)
            if m:
                self.advance(m.start())
                return m.group()
            self.advance(len(self.buf))
            if self._more() < 0:
                return None

    def element(self) -> str:
        """Consume one element: everything up to the `,` or `]` that closes it at depth 0."""
        i, depth = self.pos, 0
        while True:
            m = _STRUCTURE.search(self.buf, i)
            end = _string_end(self.buf, m.end()) if m and m.group() == '"' else 0
            if m is None or end < 0:
                if len(self.buf) - self.pos > MAX_RECORD_BYTES:  # never held whole (see readers.py)
                    raise _Malformed(f"line {self.line}: the element starting here runs over {MAX_RECORD_BYTES:,} "
                                     "characters (a quote that never closes?)")
                i = len(self.buf) if m is None else m.start()  # rescan an unfinished string from its quote
                shift = self._more()
                if shift < 0:
                    raise _Malformed(f"line {self.line}: the element starting here is not closed before the file ends")
                i -= shift
                continue
            c, i = m.group(), m.end()
            if c == '"':
                i = end
            elif c in "[{":
                depth += 1
            elif depth == 0 and c in ",]":
                text = self.buf[self.pos : m.start()]
                self.advance(m.start())
                return text
            elif c in "]}":
                depth -= 1
                if depth < 0:
                    line = self.line + self.buf.count("\n", self.pos, m.start())
                    raise _Malformed(f"line {line}: unbalanced {c!r} in the JSON array")


_STRUCTURE = re.compile(r'["\[\]{},]')


def _string_end(buf: str, i: int) -> int:
    """Index just past the quote closing a string whose body starts at i; -1 if not buffered yet."""
    while (j := buf.find('"', i)) >= 0:
        k = j
        while buf[k - 1] == "\\":
            k -= 1
        if (j - k) % 2 == 0:  # an even run of backslashes escapes only itself, not the quote
            return j + 1
        i = j + 1
    return -1


def read_json_array(raw: BinaryIO, chunk: Chunk, key: str, stats: ReadStats) -> Iterator[Record]:
    """A .json file holding one array of objects, streamed element by element."""
    scan = _ArrayScanner(text_stream(raw, chunk.path))
    try:
        yield from _array_records(scan, chunk.path, key, stats)
    except _Malformed as err:
        # A line, not raw.tell(): that is where the read buffer ends, not where the fault is.
        raise BadFileError(chunk.path, None, str(err)) from None


def _array_records(scan: _ArrayScanner, path: str, key: str, stats: ReadStats) -> Iterator[Record]:
    first = scan.peek()
    if first is None:
        return
    if first != "[":
        raise _Malformed(f"line {scan.line}: not JSON lines or a JSON array (starts with {first!r})")
    scan.advance(scan.pos + 1)
    if scan.peek() == "]":
        scan.advance(scan.pos + 1)
    else:
        for number in count(1):
            scan.peek()  # skip whitespace, so the location is the element's own line
            line, where = scan.line, f"{path}:{scan.line}"
            try:
                text = _element_text(scan.element(), key, where, line, stats)
            except _Malformed as err:  # in a one-line array (json.dump's default) the line alone says little
                raise _Malformed(f"{err} (array element {number:,})") from None
            if text is not None:
                yield text, where
            closing = scan.peek()  # element() stopped on "," or "]"
            scan.advance(scan.pos + 1)
            if closing == "]":
                break
    if scan.peek() is not None:
        raise _Malformed(f"line {scan.line}: unexpected data after the JSON array")


def _element_text(element: str, key: str, where: str, line: int, stats: ReadStats) -> str | None:
    """The record's text, or None after counting why it has none.

    An element that is not JSON is a broken structure, not one bad record: a stray or missing quote
    makes the scanner take string contents for structure (or the reverse), so the element it cut
    out may have swallowed the records after it, and no later boundary can be trusted either. An
    empty element (a trailing or doubled comma) hides nothing and is counted.
    """
    try:
        value, repaired = parse_json(element)
    except ValueError:
        if element.strip():
            raise _Malformed(f"line {line}: the array element starting here is not valid JSON, so where "
                             "the elements after it start cannot be told (a stray or missing quote?)") from None
        stats.note("invalid_json", where)
        return None
    return text_of(value, key, repaired, where, stats)
