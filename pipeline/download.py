"""Resumable, verified HTTP downloads (urllib only); pipeline.redpajama uses them for its sample files.

A download appends to `dest.part` and renames it to `dest` only after the size and sha256 check
and an fsync, so `dest` existing means it is complete, even after a power cut. An interrupted run
resumes with an HTTP Range request carrying If-Range with the ETag (or Last-Modified) that the
first response gave, saved in `dest.part.validator`, so a file that changed on the server comes
back whole rather than spliced from two versions. A `.part` with no validator saved (the server
sent none, or an older version left it) is not resumed by a later run unless the sha256
is pinned: nothing could tell it from a prefix of another version. A server that ignores Range
sends the whole file again; that body goes to `dest.part.new` and replaces `.part` only once it is
complete, so an error page or a dropped connection cannot cost a good partial download. A failure
names the URL and the local file; a local one (a full disk) is not retried. HTML responses are
refused outright: they are error, login or rate-limit pages, never a data file. The sha256 of
every finished file is written to `dest.sha256` (sha256sum format) so an unpinned file can be
pinned or re-checked later. One process at a time downloads to a `dest`: the others wait on the
flock of `dest.part.lock` (left in place: deleting a lock file races with its waiters).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from http.client import HTTPException
from pathlib import Path

from common.files import atomic_write_bytes, fsync_dir, fsync_path, sha256_file
from common.lock import exclusive_lock
from pipeline.cut_short import cut_short

log = logging.getLogger("pipeline")

BLOCK = 1 << 20
TIMEOUT_S = 60

Progress = Callable[[int, int | None], None]


class DownloadError(Exception):
    """A download that failed or did not verify."""


class _Incomplete(Exception):
    """An attempt worth repeating (a dropped connection, a rate limit, a server error); `.part` is kept
    and the next attempt resumes from it, after at least `wait` seconds when the server asked for them.
    Network errors become this where they arise, so any OSError left is the local side's (a full disk):
    not retried, and reported with the download it stopped."""

    def __init__(self, message: str, wait: float = 0.0):
        super().__init__(message)
        self.wait = wait


# The longest Retry-After honoured: a server asking for more is out of service, and the run should say
# so after its retries rather than sleep for an hour.
MAX_RETRY_AFTER_S = 120


def _retry_after(err: urllib.error.HTTPError) -> float:
    """The seconds a 429 or 503 asks the client to wait (Retry-After in seconds; an HTTP date is ignored)."""
    value = (err.headers.get("Retry-After") or "").strip() if err.headers else ""
    return min(float(value), MAX_RETRY_AFTER_S) if value.isascii() and value.isdigit() else 0.0


def _part(dest: Path) -> Path:
    return dest.with_name(dest.name + ".part")


def _validator_file(part: Path) -> Path:
    return part.with_name(part.name + ".validator")


def _validator(headers) -> str | None:
    """What If-Range can quote: a strong ETag, else Last-Modified (a weak ETag is not allowed there)."""
    etag = headers.get("ETag")
    if etag and not etag.startswith("W/"):
        return etag
    return headers.get("Last-Modified")


def _saved_validator(part: Path) -> str | None:
    try:
        return _validator_file(part).read_text().strip() or None
    except OSError:  # none (or none readable): the partial download is not resumed
        return None


def _save_validator(part: Path, value: str | None) -> None:
    # None still removes an older one: it would describe some other version of the file
    if value is None:
        _validator_file(part).unlink(missing_ok=True)
    else:
        _validator_file(part).write_text(value + "\n")


def _discard(part: Path) -> None:
    part.unlink(missing_ok=True)
    _validator_file(part).unlink(missing_ok=True)


def _refetch_file(part: Path) -> Path:
    """Where a whole-file refetch lands until it replaces `part`."""
    return part.with_name(part.name + ".new")


_HTML_TYPES = ("text/html", "application/xhtml+xml")


def _total_from(resp, offset: int) -> int | None:
    """Full size of the remote file, from Content-Range (`bytes a-b/total`) or Content-Length."""
    m = re.match(r"bytes\s+\d+-\d+/(\d+)", resp.headers.get("Content-Range", ""))
    if m:
        return int(m.group(1))
    length = resp.headers.get("Content-Length")
    return offset + int(length) if length is not None else None


def _read(resp) -> bytes:
    """The next block of the body; a dropped connection or a timeout is worth another attempt.

    read1: what has arrived, up to a block. read() waits for a whole MiB, and a timeout or Ctrl-C
    inside it lost everything it held, so a server stalling more often than once a MiB got nowhere.
    """
    try:
        return resp.read1(BLOCK)
    except (OSError, HTTPException) as err:
        raise _Incomplete(str(err)) from None


def _copy(resp, path: Path, mode: str, done: int, total: int | None, progress: Progress | None) -> int:
    """Append or write the response body to `path`; the byte count of the file afterwards."""
    with open(path, mode) as out:
        while block := _read(resp):
            out.write(block)
            done += len(block)
            if progress:
                progress(done, total)
    return done


def _settle_new(new: Path, part: Path, validator: str | None, keep: bool) -> None:
    """Make `new` the partial download (fsynced first: it replaces one that was good), or drop it."""
    if not keep:
        new.unlink(missing_ok=True)
        return
    fsync_path(new)
    # Validator off first: a crash between the steps must not pair the old validator with the new bytes
    _validator_file(part).unlink(missing_ok=True)
    os.replace(new, part)
    _save_validator(part, validator)


def _fetch(url: str, part: Path, size: int | None, progress: Progress | None) -> int | None:
    """One attempt: bring `part` up to the whole file, resuming from what it already holds. Returns the
    whole file's size as the server (or the pinned size) gave it, None where nothing said it."""
    offset = part.stat().st_size if part.exists() else 0
    if size is not None and offset >= size:
        if offset > size:  # cannot be a prefix of the right file
            _discard(part)
            offset = 0
        else:
            return size
    saved = _saved_validator(part) if offset else None
    headers = {}
    if offset:
        headers["Range"] = f"bytes={offset}-"
        if saved:  # the server answers with the whole file instead if .part was cut from another version
            headers["If-Range"] = saved
    request = urllib.request.Request(url, headers=headers)
    try:
        resp = urllib.request.urlopen(request, timeout=TIMEOUT_S)
    except urllib.error.HTTPError as err:
        if err.code == 416 and offset:  # nothing past our offset: done, or a bigger stale .part
            total = re.search(r"/(\d+)", err.headers.get("Content-Range", ""))
            if total and int(total.group(1)) == offset:
                return offset
            _discard(part)
            raise _Incomplete("stale partial download discarded") from None
        if err.code == 429 or err.code >= 500:  # rate limited or server trouble: passes, unlike a 404 or 403
            raise _Incomplete(f"HTTP {err.code} {err.reason}", _retry_after(err)) from None
        raise DownloadError(f"HTTP {err.code} {err.reason}") from None
    except (OSError, HTTPException) as err:  # URLError (no connection, DNS), a timeout, a reset
        raise _Incomplete(str(err)) from None
    with resp:
        if resp.headers.get_content_type() in _HTML_TYPES:
            raise DownloadError(
                f"HTTP {resp.status} sent an HTML page ({resp.headers.get('Content-Type')}), not the data file "
                f"(an error, login or rate-limit page?)"
            )
        if resp.status not in ((200, 206) if offset else (200,)):
            raise DownloadError(f"unexpected HTTP {resp.status} {resp.reason}")
        current = _validator(resp.headers)
        if resp.status == 206:
            if not resp.headers.get("Content-Range", "").startswith(f"bytes {offset}-"):
                _discard(part)
                raise _Incomplete("server resumed at the wrong offset; partial download discarded")
            if saved and current and current != saved:  # a server that ignores If-Range, caught by its validator
                _discard(part)
                raise _Incomplete("changed on the server since the partial download; starting over")
            total = _total_from(resp, offset)
            done = _copy(resp, part, "ab", offset, total or size, progress)
        elif offset:
            return _refetch_whole(url, resp, part, offset, saved, current, size, progress)
        else:
            _save_validator(part, current)  # before the first byte, so every .part has its own validator
            total = _total_from(resp, 0)
            done = _copy(resp, part, "wb", 0, total or size, progress)
    if total is not None and done < total:
        raise _Incomplete(f"connection closed at byte {done} of {total}")
    return total or size


