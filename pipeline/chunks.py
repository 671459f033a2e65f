"""Phase 1 of `prepare`: one chunk of input in, one result file of token ids out.

A worker reads its chunk, cleans each document, tokenizes the survivors as [BOS] + ids and streams
them into `<store>/.work/<key>.chunk`. The file is written under a temp name and renamed only once
complete, so after a `kill -9` a result file either exists whole or not at all. Its name is a hash
of everything the content depends on (the input file's path, size, mtime and byte range, the
cleaning options, the tokenizer's sha256, this format's version): a rerun finds finished chunks by
name and a changed input or option maps to new names, so stale results are never reused.

Layout of a result file (little-endian), written front to back while streaming:

    ids         dtype[tokens]     every kept document as [BOS] + ids, in reading order
    lengths     int64[documents]  tokens of each document, [BOS] included
    hashes      uint64[documents] `doc_hash` of each cleaned text (dedup and split, in phase 2)
    text_bytes  int64[documents]  UTF-8 bytes of each cleaned text (bits/byte needs them)
    raw_bytes   int64[documents]  UTF-8 bytes of each text as read (what a duplicate drops, in the stats)
    meta        JSON              source file, counts, dtype, cleaning and reading stats
    footer      uint64 meta size, then MAGIC
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing as mp
import os
import signal
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from common.files import sha256_file
from pipeline.clean import CleanConfig, CleanStats, clean_text, doc_hash, utf8_len
from pipeline.fast_encode import Encoder
from pipeline.readers import BadFileError, ReadStats
from pipeline.sources import Chunk, read_chunk
from pipeline.store import dtype_for_vocab
from pipeline.tokenizer import TokenizerError

WORK_FORMAT = 2
MAGIC = b"SGCHUNK1"
# Documents are encoded in batches of about this much text: big enough to amortise the encoder's
# per-call cost, small enough that a worker never holds more than a few MB of text.
BATCH_CHARS = 4 << 20
_FOOTER = 8 + len(MAGIC)


@dataclass(frozen=True)
class Settings:
    """Everything a worker needs besides its chunk; the same for all workers (and picklable)."""

    tokenizer_path: str
    tokenizer_sha256: str
    clean: CleanConfig
    text_field: str
    csv_column: str

    def digest(self) -> str:
        """Hash of the options that shape a chunk's result (the tokenizer path does not: its sha does)."""
        blob = {"format": WORK_FORMAT, "tokenizer": self.tokenizer_sha256, "clean": asdict(self.clean),
                "text_field": self.text_field, "csv_column": self.csv_column}
        return hashlib.sha256(json.dumps(blob, sort_keys=True).encode()).hexdigest()


def chunk_key(chunk: Chunk, settings_digest: str) -> str:
    blob = [str(chunk.path), chunk.size, chunk.mtime_ns, chunk.start, chunk.end, settings_digest]
    return hashlib.sha256(json.dumps(blob).encode()).hexdigest()[:32]


@dataclass
class ChunkDone:
    """What a worker sends back: small, since the tokens themselves went to disk."""

    position: int
    """The chunk's place in the plan (phase 2 consumes results in plan order)."""
    documents: int = 0
    tokens: int = 0
    error: dict[str, Any] | None = None
    """{path, offset, error} when the chunk hit a file-level fault (no result file then)."""


@dataclass
class ChunkData:
    """A result file read back."""

    ids: np.ndarray
    lengths: np.ndarray
    hashes: np.ndarray
    text_bytes: np.ndarray
    raw_bytes: np.ndarray
    meta: dict[str, Any]

    @property
    def clean_stats(self) -> CleanStats:
        return CleanStats.from_dict(self.meta["clean"])

    @property
    def read_stats(self) -> ReadStats:
        return ReadStats.from_dict(self.meta["read"])


def with_bos(ids: np.ndarray, lengths: np.ndarray, bos_id: int) -> tuple[np.ndarray, np.ndarray]:
    """Flat ids of n documents -> flat [BOS] + ids of each, and the new lengths."""
    out_len = lengths + 1
    bos_at = np.cumsum(out_len) - out_len
    out = np.empty(int(out_len.sum()), dtype=ids.dtype)
    is_text = np.ones(len(out), dtype=bool)
    is_text[bos_at] = False
    out[bos_at] = bos_id
    out[is_text] = ids
    return out, out_len


def build_chunk(position: int, chunk: Chunk, path: Path, settings: Settings, encoder: Encoder) -> ChunkDone:
    """Read, clean and tokenize `chunk` into the result file `path`; BadFileError passes through."""
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
    try:
        meta = _stream_chunk(chunk, tmp, settings, encoder)
    except BaseException:
        tmp.unlink(missing_ok=True)  # a failed chunk leaves no temp file (a killed one's goes at the next run)
        raise
    os.replace(tmp, path)
    return ChunkDone(position, meta["documents"], meta["tokens"])


