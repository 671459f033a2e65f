import errno
import os
import re
import subprocess
import sys
import threading
import time

import pytest
from download_helpers import PAYLOAD, earlier_part, left, sha
from prepare_helpers import ROOT

from pipeline import download as dl
from pipeline.download import DownloadError, download
from pipeline.redpajama import REDPAJAMA, fetch_redpajama
from pipeline.sources import resolve_source


def test_full_download_verifies_and_records_sha(server, tmp_path):
    seen = []
    dest = download(server.url + "f.bin", tmp_path / "sub" / "f.bin", size=len(PAYLOAD), sha256=sha(PAYLOAD),
                    progress=lambda done, total: seen.append((done, total)))
    assert dest.read_bytes() == PAYLOAD and not (tmp_path / "sub" / "f.bin.part").exists()
    assert (tmp_path / "sub" / "f.bin.sha256").read_text() == f"{sha(PAYLOAD)}  f.bin\n"
    assert seen[-1] == (len(PAYLOAD), len(PAYLOAD))
    assert download(server.url + "f.bin", dest) == dest and len(server.requests) == 1  # present: no request


def test_resume_from_a_partial_file(server, tmp_path):
    """No validator saved with it, but the pinned sha256 would catch a splice: resumed."""
    dest = tmp_path / "f.bin"
    (tmp_path / "f.bin.part").write_bytes(PAYLOAD[:300_001])
    download(server.url + "f.bin", dest, sha256=sha(PAYLOAD))
    assert dest.read_bytes() == PAYLOAD
    assert server.requests == [("/f.bin", "bytes=300001-")]


def test_a_resume_at_another_offset_than_asked_is_discarded_not_spliced(server, tmp_path):
    """A 206 whose Content-Range starts elsewhere would splice bytes at the wrong place; the partial
    download is dropped and the file fetched whole."""
    dest = tmp_path / "f.bin"
    (tmp_path / "f.bin.part").write_bytes(PAYLOAD[:300_001])
    server.range_shift = 1000
    download(server.url + "f.bin", dest, sha256=sha(PAYLOAD))
    assert dest.read_bytes() == PAYLOAD
    assert server.requests == [("/f.bin", "bytes=300001-"), ("/f.bin", None)]


def test_complete_partial_file_is_only_verified(server, tmp_path):
    earlier_part(server, tmp_path / "f.bin.part", PAYLOAD)
    download(server.url + "f.bin", tmp_path / "f.bin", size=len(PAYLOAD))
    assert server.requests == []  # the size says it is all there
    earlier_part(server, tmp_path / "g.bin.part", PAYLOAD)
    server.files["g.bin"] = PAYLOAD
    download(server.url + "g.bin", tmp_path / "g.bin")  # size unknown: the server answers 416
    assert (tmp_path / "g.bin").read_bytes() == PAYLOAD


def test_server_ignoring_range_restarts_cleanly(server, tmp_path):
    server.ignore_range = True
    (tmp_path / "f.bin.part").write_bytes(b"stale bytes that must not survive")
    download(server.url + "f.bin", tmp_path / "f.bin", size=len(PAYLOAD), sha256=sha(PAYLOAD))
    assert (tmp_path / "f.bin").read_bytes() == PAYLOAD
    assert server.requests == [("/f.bin", "bytes=33-")]


def test_dropped_connection_resumes_on_retry(server, tmp_path, monkeypatch):
    monkeypatch.setattr(dl.time, "sleep", lambda s: None)
    server.cut_after = 200_000
    download(server.url + "f.bin", tmp_path / "f.bin", sha256=sha(PAYLOAD), retries=1)
    assert (tmp_path / "f.bin").read_bytes() == PAYLOAD
    assert server.requests[0] == ("/f.bin", None)
    assert server.requests[1][1].startswith("bytes=") and len(server.requests) == 2