def _refetch_whole(
    url: str, resp, part: Path, offset: int, saved: str | None, current: str | None, size: int | None,
    progress: Progress | None,
) -> int | None:
    """A 200 to a resume request: the whole file again, into `.part.new`, replacing `part` only once complete.

    Until then `part` is untouched: the body may be cut short, or be no data file at all. Only a
    response whose validator differs from the saved one proves `part` stale; then even a cut-short
    new body is worth keeping as the partial download.
    """
    changed = saved is not None and current is not None and current != saved
    log.info("%s %s; fetching the whole file again", url,
             "changed on the server" if changed else "ignores Range" if not saved else "ignores Range or changed")
    new = _refetch_file(part)
    total = _total_from(resp, 0)
    try:
        done = _copy(resp, new, "wb", 0, total or size, progress)
    except BaseException:
        _settle_new(new, part, current, keep=changed)
        raise
    if total is not None and done < total:
        _settle_new(new, part, current, keep=changed)
        raise _Incomplete(f"connection closed at byte {done} of {total}")
    if done < offset and not changed:  # a whole file shorter than our prefix of it: more likely an error body
        new.unlink()
        raise DownloadError(
            f"HTTP {resp.status} sent {done} bytes as the whole file, fewer than the {offset} already in {part}"
        )
    _settle_new(new, part, current, keep=True)
    return total or size


