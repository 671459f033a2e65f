"""One writer per directory: an advisory lock that lives as long as an open file."""

from __future__ import annotations

import fcntl
from pathlib import Path
from typing import IO


def exclusive_lock(path: str | Path) -> IO[str] | None:
    """Open `path` (created if missing) holding an exclusive flock, released when the returned file
    is closed or the process dies (so a killed run never leaves a stale lock); None if another
    process holds it."""
    f = open(path, "w")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.close()
        return None
    return f