def test_dropped_connection_without_retries_keeps_the_part(server, tmp_path):
    server.etag, server.cut_after = '"v1"', 200_000
    with pytest.raises(DownloadError, match=r"\(200,000 bytes kept in .*f.bin.part; run again to resume\)"):
        download(server.url + "f.bin", tmp_path / "f.bin", retries=0)
    assert (tmp_path / "f.bin.part").exists() and not (tmp_path / "f.bin").exists()


@pytest.mark.parametrize("kw, match", [({"sha256": "0" * 64}, "sha256 "), ({"size": 5}, "size ")])
def test_mismatch_deletes_the_part_and_says_so(server, tmp_path, kw, match):
    with pytest.raises(DownloadError, match=f"does not verify \\({match}.*deleted it"):
        download(server.url + "f.bin", tmp_path / "f.bin", **kw)
    assert left(tmp_path) == []


def test_http_error_is_not_retried(server, tmp_path):
    with pytest.raises(DownloadError, match="HTTP 404"):
        download(server.url + "missing.bin", tmp_path / "m.bin")
    assert len(server.requests) == 1


@pytest.mark.parametrize("name, fail, said", [("missing.bin", [], "HTTP 404 Not Found"),
                                               ("f.bin", [(500,)], "HTTP 500 Internal Server Error")])
def test_http_errors_name_the_url_and_the_local_file(server, tmp_path, name, fail, said):
    """A 404 said only `<url>: HTTP 404`, and a 500 after its retries the same: not which local file
    was being downloaded."""
    server.fail_first = fail
    dest = tmp_path / "sub" / "g.bin"
    with pytest.raises(DownloadError) as err:
        download(server.url + name, dest, retries=0)
    assert str(err.value).startswith(f"downloading {server.url}{name} to {dest}: {said}")


def test_a_full_disk_names_the_download_and_keeps_the_part(server, tmp_path, monkeypatch, disk_fills_at):
    """A full disk while writing the body was retried as if the network had failed, and while writing
    the .sha256 sidecar it was a bare OSError, which `make prepare` blamed on the store it was building."""
    monkeypatch.setattr(dl.time, "sleep", lambda s: None)
    server.etag = '"v1"'
    dest, part = tmp_path / "f.bin", tmp_path / "f.bin.part"
    where = re.escape(f"downloading {server.url}f.bin to {dest}: ")
    with disk_fills_at(300_000), pytest.raises(DownloadError, match=where + r"\[Errno 27\] File too large") as err:
        download(server.url + "f.bin", dest)
    assert str(err.value).endswith(f"(300,000 bytes kept in {part}; run again to resume)")
    assert len(server.requests) == 1 and part.read_bytes() == PAYLOAD[:300_000]  # not retried: it would not help

    def full(path, data):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(dl, "atomic_write_bytes", full)
    with pytest.raises(DownloadError, match=where + r"\[Errno 28\] No space left on device \(1,024,000 bytes kept"):
        download(server.url + "f.bin", dest)
    assert part.read_bytes() == PAYLOAD and not dest.exists()  # verified, kept for the next run to finish
    monkeypatch.undo()
    assert download(server.url + "f.bin", dest).read_bytes() == PAYLOAD


def test_rate_limit_and_server_errors_are_retried_with_backoff(server, tmp_path, monkeypatch):
    """A 429 or a 503 (Hugging Face under load) failed the whole `make prepare` at once."""
    pauses = []
    monkeypatch.setattr(dl.time, "sleep", pauses.append)
    server.fail_first = [(429,), (503,)]
    download(server.url + "f.bin", tmp_path / "f.bin", sha256=sha(PAYLOAD))
    assert (tmp_path / "f.bin").read_bytes() == PAYLOAD and len(server.requests) == 3 and pauses == [1, 2]
    # A Retry-After in seconds is waited for (up to a cap) when longer than the backoff; a date is not read.
    server.fail_first = [(429, "7"), (503, "9999"), (429, "Wed, 21 Oct 2026 07:28:00 GMT"), (429, "²")]
    pauses[:] = []
    download(server.url + "f.bin", tmp_path / "h.bin", retries=4)
    assert pauses == [7, dl.MAX_RETRY_AFTER_S, 4, 8]
    server.fail_first = [(502,)] * 3
    with pytest.raises(DownloadError, match="HTTP 502") as err:
        download(server.url + "f.bin", tmp_path / "g.bin", retries=2)
    assert str(err.value).count(server.url) == 1 and "bytes kept" not in str(err.value)  # there are none


