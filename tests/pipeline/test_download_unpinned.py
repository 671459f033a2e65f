"""Downloads with no size or digest pinned (the RedPajama table has none) from a server that may send
no Content-Length either: what the bytes themselves tell about a body cut short, and a stalling server."""

import gzip
import threading

import pytest
import zstandard
from download_helpers import PAYLOAD

from pipeline import download as dl
from pipeline.download import DownloadError, download

LINES = b"".join(b'{"text": "document %d"}\n' % i for i in range(20_000))  # ~500 KB of JSON lines


@pytest.fixture(autouse=True)
def no_backoff(monkeypatch):
    monkeypatch.setattr(dl.time, "sleep", lambda s: None)


def test_an_empty_body_is_not_a_download(server, tmp_path):
    """Content-Length: 0 for a data file: the file was renamed into place, and its source was missing
    from the store without a word."""
    server.files["c4_sample.jsonl"] = b""
    with pytest.raises(DownloadError, match=r"the server sent an empty file \(run again\)$"):
        download(server.url + "c4_sample.jsonl", tmp_path / "c4_sample.jsonl", retries=1)
    assert not (tmp_path / "c4_sample.jsonl").exists()


def test_json_lines_cut_short_without_a_length_are_resumed(server, tmp_path):
    """No Content-Length and the connection closed early: a cut-short file was taken as complete, half
    of it missing from the store behind one invalid_json record."""
    server.files["c4_sample.jsonl"] = LINES
    server.no_length, server.cut_after = True, 123_457  # inside a line
    dest = download(server.url + "c4_sample.jsonl", tmp_path / "c4_sample.jsonl", retries=1)
    assert dest.read_bytes() == LINES
    assert [r for _, r in server.requests] == [None, "bytes=123457-"]
    server.files["other.jsonl"] = b'{"text": "no newline at the end"}'  # one that never ends a line
    server.ignore_range = True  # so no answer ever states the size (a 416's Content-Range would)
    with pytest.raises(DownloadError, match="cut short: the file ends inside a line, at byte 33 .*run again"):
        download(server.url + "other.jsonl", tmp_path / "other.jsonl", retries=1)
    assert not (tmp_path / "other.jsonl").exists()
    server.no_length = server.ignore_range = False  # with its length given, the server vouches for the last line
    assert download(server.url + "other.jsonl", tmp_path / "other.jsonl").read_bytes() == server.files["other.jsonl"]


def test_a_stalled_read_keeps_what_had_arrived(server, tmp_path, monkeypatch):
    """read(1 MiB) waited for a whole block: a timeout inside it lost what it held, and every retry
    started from byte 0 again."""
    monkeypatch.setattr(dl, "TIMEOUT_S", 2)
    server.gate = threading.Event()  # the first response sends half, then stalls past the timeout
    try:
        dest = download(server.url + "f.bin", tmp_path / "f.bin", size=len(PAYLOAD), retries=1)
    finally:
        server.gate.set()
    assert dest.read_bytes() == PAYLOAD
    assert server.requests[1][1] == f"bytes={len(PAYLOAD) // 2}-"  # the half that had arrived was kept


@pytest.mark.parametrize("suffix", ["gz", "zst"])
def test_compressed_file_cut_short_without_a_length_is_resumed(server, tmp_path, suffix):
    """No Content-Length and the connection closed early: a cut-short .gz/.zst got its final name, and
    every later prepare stopped on it as a truncated file, since a rerun finds it there."""
    packed = gzip.compress(LINES) if suffix == "gz" else zstandard.ZstdCompressor().compress(LINES)
    name = f"c4_sample.jsonl.{suffix}"
    server.files[name] = packed
    server.no_length, server.cut_after = True, len(packed) // 2
    dest = download(server.url + name, tmp_path / name, retries=1)
    assert dest.read_bytes() == packed
    assert [r for _, r in server.requests] == [None, f"bytes={len(packed) // 2}-"]
