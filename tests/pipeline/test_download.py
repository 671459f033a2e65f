import hashlib
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from pipeline import download as dl
from pipeline.download import REDPAJAMA, DownloadError, download, fetch_redpajama
from pipeline.sources import resolve_source

PAYLOAD = bytes(range(256)) * 4000  # ~1 MB, not a multiple of the client's read block


class _Handler(BaseHTTPRequestHandler):
    """Serves server.files with optional Range support, and can cut a response short."""

    def do_GET(self):
        srv = self.server
        srv.requests.append((self.path, self.headers.get("Range")))
        data = srv.files.get(self.path.lstrip("/"))
        if data is None:
            self.send_error(404)
            return
        start, status = 0, 200
        m = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range") or "")
        if m and not srv.ignore_range:
            start, status = int(m.group(1)), 206
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
        body = data[start:]
        self.send_response(status)
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if srv.cut_after is not None:  # promise the whole body, send part of it, hang up
            body, srv.cut_after = body[: srv.cut_after], None
            self.close_connection = True
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    srv.files, srv.requests, srv.ignore_range, srv.cut_after = {"f.bin": PAYLOAD}, [], False, None
    srv.url = f"http://127.0.0.1:{srv.server_address[1]}/"
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


def sha(data):
    return hashlib.sha256(data).hexdigest()


def test_full_download_verifies_and_records_sha(server, tmp_path):
    seen = []
    dest = download(server.url + "f.bin", tmp_path / "sub" / "f.bin", size=len(PAYLOAD), sha256=sha(PAYLOAD),
                    progress=lambda done, total: seen.append((done, total)))
    assert dest.read_bytes() == PAYLOAD and not (tmp_path / "sub" / "f.bin.part").exists()
    assert (tmp_path / "sub" / "f.bin.sha256").read_text() == f"{sha(PAYLOAD)}  f.bin\n"
    assert seen[-1] == (len(PAYLOAD), len(PAYLOAD))
    assert download(server.url + "f.bin", dest) == dest and len(server.requests) == 1  # present: no request


def test_resume_from_a_partial_file(server, tmp_path):
    dest = tmp_path / "f.bin"
    (tmp_path / "f.bin.part").write_bytes(PAYLOAD[:300_001])
    download(server.url + "f.bin", dest, sha256=sha(PAYLOAD))
    assert dest.read_bytes() == PAYLOAD
    assert server.requests == [("/f.bin", "bytes=300001-")]


def test_complete_partial_file_is_only_verified(server, tmp_path):
    (tmp_path / "f.bin.part").write_bytes(PAYLOAD)
    download(server.url + "f.bin", tmp_path / "f.bin", size=len(PAYLOAD))
    assert server.requests == []  # the size says it is all there
    (tmp_path / "g.bin.part").write_bytes(PAYLOAD)
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
    server.cut_after = 200_000
    with pytest.raises(DownloadError, match="run again to resume"):
        download(server.url + "f.bin", tmp_path / "f.bin", retries=0)
    assert (tmp_path / "f.bin.part").exists() and not (tmp_path / "f.bin").exists()


@pytest.mark.parametrize("kw, match", [({"sha256": "0" * 64}, "sha256 "), ({"size": 5}, "size ")])
def test_mismatch_deletes_the_part_and_says_so(server, tmp_path, kw, match):
    with pytest.raises(DownloadError, match=f"does not verify \\({match}.*deleted it"):
        download(server.url + "f.bin", tmp_path / "f.bin", **kw)
    assert list(tmp_path.iterdir()) == []


def test_http_error_is_not_retried(server, tmp_path):
    with pytest.raises(DownloadError, match="HTTP 404"):
        download(server.url + "missing.bin", tmp_path / "m.bin")
    assert len(server.requests) == 1


def test_fetch_redpajama_from_a_mirror(server, tmp_path, monkeypatch):
    for i, remote in enumerate(REDPAJAMA):
        server.files[remote.name] = b'{"text": "doc %d"}\n' % i
    monkeypatch.setenv("REDPAJAMA_BASE_URL", server.url.rstrip("/"))
    paths = resolve_source("redpajama", cache_dir=tmp_path)
    assert [p.name for p in paths] == ["c4_sample.jsonl", "cc_2023-06_sample.jsonl", "cc_2020-05_sample.jsonl"]
    assert all(p.parent == tmp_path / "downloads" / "redpajama" for p in paths)
    assert paths[1].read_bytes() == b'{"text": "doc 1"}\n'
    assert fetch_redpajama(paths[0].parent) == paths and len(server.requests) == 3  # cached: no requests