def test_fetch_redpajama_from_a_mirror(server, tmp_path, monkeypatch):
    for i, remote in enumerate(REDPAJAMA):
        server.files[remote.name] = b'{"text": "doc %d"}\n' % i
    monkeypatch.setenv("REDPAJAMA_BASE_URL", server.url.rstrip("/"))
    paths = resolve_source("redpajama", cache_dir=tmp_path)
    assert [p.name for p in paths] == ["c4_sample.jsonl", "cc_2023-06_sample.jsonl", "cc_2020-05_sample.jsonl"]
    assert all(p.parent == tmp_path / "downloads" / "redpajama" for p in paths)
    assert paths[1].read_bytes() == b'{"text": "doc 1"}\n'
    assert fetch_redpajama(paths[0].parent) == paths and len(server.requests) == 3  # cached: no requests


HTML = b"<!DOCTYPE html><html><body>Rate limited / login required</body></html>\n"


@pytest.mark.parametrize("partial", [True, False])
def test_html_page_is_refused_and_the_part_kept(server, tmp_path, partial):
    server.html = HTML
    part = tmp_path / "f.bin.part"
    if partial:
        earlier_part(server, part, PAYLOAD[:300_001])
    where = f"downloading {server.url}f.bin to {tmp_path / 'f.bin'}: "
    with pytest.raises(DownloadError, match=re.escape(where) + "HTTP 200 sent an HTML page"):
        download(server.url + "f.bin", tmp_path / "f.bin")
    assert len(server.requests) == 1  # an error page is not retried
    assert not (tmp_path / "f.bin").exists()
    assert part.read_bytes() == PAYLOAD[:300_001] if partial else not part.exists()


def test_an_html_page_on_a_resume_without_a_validator_says_the_next_run_starts_over(server, tmp_path, monkeypatch):
    """A .part begun in this run with no ETag or Last-Modified, then an HTML page in answer to its resume:
    the error said `f.bin.part kept, run again to resume`, and kept it, while the next run discards
    such a .part and starts over."""
    monkeypatch.setattr(dl.time, "sleep", lambda s: None)
    server.cut_after = 200_000

    def rate_limited_from_now(done, total):  # while the first response arrives: the retry gets the page
        server.html = HTML

    with pytest.raises(DownloadError, match=r"HTML page.*\(the server sent no ETag or Last-Modified to resume "
                                            r"by safely; run again to start over\)$"):
        download(server.url + "f.bin", tmp_path / "f.bin", retries=1, progress=rate_limited_from_now)
    assert server.requests == [("/f.bin", None), ("/f.bin", "bytes=200000-")]
    assert left(tmp_path) == []


def test_an_html_page_on_a_resume_says_what_is_kept(server, tmp_path):
    server.html = HTML
    earlier_part(server, tmp_path / "f.bin.part", PAYLOAD[:300_001])
    with pytest.raises(DownloadError, match=r"HTML page.*\(300,001 bytes kept in .*f.bin.part; run again to resume\)$"):
        download(server.url + "f.bin", tmp_path / "f.bin")


