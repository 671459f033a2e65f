"""Durable file writes and content hashes, for every stage that leaves files behind.

A crash must never leave a half-written file that looks complete: a file is written under a temp
name, fsynced, and renamed over its final name, and the folder is fsynced so the rename survives.
"""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path
from typing import BinaryIO


def sha256_file(path: str | Path, bufsize: int = 1 << 22) -> str:
    with open(path, "rb") as f:
        return sha256_of(f, bufsize)


def sha256_of(f: BinaryIO, bufsize: int = 1 << 22) -> str:
    """The sha256 of what is left to read in `f`."""
    digest = hashlib.sha256()
    while block := f.read(bufsize):
        digest.update(block)
    return digest.hexdigest()


def fsync_path(path: Path) -> None:
    """fsync a file or a directory given by its path."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: Path) -> None:
    """Make a rename inside `path` durable (a crash after rename must not resurrect the old name)."""
    fsync_path(path)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write to a temp name, fsync, rename: readers see the old file or the whole new one, never half.

    A file replaced keeps its permission bits (as `sed -i` does): the temp file is created with the
    umask's mode, and a user who made, say, an exported config.json read-only or group-writable would
    otherwise lose that on every rewrite. A new file gets the umask's mode."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        old_mode = stat.S_IMODE(os.stat(path).st_mode)
    except FileNotFoundError:
        old_mode = None
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            if old_mode is not None:
                os.fchmod(f.fileno(), old_mode)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)  # a full disk must not also leave a stray temp file beside the user's
        raise
    fsync_dir(path.parent)
