"""Format readers: an open file (one chunk of it) in, `(text, location)` records out, memory bounded.

Every reader streams: CSV through the csv module on a text stream, parquet one record batch at a
time; JSON lines line by line (json_lines.py) and JSON arrays through their own scanner (json_array.py)
build on what is shared here. The Markdown play reader lives with the Shakespeare source in sources.py.
Faults come in two kinds. A bad record (invalid JSON, no usable text field) is skipped and counted
in `ReadStats`, because one broken line in a 10 GB crawl must not stop a run. A bad file (corrupt
compression, not the format at all, missing column) raises `BadFileError`, because every record
after the fault would be garbage or lost and the user has to look at it.

Text is decoded as UTF-8 with invalid bytes replaced by U+FFFD and counted: decoding uses
`surrogateescape` (invalid bytes become lone surrogates, which valid UTF-8 never produces), so a
cheap regex finds and replaces them per record and the count is exact.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import logging
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import zstandard

if TYPE_CHECKING:
    from pipeline.sources import Chunk

log = logging.getLogger("pipeline")

MAX_EXAMPLES = 5
BLOCK = 1 << 20
BOM = b"\xef\xbb\xbf"
_SURROGATE = re.compile("[\ud800-\udfff]")
# A longer record is never held whole: a worker holding a 2 GiB line needed ~4.5 GB, and when that ran
# out, died with a traceback naming no file or crashed inside orjson. 256 MiB is tens of millions of
# tokens, beyond any document worth training on. JSON lines skip such a line as record_too_long while it
# streams past; a CSV field or a JSON array element that long is a bad file (a quote that never closes
# makes the rest of the file one field, which the csv module held at ~4.5 bytes a character).
MAX_RECORD_BYTES = 1 << 28

Record = tuple[str, str]


class BadFileError(Exception):
    """A whole file that cannot be read: missing, unreadable, corrupt, or not in its format."""

    def __init__(self, path: str | Path, offset: int | None, message: str):
        super().__init__(path, offset, message)  # keeps it picklable across worker processes
        self.path, self.offset, self.message = str(path), offset, message

    def __str__(self) -> str:
        where = "" if self.offset is None else f" byte offset {self.offset}:"
        return f"{self.path}:{where} {self.message}"


@dataclass
class ReadStats:
    """What the readers skipped or repaired; one per process, summed with `merge`."""

    records: int = 0
    """Records yielded."""
    invalid_utf8: int = 0
    """Records yielded with invalid UTF-8 (or lone surrogates) replaced by U+FFFD."""
    bad_records: Counter = field(default_factory=Counter)
    """Skipped records by kind: invalid_json, not_an_object, missing_text, null_text, non_string_text,
    record_too_long, too_many_fields (a CSV row with more non-empty fields than its header)."""
    examples: list[str] = field(default_factory=list)
    """The first few `file:line: kind` problems, enough to go and look without flooding the log."""
    quiet: bool = False
    """Keep the examples without logging them (a second read of records another pass reports)."""

    def note(self, kind: str, where: str) -> None:
        if kind == "invalid_utf8":
            self.invalid_utf8 += 1
        else:
            self.bad_records[kind] += 1
        if len(self.examples) < MAX_EXAMPLES:
            self.examples.append(f"{where}: {kind}")
            if not self.quiet:
                log.warning("%s: %s", where, kind)

    def merge(self, other: ReadStats) -> ReadStats:
        self.records += other.records
        self.invalid_utf8 += other.invalid_utf8
        self.bad_records.update(other.bad_records)
        self.examples.extend(other.examples[: MAX_EXAMPLES - len(self.examples)])
        return self

    def to_dict(self) -> dict[str, Any]:
        return {
            "records": self.records,
            "invalid_utf8": self.invalid_utf8,
            "bad_records": dict(sorted(self.bad_records.items())),
            "examples": list(self.examples),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ReadStats:
        """The inverse of `to_dict`: stats read back from JSON (a worker's result file, say)."""
        return cls(d["records"], d["invalid_utf8"], Counter(d["bad_records"]), list(d["examples"]))


def repair(text: str) -> tuple[str, int]:
    return _SURROGATE.subn("\ufffd", text)


def parse_json(raw: bytes | str) -> tuple[Any, bool | None]:
    """One JSON value, and None if orjson took it as is, else whether invalid UTF-8 was replaced.

    orjson is the fast path but refuses invalid UTF-8 and lone surrogates; the slow path replaces
    bad bytes first and falls back to the stdlib for escaped lone surrogates ("\\ud800"), which
    then remain in the parsed strings. Raises ValueError for text that is not JSON.
    """
    try:
        return orjson.loads(raw), None
    except orjson.JSONDecodeError:
        pass
    text = raw.decode("utf-8", "surrogateescape") if isinstance(raw, bytes) else raw
    text, replaced = repair(text)
    if replaced:
        try:
            return orjson.loads(text), True
        except orjson.JSONDecodeError:
            pass
    try:
        return json.loads(text), replaced > 0
    except RecursionError:
        raise ValueError("nested too deeply") from None


def text_of(value: Any, key: str, repaired: bool | None, where: str, stats: ReadStats) -> str | None:
    """The record's text, or None after counting why it has none."""
    if not isinstance(value, dict):
        kind = "not_an_object"
    elif key not in value:
        kind = "missing_text"
    elif value[key] is None:
        kind = "null_text"
    elif not isinstance(value[key], str):
        kind = "non_string_text"
    else:
        text = value[key]
        if repaired is not None:  # the slow path: escaped lone surrogates may remain
            text, replaced = repair(text)
            if repaired or replaced:
                stats.note("invalid_utf8", where)
        return text
    stats.note(kind, where)
    return None


# zstandard's decompressobj takes no output limit (and its stream_reader, which has one, ends without
# a word on a truncated frame), so the input is fed in small reads: a zstd block decodes to at most
# 128 KiB and takes at least 4 bytes (an RLE block), so 1 KiB yields at most ~32 MiB per call
# (64 KiB gave 1 GiB at once). Decompressing costs ~10% more, at ~700 MB/s, far above cleaning.
_ZSTD_READ = 1 << 10


class _ZstdStream(io.RawIOBase):
    """Decompressed view of a .zst file that, unlike zstandard's stream_reader, notices truncation.

    Files may hold several concatenated frames; a new decompressor starts on each frame's leftovers.
    """

    def __init__(self, raw: BinaryIO):
        self._raw, self._dctx = raw, zstandard.ZstdDecompressor()
        self._dobj, self._mid_frame = self._dctx.decompressobj(), False
        self._out, self._pos = b"", 0

    def readable(self) -> bool:
        return True

    def readinto(self, buf: Any) -> int:
        while self._pos == len(self._out):
            leftover = b""
            if self._dobj.eof:
                leftover, self._dobj, self._mid_frame = self._dobj.unused_data, self._dctx.decompressobj(), False
            data = leftover or self._raw.read(_ZSTD_READ)
            if not data:
                if self._mid_frame:
                    raise EOFError("zstd stream ends inside a frame (truncated file?)")
                return 0
            self._mid_frame = True
            try:
                self._out, self._pos = self._dobj.decompress(data), 0
            except zstandard.ZstdError as err:
                if "too much memory" not in str(err):
                    raise
                # zstd's own words say neither why (a window over the 128 MiB the library allows by
                # default) nor what to do; the window is not raised here, as each worker would hold it.
                raise zstandard.ZstdError(
                    "its frames need a decoding window over 128 MiB (written with `zstd --long`?): decompress "
                    "it first (`zstd -d --long=31 FILE`) or recompress it without --long") from None
        n = min(len(buf), len(self._out) - self._pos)
        buf[:n] = memoryview(self._out)[self._pos : self._pos + n]
        self._pos += n
        return n


def compression(path: str) -> str | None:
    """"gz", "zst" or None, by suffix in any case (as formats are recognised): the one rule that
    both the reader and the planner (compressed files are never split) follow."""
    name = path.lower()
    return next((kind for kind in ("gz", "zst") if name.endswith("." + kind)), None)


def decompressed(raw: BinaryIO, path: str) -> BinaryIO:
    """The file's bytes, through gzip or zstd by suffix."""
    kind = compression(path)
    if kind == "gz":
        return gzip.GzipFile(fileobj=raw, mode="rb")
    if kind == "zst":
        return io.BufferedReader(_ZstdStream(raw), BLOCK)
    return raw


def text_stream(raw: BinaryIO, path: str) -> io.TextIOWrapper:
    # utf-8-sig drops a BOM; newline="" hands CRLF to the csv module untouched, as it requires.
    return io.TextIOWrapper(decompressed(raw, path), "utf-8-sig", "surrogateescape", newline="")


def read_csv(raw: BinaryIO, chunk: Chunk, column: str, stats: ReadStats) -> Iterator[Record]:
    """CSV with a header row; the location is the line where each record starts."""
    csv.field_size_limit(MAX_RECORD_BYTES)  # set on each call: the limit is global to the csv module
    # strict: a quote that never closes is an error, not a field that silently swallows every
    # later row up to the end of the file.
    reader = csv.reader(text_stream(raw, chunk.path), strict=True)
    line_no = 1  # where the record being read starts
    try:
        header = next(reader, None)
        if header is None:
            return
        names = [name.strip() for name in header]
        if column not in names:
            if any(names):
                found = f"columns found: {_shown(', '.join(names))}"
            elif len(names) > 1:  # a row of commas: columns, every one without a name
                found = f"line 1, the header, names {len(names)} columns, all empty"
            else:
                found = "line 1, the header, is blank"
            raise BadFileError(chunk.path, 0, f"no column {column!r}; {found}")
        if names.count(column) > 1:
            raise BadFileError(chunk.path, 0, f"{names.count(column)} columns named {column!r}: which one is the text "
                                              "is unclear")
        index = names.index(column)
        line_no = reader.line_num + 1
        for row in reader:
            where = f"{chunk.path}:{line_no}"
            line_no = reader.line_num + 1
            if index >= len(row):
                if row:  # a blank line is no record at all
                    stats.note("missing_text", where)
                continue
            if len(row) > len(names) and any(extra.strip() for extra in row[len(names) :]):
                # More fields than the header names (blank ones, a trailing comma, are harmless): a comma
                # in unquoted text split it, or the columns shifted, so the field in the text column's
                # place is a fragment of the text or another column, and kept it would pass as a document.
                stats.note("too_many_fields", where)
                continue
            text, replaced = repair(row[index])
            if replaced:
                stats.note("invalid_utf8", where)
            yield text, where
    except csv.Error as err:
        why = str(err)
        if why.startswith("field larger than field limit"):
            why = f"a field runs over {MAX_RECORD_BYTES:,} characters (a quote that never closes?)"
        raise BadFileError(chunk.path, None, f"the record starting at line {line_no}: {why}") from None


def _shown(text: str, limit: int = 200) -> str:
    """`text` for an error message: at most `limit` characters, control characters escaped (a binary
    file's "header" would otherwise print NULs and escape codes to the terminal)."""
    short = text if len(text) <= limit else text[:limit] + "..."
    return short if short.isprintable() else repr(short)


_PARQUET_TEXT_TYPES = (
    pa.types.is_string, pa.types.is_large_string, pa.types.is_string_view, pa.types.is_binary, pa.types.is_large_binary
)


def read_parquet(raw: BinaryIO, chunk: Chunk, key: str, stats: ReadStats) -> Iterator[Record]:
    """Row groups [start, end) of a parquet file, one batch at a time; locations are row numbers."""
    pf = pq.ParquetFile(raw)
    schema = pf.schema_arrow
    matches = schema.get_all_field_indices(key)
    if not matches:
        raise BadFileError(chunk.path, None, f"no column {key!r}; columns found: {_shown(', '.join(schema.names))}")
    if len(matches) > 1:
        raise BadFileError(chunk.path, None, f"{len(matches)} columns named {key!r}: which one is the text is unclear")
    kind = schema.field(matches[0]).type
    # pandas writes a "category" column as dictionary-encoded strings: text all the same.
    value_kind = kind.value_type if pa.types.is_dictionary(kind) else kind
    if not any(is_text(value_kind) for is_text in _PARQUET_TEXT_TYPES):
        raise BadFileError(chunk.path, None, f"column {key!r} holds {kind}, not text")
    row = chunk.first_line
    for group in range(chunk.start, chunk.end):
        # Group by group, so a fault is reported at its row group: the same place however the file
        # was cut into chunks (a byte position would depend on how far pyarrow had read ahead).
        batches, group_row = pf.iter_batches(row_groups=[group], columns=[key], batch_size=1024), row
        while True:
            try:
                batch = next(batches, None)
                # Via bytes: arrow strings may hold invalid UTF-8 that to_pylist() refuses (the cast
                # also decodes a dictionary-encoded column).
                values = [] if batch is None else batch.column(0).cast(pa.large_binary()).to_pylist()
            except (pa.ArrowException, OSError) as err:
                raise BadFileError(chunk.path, None, f"cannot read row group {group} (rows from {group_row}) as "
                                                     f"parquet: {err}") from None
            if batch is None:
                break
            yield from _parquet_records(values, chunk.path, row, stats)
            row += len(values)


def _parquet_records(values: list[bytes | None], path: str, row: int, stats: ReadStats) -> Iterator[Record]:
    """One batch's values, numbered from `row`: null and invalid UTF-8 values are counted."""
    for value in values:
        where = f"{path}:{row}"
        row += 1
        if value is None:
            stats.note("null_text", where)
            continue
        try:
            text = value.decode("utf-8")
        except UnicodeDecodeError:  # repaired as the other readers do, one U+FFFD per bad byte
            text, _ = repair(value.decode("utf-8", "surrogateescape"))
            stats.note("invalid_utf8", where)
        yield text, where
