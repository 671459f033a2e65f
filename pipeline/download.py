"""Resumable, verified HTTP downloads (urllib only), and the RedPajama sample files.

A download appends to `dest.part` and renames it to `dest` only after the size and sha256 check,
so `dest` existing means it is complete. An interrupted run resumes with an HTTP Range request;
a server that ignores Range gets a clean restart. The sha256 of every finished file is written
to `dest.sha256` (sha256sum format) so an unpinned file can be pinned or re-checked later.
"""

from __future__ import annotations

import logging
import os
import re
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from http.client import HTTPException
from pathlib import Path

from tqdm import tqdm

from pipeline.store import sha256_file

log = logging.getLogger("pipeline")

BLOCK = 1 << 20
TIMEOUT_S = 60

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

Progress = Callable[[int, int | None], None]


class DownloadError(Exception):
    """A download that failed or did not verify."""


class _Incomplete(Exception):
    """The connection dropped early; `.part` is kept and the next attempt resumes from it."""


def _part(dest: Path) -> Path:
    return dest.with_name(dest.name + ".part")


def _total_from(resp, offset: int) -> int | None:
    """Full size of the remote file, from Content-Range (`bytes a-b/total`) or Content-Length."""
    m = re.match(r"bytes\s+\d+-\d+/(\d+)", resp.headers.get("Content-Range", ""))
    if m:
        return int(m.group(1))
    length = resp.headers.get("Content-Length")
    return offset + int(length) if length is not None else None


def _fetch(url: str, part: Path, size: int | None, progress: Progress | None) -> None:
    """One attempt: bring `part` up to the whole file, resuming from what it already holds."""
    offset = part.stat().st_size if part.exists() else 0
    if size is not None and offset >= size:
        if offset > size:  # cannot be a prefix of the right file
            part.unlink()
            offset = 0
        else:
            return
    request = urllib.request.Request(url, headers={"Range": f"bytes={offset}-"} if offset else {})
    try:
        resp = urllib.request.urlopen(request, timeout=TIMEOUT_S)
    except urllib.error.HTTPError as err:
        if err.code == 416 and offset:  # nothing past our offset: done, or a bigger stale .part
            total = re.search(r"/(\d+)", err.headers.get("Content-Range", ""))
            if total and int(total.group(1)) == offset:
                return
            part.unlink()
            raise _Incomplete(f"{url}: stale partial download discarded") from None
        raise DownloadError(f"{url}: HTTP {err.code} {err.reason}") from None
    with resp:
        if offset and resp.status != 206:
            log.info("%s ignores Range; restarting from byte 0", url)
            offset = 0
        elif offset and not resp.headers.get("Content-Range", "").startswith(f"bytes {offset}-"):
            part.unlink()
            raise _Incomplete(f"{url}: server resumed at the wrong offset; partial download discarded")
        total = _total_from(resp, offset)
        done = offset
        with open(part, "ab" if offset else "wb") as out:
            while block := resp.read(BLOCK):
                out.write(block)
                done += len(block)
                if progress:
                    progress(done, total or size)
    if total is not None and done < total:
        raise _Incomplete(f"{url}: connection closed at byte {done} of {total}")


def _verify(part: Path, size: int | None, sha256: str | None, url: str) -> str:
    """The file's sha256 if it matches what is expected; otherwise delete it and raise."""
    have_size = part.stat().st_size
    digest = sha256_file(part)
    problem = None
    if size is not None and have_size != size:
        problem = f"size {have_size}, expected {size}"
    elif sha256 is not None and digest != sha256.lower():
        problem = f"sha256 {digest}, expected {sha256}"
    if problem:
        part.unlink()
        raise DownloadError(f"{url}: downloaded file does not verify ({problem}); deleted it, run again to retry")
    return digest


def download(
    url: str,
    dest: str | Path,
    size: int | None = None,
    sha256: str | None = None,
    progress: Progress | None = None,
    retries: int = 3,
) -> Path:
    """Fetch `url` to `dest` unless it is already there; resume, verify, then rename into place.

    `progress(bytes_done, total_or_None)` is called as blocks arrive. A dropped connection is
    retried `retries` times (resuming each time); HTTP errors and failed verification are not.
    """
    dest = Path(dest)
    if dest.exists() and (size is None or dest.stat().st_size == size):
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = _part(dest)
    for attempt in range(retries + 1):
        try:
            _fetch(url, part, size, progress)
            break
        except (_Incomplete, HTTPException, OSError) as err:  # OSError covers URLError and timeouts
            if attempt == retries:
                raise DownloadError(f"{url}: {err} (partial file kept at {part}; run again to resume)") from None
            log.warning("%s: %s; retrying", url, err)
            time.sleep(min(2**attempt, 30))
    digest = _verify(part, size, sha256, url)
    Path(f"{dest}.sha256").write_text(f"{digest}  {dest.name}\n")
    os.replace(part, dest)
    return dest


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
        if not dest.exists():
            bar, update = _tqdm_progress(remote.name)
            with bar:
                download(base + remote.name, dest, remote.size, remote.sha256, progress=update)
        paths.append(dest)
    return paths