def test_fetch_redpajama_refuses_html_and_replaces_a_cached_html_page(server, tmp_path, monkeypatch):
    remote = REDPAJAMA[0]
    good = b'{"text": "good data"}\n' * 1000
    server.files[remote.name] = good
    monkeypatch.setenv("REDPAJAMA_BASE_URL", server.url)
    part = tmp_path / (remote.name + ".part")
    earlier_part(server, part, good[:5000])
    server.html = HTML
    with pytest.raises(DownloadError, match="HTML page"):
        fetch_redpajama(tmp_path, (remote,))
    assert part.read_bytes() == good[:5000] and not (tmp_path / remote.name).exists()
    server.html = None
    (tmp_path / remote.name).write_bytes(HTML)  # what an earlier version kept as the complete file
    assert fetch_redpajama(tmp_path, (remote,))[0].read_bytes() == good


def test_short_whole_body_does_not_replace_a_longer_part(server, tmp_path):
    server.ignore_range = True
    server.files["f.bin"] = b"Service unavailable\n"  # not HTML, but shorter than what we already hold
    part = tmp_path / "f.bin.part"
    earlier_part(server, part, PAYLOAD[:300_001])
    with pytest.raises(DownloadError, match="fewer than the 300001 already in"):
        download(server.url + "f.bin", tmp_path / "f.bin")
    assert part.read_bytes() == PAYLOAD[:300_001] and not (tmp_path / "f.bin").exists()
    assert left(tmp_path) == ["f.bin.part", "f.bin.part.validator"]


def test_cut_short_whole_body_keeps_the_part(server, tmp_path):
    server.ignore_range, server.cut_after = True, 200_000
    part = tmp_path / "f.bin.part"
    earlier_part(server, part, PAYLOAD[:300_001])
    with pytest.raises(DownloadError, match="run again to resume"):
        download(server.url + "f.bin", tmp_path / "f.bin", retries=0)
    assert part.read_bytes() == PAYLOAD[:300_001]
    assert left(tmp_path) == ["f.bin.part", "f.bin.part.validator"]


NEW_PAYLOAD = bytes(reversed(PAYLOAD))


@pytest.mark.parametrize("validator", ["etag", "last_modified"])
def test_resume_sends_if_range_and_a_changed_file_comes_back_whole(server, tmp_path, validator):
    value = '"v1"' if validator == "etag" else "Mon, 01 Jan 2024 00:00:00 GMT"
    setattr(server, validator, value)
    server.cut_after = 200_000
    with pytest.raises(DownloadError):
        download(server.url + "f.bin", tmp_path / "f.bin", retries=0)
    assert (tmp_path / "f.bin.part.validator").read_text() == value + "\n"
    # Resuming the same version: a plain 206 continuation
    download(server.url + "f.bin", tmp_path / "f.bin", sha256=sha(PAYLOAD))
    assert server.if_ranges == [None, value] and server.requests[1][1] == "bytes=200000-"
    assert not (tmp_path / "f.bin.part.validator").exists()

    # The file changes on the server while a partial download of the old one waits
    (tmp_path / "f.bin").unlink()
    server.cut_after = 200_000
    with pytest.raises(DownloadError):
        download(server.url + "f.bin", tmp_path / "g.bin", retries=0)
    server.files["f.bin"] = NEW_PAYLOAD
    setattr(server, validator, '"v2"' if validator == "etag" else "Tue, 02 Jan 2024 00:00:00 GMT")
    download(server.url + "f.bin", tmp_path / "g.bin")
    assert (tmp_path / "g.bin").read_bytes() == NEW_PAYLOAD  # not 200000 old bytes + the new file's tail
    assert server.if_ranges[-1] == value


def test_without_etag_or_last_modified_a_later_run_starts_over(server, tmp_path):
    """The server sends neither validator: the .part a failed run kept was resumed by the next run with a
    plain Range request after the file had changed on the server, and the splice (old head, new tail)
    was renamed into place, with nothing pinned to catch it."""
    server.cut_after = 200_000
    with pytest.raises(DownloadError, match=r"no ETag or Last-Modified to resume by safely; run again to start over"):
        download(server.url + "f.bin", tmp_path / "f.bin", retries=0)
    assert left(tmp_path) == []  # nothing a later run could use
    server.files["f.bin"] = NEW_PAYLOAD
    assert download(server.url + "f.bin", tmp_path / "f.bin").read_bytes() == NEW_PAYLOAD


