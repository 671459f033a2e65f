"""The RedPajama-1T-Sample files: which ones a `SOURCE=redpajama` build reads, and fetching them.

The downloading itself (resume, verification, one process at a time) is pipeline.download's; this
holds what is particular to the dataset: its file table, its base URL and a mirror in its place,
and the HTML pages that an older version kept under a data file's name.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from pipeline.download import Progress, download

log = logging.getLogger("pipeline")

REDPAJAMA_BASE_URL = "https://huggingface.co/datasets/togethercomputer/RedPajama-Data-1T-Sample/resolve/main/"


@dataclass(frozen=True)
class RemoteFile:
    name: str
    size: int | None = None
    """Expected bytes, None where not pinned."""
    sha256: str | None = None
    """Expected hex digest, None where not pinned (the computed one lands in the .sha256 sidecar)."""


# Not pinned: this table was written without network access to read them from the dataset card.
REDPAJAMA = (
    RemoteFile("c4_sample.jsonl"),
    RemoteFile("cc_2023-06_sample.jsonl"),
    RemoteFile("cc_2020-05_sample.jsonl"),
)


def _looks_like_html(path: Path) -> bool:
    """An HTML page saved under a data file's name (by a version that did not check Content-Type)."""
    with open(path, "rb") as f:
        head = f.read(1024).lstrip().lower()
    return head.startswith((b"<!doctype html", b"<html"))


def _tqdm_progress(name: str) -> tuple[tqdm, Progress]:
    bar = tqdm(desc=name, unit="B", unit_scale=True, unit_divisor=1024)

    def update(done: int, total: int | None) -> None:
        bar.total = total
        bar.update(done - bar.n)

    return bar, update


def fetch_redpajama(dest_dir: str | Path, files: tuple[RemoteFile, ...] = REDPAJAMA) -> list[Path]:
    """The RedPajama-1T-Sample files in dest_dir, downloading the missing ones.

    `REDPAJAMA_BASE_URL` in the environment replaces the Hugging Face base URL (a mirror, a test server).
    """
    base = os.environ.get("REDPAJAMA_BASE_URL", REDPAJAMA_BASE_URL).rstrip("/") + "/"
    paths = []
    for remote in files:
        dest = Path(dest_dir, remote.name)
        if dest.exists() and _looks_like_html(dest):
            log.warning("%s is an HTML page left by an earlier download, not data; downloading it again", dest)
            dest.unlink(missing_ok=True)  # another process may be replacing it too
        if not dest.exists():
            bar, update = _tqdm_progress(remote.name)
            with bar:
                download(base + remote.name, dest, remote.size, remote.sha256, progress=update)
        paths.append(dest)
    return paths
