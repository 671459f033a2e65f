"""What a downloaded file's bytes tell where nothing else does: whether it was cut short.

A server that sends no length and just closes the connection early leaves a file that looks
complete; where no size or digest is pinned either, only the bytes can tell.
"""

from __future__ import annotations

import os
import zlib
from pathlib import Path

import zstandard

from pipeline.readers import compression, decompressed


def cut_short(path: Path, name: str, vouched: int | None) -> str | None:
    """Why `path` (to be named `name`) looks cut short, None where it does not: an empty body is no data
    file, and JSON lines ending inside a line or a gzip/zstd stream without its end were cut short where
    no answer stated the size (`vouched`: what the server or a pin said the whole file holds)."""
    have = path.stat().st_size
    if not have:
        return "the server sent an empty file"
    if vouched is None and name.lower().endswith(".jsonl"):
        with open(path, "rb") as f:
            f.seek(-1, os.SEEK_END)
            if f.read(1) != b"\n":
                return f"cut short: the file ends inside a line, at byte {have}"
    if vouched is None and compression(name):
        # Only the end marker tells a whole gzip/zstd stream from a cut-short one, which got the final
        # name and stopped every later prepare as a bad file (a rerun found it there). Other damage is
        # left for the reader to report; this checks the end only.
        try:
            with open(path, "rb") as f, decompressed(f, name) as stream:
                while stream.read(1 << 20):
                    pass
        except EOFError as err:
            return f"cut short at byte {have}: {err}"
        except (OSError, zlib.error, zstandard.ZstdError):  # damaged, not cut short: the reader names it
            pass
    return None
