"""One writer per directory: an advisory lock that lives as long as an open file."""

from __future__ import annotations

import fcntl
from pathlib import Path
from typing import IO


def exclusive_lock(path: str | Path, wait: bool = False) -> IO[str] | None:
    """Open `path` (created if missing) holding an exclusive flock, released when the returned file
    is closed or the process dies (so a killed run never leaves a stale lock); None if another
    process holds it, or with `wait`, block until it lets go."""
    f = open(path, "w")
    try:
        fcntl.flock(f, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.close()
        return None
    except BaseException:  # Ctrl-C while waiting: no open file left behind
        f.close()
        raise
    return f
