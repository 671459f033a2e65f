"""JSON lines: one JSON object per line, the RedPajama layout, read line by line from a chunk.

Besides the records, the reader judges the file as a whole where one line cannot: a file whose
first lines are none of them JSON is no JSON lines file (gzip, parquet or UTF-16 data under that
name, random bytes), a file of CR-ended lines is one that splitting by LF would read as a single
line, and a line too long to hold is skipped while it streams past.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, BinaryIO

from pipeline.readers import (
    BLOCK,
    BOM,
    MAX_RECORD_BYTES,
    BadFileError,
    ReadStats,
    Record,
    compression,
    decompressed,
    parse_json,
    text_of,
)

if TYPE_CHECKING:
    from pipeline.sources import Chunk

# A line that is not JSON but holds, between CRs, a piece that is a whole JSON object has lines ended
# by CR alone (classic Mac): read by "\n" the whole file is one line. (A raw CR inside a string, or as
# whitespace in a line broken for some other reason, leaves no whole object between CRs.) The first
# few pieces are tried, so a broken first record does not hide the rest.
_CR_PIECES = 4


def refuse_cr_line_ends(line: bytes, path: str, line_no: int) -> None:
    """Raise BadFileError if `line`, which is not JSON, holds lines ended by CR alone."""
    pieces = line.split(b"\r", _CR_PIECES)
    if len(pieces) < 2:
        return
    for piece in pieces[:_CR_PIECES] if len(pieces) > _CR_PIECES else pieces:
        try:
            value, _ = parse_json(piece)
        except ValueError:
            continue
        if isinstance(value, dict):
            raise BadFileError(path, None, f"line {line_no} holds carriage returns between whole JSON objects: its "
                                           "lines end in CR alone (old Mac style?), convert them to \\n")


# What a file named .jsonl may hold instead, by its first bytes, and what to do about it: each of its
# lines would count as one invalid_json record, and a file of nothing but them would pass as a file
# of bad records.
_SIGNATURES = {
    b"\x1f\x8b": ("gzip data", "name it .jsonl.gz"),
    b"\x28\xb5\x2f\xfd": ("zstd data", "name it .jsonl.zst"),
    b"PAR1": ("a parquet file", "name it .parquet"),
    b"BZh": ("bzip2 data", "decompress it first"),
    b"\xfd7zXZ\x00": ("xz data", "decompress it first"),
    b"PK\x03\x04": ("a zip archive", "unpack it first"),
    b"\xff\xfe": ("UTF-16 text", "convert it to UTF-8"),
    b"\xfe\xff": ("UTF-16 text", "convert it to UTF-8"),
}
# A file's first lines decide whether it is JSON lines at all: this many unparsable lines before any
# that parses (or a file with none that does) make it a bad file. A few broken records at the
# start of a real crawl file stay bad records.
_SNIFF_LINES = 20


class _Sniffer:
    """Refuses a file whose first lines show it is not JSON lines, before any line of it parsed."""

    def __init__(self, path: str):
        self.path, self.failed, self.first, self.first_no = path, 0, b"", 0

    def failed_line(self, line: bytes, line_no: int) -> None:
        self.failed += 1
        if not self.first:  # not always line 1: blank or too long lines may come before it
            self.first, self.first_no = line, line_no
        found = next((v for sig, v in _SIGNATURES.items() if line.startswith(sig)), None) if line_no == 1 else None
        if found:
            kind, hint = found
            if compression(self.path) and hint.startswith("name it"):
                kind, hint = f"{kind} inside its compression", "compressed twice?"
            raise BadFileError(self.path, 0, f"holds {kind}, not JSON lines ({hint})")
        if self.failed >= _SNIFF_LINES:
            self.refuse(f"none of its first {self.failed} lines is JSON")

    def read_on(self, stream: BinaryIO, first_line: int) -> None:
        """Judge by the lines after a chunk that ended before the verdict (the next chunk's, which that
        chunk reads as its own): until one parses, the sniff's count of failures is reached, or the file
        ends. A bigger chunk would have held them, and what the store holds must not depend on it."""
        for line_no, (_, line) in enumerate(_lines(stream), start=first_line):
            if line and not line.isspace():
                try:
                    parse_json(line)
                except ValueError:
                    self.failed_line(line, line_no)
                else:
                    self.failed = 0
                    return

    def refuse(self, why: str) -> None:
        # JSON never holds a raw NUL byte; UTF-16 text without a byte order mark, or binary data, does.
        binary = "; binary data (NUL bytes) or UTF-16 text?" if b"\x00" in self.first else ""
        raise BadFileError(self.path, None, f"{why} (line {self.first_no} begins {self.first[:60]!r}): not a JSON "
                                            f"lines file{binary}")


def _lines(stream: BinaryIO) -> Iterator[tuple[int, bytes | None]]:
    """Each line's size in bytes and its bytes without a BOM (at a file's start, or where files with one
    were concatenated); None for a line over MAX_RECORD_BYTES, read past without being held (the
    newline does not count against the limit)."""
    while line := stream.readline(MAX_RECORD_BYTES + 1):
        if len(line) <= MAX_RECORD_BYTES or line.endswith(b"\n"):
            yield len(line), line.removeprefix(BOM)
            continue
        size = len(line)
        while not line.endswith(b"\n") and (line := stream.readline(BLOCK)):
            size += len(line)
        yield size, None


def _wrapper_key(value: object, key: str) -> str | None:
    """The key under which a file's first object holds the records (`{"data": [{"text": ...}, ...]}`)
    instead of being one: read as a record, all of them would go as one missing_text."""
    if isinstance(value, dict) and key not in value:
        for name, inner in value.items():
            if isinstance(inner, list) and inner and isinstance(inner[0], dict) and key in inner[0]:
                return name
    return None


def read_json_lines(raw: BinaryIO, chunk: Chunk, key: str, stats: ReadStats) -> Iterator[Record]:
    """One JSON object per line; the chunk owns every line that starts in [start, end).

    The first chunk of a file also checks that it is JSON lines at all (`_Sniffer`)."""
    stream = decompressed(raw, chunk.path)
    if stream is raw:
        raw.seek(chunk.start)
        end = chunk.end
    else:
        end = None  # compressed files are never split
    sniffer = _Sniffer(chunk.path) if chunk.start == 0 else None
    pos, line_no = chunk.start, chunk.first_line - 1
    for line_no, (size, line) in enumerate(_lines(stream), start=chunk.first_line):
        pos += size  # counted with the BOM: chunk boundaries are byte offsets of the file
        if line is None:
            stats.note("record_too_long", f"{chunk.path}:{line_no}")
        elif line and not line.isspace():  # empty where a BOM was all there was
            where = f"{chunk.path}:{line_no}"
            try:
                value, repaired = parse_json(line)
            except ValueError:
                refuse_cr_line_ends(line, chunk.path, line_no)
                if sniffer:
                    sniffer.failed_line(line, line_no)
                stats.note("invalid_json", where)
            else:
                if sniffer and (name := _wrapper_key(value, key)):
                    raise BadFileError(chunk.path, None, f"line {line_no} is one object holding records under "
                                       f"{name!r}, not a record: write them one per line (jq -c '.{name}[]' "
                                       "FILE > FILE.jsonl) or as an array")
                sniffer = None
                text = text_of(value, key, repaired, where, stats)
                if text is not None:
                    yield text, where
        if end is not None and pos >= end:
            break  # before reading the next chunk's first line, which may be huge
    # Also after a chunk of blank lines only, which failed none: the lines after them decide.
    if sniffer and end is not None and pos < chunk.size:
        sniffer.read_on(stream, line_no + 1)
    if sniffer and sniffer.failed:
        sniffer.refuse("no line of it is JSON")
