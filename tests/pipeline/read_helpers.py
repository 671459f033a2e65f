"""Shared by the reader tests: read a file as the pipeline does, through its chunk plan."""

from __future__ import annotations

import pytest

from pipeline.sources import BadFileError, ReadStats, plan_chunks, read_chunk

FORMATS = ["a.jsonl", "a.jsonl.gz", "a.jsonl.zst", "a.json", "a.csv", "a.parquet"]


def read_all(path, chunk_bytes=64 << 20, **kw):
    stats = kw.pop("stats", None) or ReadStats()
    out = [rec for chunk in plan_chunks([path], chunk_bytes) for rec in read_chunk(chunk, stats=stats, **kw)]
    return out, stats


def texts_of(path, **kw):
    return [text for text, _ in read_all(path, **kw)[0]]


def bad_file(path, match, **kw):
    with pytest.raises(BadFileError, match=match) as info:
        read_all(path, **kw)
    return info.value