def _verify(part: Path, size: int | None, sha256: str | None) -> str:
    """The file's sha256 if it matches what is expected; otherwise delete it and raise."""
    have_size = part.stat().st_size
    digest = sha256_file(part)
    problem = None
    if size is not None and have_size != size:
        problem = f"size {have_size}, expected {size}"
    elif sha256 is not None and digest != sha256.lower():
        problem = f"sha256 {digest}, expected {sha256}"
    if problem:
        _discard(part)
        raise DownloadError(f"downloaded file does not verify ({problem}); deleted it, run again to retry")
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

    `progress(bytes_done, total_or_None)` is called as blocks arrive. A dropped connection, HTTP 429
    (rate limit) or 5xx (server error) is retried `retries` times with a growing pause, resuming
    each time; other HTTP errors and failed verification are not.
    """
    dest = Path(dest)
    if _complete(dest, size):
        return dest
    part = _part(dest)
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        with _sole_downloader(dest, part):
            if not _complete(dest, size):  # else finished by the process this one waited for
                _fetch_verified(url, dest, part, size, sha256, progress, retries)
    except (DownloadError, OSError) as err:  # an OSError here: making the folder or the lock
        # Raised below without saying where: one prefix here names both ends, the URL and the local file
        raise DownloadError(f"downloading {url} to {dest}: {err}") from None
    return dest


def _size(part: Path) -> int:
    try:
        return part.stat().st_size
    except OSError:
        return 0


def _resumable(part: Path, sha256: str | None) -> bool:
    """Whether a later run may append to `part`: only with a validator saved for If-Range to check that
    the server's file is still the one `part` began, or a pinned sha256 to catch a splice afterwards.
    Otherwise the file may have changed on the server since, and a resume joined two versions into a
    file that an unpinned download renamed into place. The cost: from a server sending neither ETag nor
    Last-Modified, an interrupted run's bytes are lost (the retries within one run still resume them)."""
    return sha256 is not None or _saved_validator(part) is not None


def _leftover(part: Path, sha256: str | None) -> str:
    """What a failed download leaves for the next run, as its error says it: `part`, where one can resume it."""
    have = _size(part)
    if not have:
        return "run again"
    if _resumable(part, sha256):
        return f"{have:,} bytes kept in {part}; run again to resume"
    _discard(part)  # the next run would not resume it: it would only fill the disk meanwhile
    return "the server sent no ETag or Last-Modified to resume by safely; run again to start over"


def _complete(dest: Path, size: int | None) -> bool:
    return dest.exists() and (size is None or dest.stat().st_size == size)


@contextlib.contextmanager
def _sole_downloader(dest: Path, part: Path) -> Iterator[None]:
    """Hold `part`'s lock: two processes writing one `.part` (one from the start, one appending)
    splice a file that an unpinned download verifies and renames into place. The second waits
    rather than fails: a download is long, and once the first is done it finds `dest` complete
    (or, if the first failed or was killed, resumes from its `.part`)."""
    path = part.with_name(part.name + ".lock")
    lock = exclusive_lock(path)
    if lock is None:
        log.info("%s: another process is downloading it; waiting for that to finish", dest)
        lock = exclusive_lock(path, wait=True)
    with lock:
        yield


def _fetch_verified(url: str, dest: Path, part: Path, size: int | None, sha256: str | None,
                    progress: Progress | None, retries: int) -> None:
    """Bring `part` up to the whole file, verify it, and rename it to `dest` (the caller holds its lock)."""
    try:
        _fetch_retrying(url, dest, part, size, sha256, progress, retries)
        digest = _verify(part, size, sha256)
        atomic_write_bytes(f"{dest}.sha256", f"{digest}  {dest.name}\n".encode())  # never a cut-short digest
        # On disk before it has the final name: after a power cut `dest` must never be empty or partial
        fsync_path(part)
        os.replace(part, dest)
    except OSError as err:
        # Local (network errors are _Incomplete), a full disk say: retrying would not help. A bare OSError
        # from the .sha256 sidecar was blamed on the store that the caller was building.
        raise DownloadError(f"{err} ({_leftover(part, sha256)})") from err
    # The rename made durable; some filesystems cannot fsync a directory, and the file itself is safe.
    with contextlib.suppress(OSError):
        fsync_dir(dest.parent)
    _validator_file(part).unlink(missing_ok=True)
    _refetch_file(part).unlink(missing_ok=True)  # a crash's leftover from a whole-file refetch


def _fetch_retrying(url: str, dest: Path, part: Path, size: int | None, sha256: str | None,
                    progress: Progress | None, retries: int) -> None:
    """Bring `part` up to the whole file, retrying what is worth it (_Incomplete), resuming each time."""
    if _size(part) and not _resumable(part, sha256):
        log.warning("%s: no ETag or Last-Modified saved to check the server's file is unchanged; starting over", part)
        _discard(part)
    for attempt in range(retries + 1):
        try:
            vouched = _fetch(url, part, size, progress)
            problem = cut_short(part, dest.name, vouched) if size is None and sha256 is None else None
            if problem:  # all were renamed into place as complete, and a source went missing from the store
                raise _Incomplete(problem)
            return
        except DownloadError as err:  # not worth retrying; what is left of `part` is said as after the retries
            raise DownloadError(f"{err} ({_leftover(part, sha256)})" if _size(part) else str(err)) from None
        except _Incomplete as err:
            if attempt == retries:
                raise DownloadError(f"{err} ({_leftover(part, sha256)})") from None
            log.warning("%s: %s; retrying", url, err)
            time.sleep(max(min(2**attempt, 30), getattr(err, "wait", 0.0)))
