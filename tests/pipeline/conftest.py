"""Shared fixtures for the pipeline tests: small corpora written in any supported input format."""

from __future__ import annotations

import contextlib
import csv
import gzip
import json
import resource
import signal
from collections.abc import Callable, Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard
from download_helpers import serving

# Texts that exercise the readers: newlines, quotes, commas, brackets, non-ASCII, a JSON-looking string.
SAMPLE_TEXTS = [
    "Hello, world.",
    "Two\nlines, with a \"quote\" and a comma",
    "Ünïcödé — naïve café, 日本語, emoji 🎭",
    'Looks like JSON: {"text": [1, 2]} ], "\\" still text',
    "",
    "Tab\tand carriage\r\nreturn",
]


@pytest.fixture
def sample_texts() -> list[str]:
    return list(SAMPLE_TEXTS)


def _jsonl_bytes(texts: list[str], key: str) -> bytes:
    return "".join(json.dumps({key: t, "id": i}, ensure_ascii=False) + "\n" for i, t in enumerate(texts)).encode()


@pytest.fixture
def write_texts(tmp_path: Path) -> Callable[..., Path]:
    """write_texts(name, texts, key="text") -> path: the texts as records, in the format the suffix names.

    `.json` writes an array; `.jsonl.gz` / `.jsonl.zst` compress JSON lines; `.csv` and `.parquet`
    use `key` as the column name.
    """

    def write(name: str, texts: list[str], key: str = "text") -> Path:
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if name.endswith(".jsonl"):
            path.write_bytes(_jsonl_bytes(texts, key))
        elif name.endswith(".jsonl.gz"):
            path.write_bytes(gzip.compress(_jsonl_bytes(texts, key)))
        elif name.endswith(".jsonl.zst"):
            path.write_bytes(zstandard.ZstdCompressor().compress(_jsonl_bytes(texts, key)))
        elif name.endswith(".json"):
            path.write_text(json.dumps([{key: t} for t in texts], indent=1, ensure_ascii=False))
        elif name.endswith(".csv"):
            with open(path, "w", newline="", encoding="utf-8") as f:
                writer = csv.writer(f)
                writer.writerow(["id", key])
                writer.writerows(enumerate(texts))
        elif name.endswith(".parquet"):
            pq.write_table(pa.table({key: texts}), path)
        else:
            raise ValueError(f"write_texts: no writer for {name}")
        return path

    return write


@pytest.fixture
def disk_fills_at() -> Callable[[int], contextlib.AbstractContextManager[None]]:
    """`with disk_fills_at(n):` any file this process writes past n bytes fails part way (EFBIG), as on
    a full disk; whatever write path the code takes (RLIMIT_FSIZE, with SIGXFSZ ignored)."""

    @contextlib.contextmanager
    def limit(n: int) -> Iterator[None]:
        soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
        handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (n, hard))
        try:
            yield
        finally:
            resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
            signal.signal(signal.SIGXFSZ, handler)

    return limit


@pytest.fixture
def server():
    """A local HTTP server for the download tests (download_helpers.py)."""
    yield from serving()