@pytest.mark.parametrize("etag", [None, '"v2"'])
def test_a_part_with_no_validator_saved_starts_over(server, tmp_path, etag):
    """A .part with no validator beside it (left by a killed run, or an older version) was resumed onto
    whatever the server had now, another version of the file or not."""
    (tmp_path / "f.bin.part").write_bytes(PAYLOAD[:300_001])
    server.files["f.bin"], server.etag = NEW_PAYLOAD, etag
    assert download(server.url + "f.bin", tmp_path / "f.bin").read_bytes() == NEW_PAYLOAD
    assert server.requests == [("/f.bin", None)]  # from byte 0, no Range


def test_weak_etag_is_not_used_for_if_range(server, tmp_path):
    server.etag, server.cut_after = 'W/"weak"', 200_000
    with pytest.raises(DownloadError):
        download(server.url + "f.bin", tmp_path / "f.bin", retries=0)
    download(server.url + "f.bin", tmp_path / "f.bin", sha256=sha(PAYLOAD))
    assert server.if_ranges == [None, None]


def test_changed_file_is_caught_when_the_server_ignores_if_range(server, tmp_path):
    server.etag, server.cut_after = '"v1"', 200_000
    with pytest.raises(DownloadError):
        download(server.url + "f.bin", tmp_path / "f.bin", retries=0)
    server.files["f.bin"], server.etag, server.ignore_if_range = NEW_PAYLOAD, '"v2"', True
    download(server.url + "f.bin", tmp_path / "f.bin", retries=1)  # the 206 carries "v2": start over
    assert (tmp_path / "f.bin").read_bytes() == NEW_PAYLOAD
    assert server.requests[1:] == [("/f.bin", "bytes=200000-"), ("/f.bin", None)]


def test_changed_file_cut_short_keeps_the_new_version_as_the_part(server, tmp_path):
    server.etag, server.cut_after = '"v1"', 200_000
    with pytest.raises(DownloadError):
        download(server.url + "f.bin", tmp_path / "f.bin", retries=0)
    server.files["f.bin"], server.etag, server.cut_after = NEW_PAYLOAD, '"v2"', 100_000
    with pytest.raises(DownloadError):
        download(server.url + "f.bin", tmp_path / "f.bin", retries=0)
    assert (tmp_path / "f.bin.part").read_bytes() == NEW_PAYLOAD[:100_000]  # the old part was stale anyway
    assert (tmp_path / "f.bin.part.validator").read_text() == '"v2"\n'
    download(server.url + "f.bin", tmp_path / "f.bin")
    assert (tmp_path / "f.bin").read_bytes() == NEW_PAYLOAD and server.if_ranges[-1] == '"v2"'


def test_finished_file_is_fsynced_before_the_rename(server, tmp_path, monkeypatch):
    events = []
    real_fsync, real_replace = dl.os.fsync, dl.os.replace

    def fsync(fd):
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    def replace(src, dst):
        events.append(("replace", str(src), str(dst)))
        real_replace(src, dst)

    monkeypatch.setattr(dl.os, "fsync", fsync)
    monkeypatch.setattr(dl.os, "replace", replace)
    dest = tmp_path / "f.bin"
    download(server.url + "f.bin", dest)
    rename = events.index(("replace", str(tmp_path / "f.bin.part"), str(dest)))
    assert ("fsync", str(tmp_path / "f.bin.part")) in events[:rename]
    assert ("fsync", str(tmp_path)) in events[rename:]  # and the rename itself is made durable