def _stream_chunk(chunk: Chunk, tmp: Path, settings: Settings, encoder: Encoder) -> dict[str, Any]:
    dtype = dtype_for_vocab(encoder.vocab_size)
    clean_stats, read_stats = CleanStats(), ReadStats()
    lengths: list[np.ndarray] = []
    hashes: list[int] = []
    text_bytes: list[int] = []
    raw_bytes: list[int] = []
    with open(tmp, "wb") as f:

        def flush(batch: list[str]) -> None:
            ids, lens = encoder.encode_to_array(batch)
            if len(ids) and int(ids.max()) >= encoder.vocab_size:
                raise ValueError(f"tokenizer produced id {int(ids.max())} >= vocab_size {encoder.vocab_size}")
            ids, lens = with_bos(ids.astype(dtype, copy=False), np.asarray(lens, dtype=np.int64), encoder.bos_id)
            f.write(ids.tobytes())
            lengths.append(lens)
            hashes.extend(map(doc_hash, batch))
            text_bytes.extend(len(t.encode("utf-8")) for t in batch)

        batch: list[str] = []
        chars = 0
        for text, _where in read_chunk(chunk, settings.text_field, settings.csv_column, read_stats):
            cleaned, _rule = clean_text(text, settings.clean, clean_stats)
            if cleaned is None:
                continue
            batch.append(cleaned)
            raw_bytes.append(utf8_len(text))
            chars += len(cleaned)
            if chars >= BATCH_CHARS:
                flush(batch)
                batch, chars = [], 0
        if batch:
            flush(batch)
        lens = np.concatenate(lengths) if lengths else np.zeros(0, np.int64)
        meta = {"format": WORK_FORMAT, "path": chunk.path, "size": chunk.size, "dtype": dtype.str,
                "tokens": int(lens.sum()), "documents": len(lens), "clean": clean_stats.to_dict(),
                "read": read_stats.to_dict()}
        f.write(lens.astype("<i8").tobytes())
        f.write(np.array(hashes, dtype="<u8").tobytes())
        f.write(np.array(text_bytes, dtype="<i8").tobytes())
        f.write(np.array(raw_bytes, dtype="<i8").tobytes())
        blob = json.dumps(meta).encode()
        f.write(blob + len(blob).to_bytes(8, "little") + MAGIC)
        f.flush()
        os.fsync(f.fileno())
    return meta


def result_meta(path: Path) -> dict[str, Any] | None:
    """The meta of a finished result file, or None when absent or not whole (then the chunk is redone)."""
    try:
        with open(path, "rb") as f:
            size = f.seek(0, os.SEEK_END)
            if size < _FOOTER:
                return None
            f.seek(size - _FOOTER)
            footer = f.read(_FOOTER)
            meta_len = int.from_bytes(footer[:8], "little")
            if footer[8:] != MAGIC or meta_len > size - _FOOTER:
                return None
            f.seek(size - _FOOTER - meta_len)
            meta = json.loads(f.read(meta_len))
    except (OSError, ValueError):
        return None
    if not isinstance(meta, dict) or meta.get("format") != WORK_FORMAT:
        return None
    if meta["tokens"] * np.dtype(meta["dtype"]).itemsize + 32 * meta["documents"] + meta_len + _FOOTER != size:
        return None
    return meta


def load_result(path: Path, meta: dict[str, Any]) -> ChunkData:
    dtype, n_tok, n_doc = np.dtype(meta["dtype"]), meta["tokens"], meta["documents"]
    ids = np.fromfile(path, dtype=dtype, count=n_tok)
    rest = np.fromfile(path, dtype="<i8", count=4 * n_doc, offset=n_tok * dtype.itemsize).reshape(4, n_doc)
    return ChunkData(ids, rest[0], rest[1].view("<u8"), rest[2], rest[3], meta)


# One encoder per worker process, loaded once by the pool's initializer.
_WORKER: dict[str, Any] = {}


def init_worker(settings: Settings) -> None:
    """Load the encoder, checking it is the tokenizer the parent hashed (the results are keyed by that
    hash). A failure is kept and raised by each chunk, so the parent gets the error itself rather than
    a pool whose workers die at start-up."""
    _WORKER.clear()
    _WORKER["settings"] = settings
    if mp.parent_process() is not None:
        # Ctrl-C reaches the whole process group: the parent alone stops the run (pipeline/pool.py),
        # instead of each worker dying with a traceback.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        if sha256_file(settings.tokenizer_path) != settings.tokenizer_sha256:
            raise TokenizerError(f"{settings.tokenizer_path}: changed while prepare was running; rerun it")
        _WORKER["encoder"] = Encoder(settings.tokenizer_path)
    except (OSError, ValueError) as err:
        _WORKER["startup_error"] = TokenizerError(f"a worker could not load the tokenizer: {err}")


def run_chunk(job: tuple[int, Chunk, str]) -> ChunkDone:
    """Pool entry point. A file-level fault comes back as data, so the parent decides what it means."""
    if "startup_error" in _WORKER:
        raise _WORKER["startup_error"]
    position, chunk, path = job
    try:
        return build_chunk(position, chunk, Path(path), _WORKER["settings"], _WORKER["encoder"])
    except BadFileError as err:
        error = {"path": err.path, "offset": err.offset, "error": err.message}
        return ChunkDone(position, error=error)