def test_a_second_process_waits_for_the_first_download_instead_of_splicing_into_it(server, tmp_path):
    """Two `make prepare SOURCE=redpajama` at once download the same files: the second must not write
    the `.part` the first is writing (it appended to it, and the spliced file verified and was kept)."""
    server.gate = threading.Event()
    dest = tmp_path / "f.bin"
    code = ("import logging, sys; logging.basicConfig(level=logging.INFO); from pipeline.download import download; "
            "download(sys.argv[1], sys.argv[2])")
    logs = [tmp_path / "first.log", tmp_path / "second.log"]
    first = subprocess.Popen([sys.executable, "-c", code, server.url + "f.bin", str(dest)], cwd=ROOT,
                             stderr=logs[0].open("w"))
    deadline = time.monotonic() + 60
    while not server.requests:  # the first is halfway through its download
        assert first.poll() is None and time.monotonic() < deadline
        time.sleep(0.02)
    second = subprocess.Popen([sys.executable, "-c", code, server.url + "f.bin", str(dest)], cwd=ROOT,
                              stderr=logs[1].open("w"))
    # Until the second either waits for the first or sends a request of its own
    while "waiting" not in logs[1].read_text() and len(server.requests) < 2:
        assert second.poll() is None and time.monotonic() < deadline, logs[1].read_text()
        time.sleep(0.02)
    server.gate.set()
    assert [first.wait(60), second.wait(60)] == [0, 0], [log.read_text() for log in logs]
    assert len(server.requests) == 1  # the second found the file complete once the first let go
    assert dest.read_bytes() == PAYLOAD
    assert (tmp_path / "f.bin.sha256").read_text() == f"{sha(PAYLOAD)}  f.bin\n"


def test_backoff_is_capped_and_500_is_retried(server, tmp_path, monkeypatch):
    """The pause doubles up to 30 s (a longer Retry-After still wins), and a plain 500 is server trouble
    like any 5xx. Mutations without the cap, or retrying only codes above 500, passed every test."""
    pauses = []
    monkeypatch.setattr(dl.time, "sleep", pauses.append)
    server.fail_first = [(500,)] * 6 + [(503, "100")]
    download(server.url + "f.bin", tmp_path / "f.bin", sha256=sha(PAYLOAD), retries=7)
    assert pauses == [1, 2, 4, 8, 16, 30, 100] and (tmp_path / "f.bin").read_bytes() == PAYLOAD


def test_stale_partial_and_complete_files_are_judged_by_size_and_digest(server, tmp_path, monkeypatch):
    """A .part longer than the pinned size, or (size unknown) longer than the file the server has, is
    discarded and fetched again; a dest of the wrong pinned size is not taken as done; an upper-case
    sha256 pin matches; a refetch's leftover .part.new is cleaned up. Mutations of each passed every test."""
    monkeypatch.setattr(dl.time, "sleep", lambda s: None)
    (tmp_path / "a.bin.part").write_bytes(PAYLOAD + b"junk")
    download(server.url + "f.bin", tmp_path / "a.bin", size=len(PAYLOAD), sha256=sha(PAYLOAD).upper())
    (tmp_path / "b.bin.part").write_bytes(PAYLOAD + b"junk")  # the server answers 416 for bytes past its end
    (tmp_path / "b.bin.part.new").write_bytes(b"left by a crash")
    download(server.url + "f.bin", tmp_path / "b.bin", sha256=sha(PAYLOAD))
    (tmp_path / "c.bin").write_bytes(PAYLOAD[:1000])  # cut short by an older version, say
    download(server.url + "f.bin", tmp_path / "c.bin", size=len(PAYLOAD))
    for name in ("a.bin", "b.bin", "c.bin"):
        assert (tmp_path / name).read_bytes() == PAYLOAD, name
    assert left(tmp_path) == ["a.bin", "a.bin.sha256", "b.bin", "b.bin.sha256", "c.bin", "c.bin.sha256"]
