"""A local HTTP server for the download tests: what it serves and how it misbehaves, set per test."""

from __future__ import annotations

import hashlib
import re
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

PAYLOAD = bytes(range(256)) * 4000  # ~1 MB, not a multiple of the client's read block


class _Handler(BaseHTTPRequestHandler):
    """Serves server.files with optional Range support, and can cut a response short.

    server.etag / server.last_modified are sent when set and honoured in If-Range unless
    server.ignore_if_range; server.html replaces every body with an HTML page (a rate-limit page);
    server.gate (an Event) holds the first response halfway until it is set; server.fail_first lists
    (error status, Retry-After value if any) to answer the first requests with; server.range_shift makes
    the next ranged response start that many bytes before the asked offset (its Content-Range says so);
    server.no_length sends no Content-Length: the body ends where the connection closes (HTTP/1.0).
    """

    def do_GET(self):
        srv = self.server
        srv.requests.append((self.path, self.headers.get("Range")))
        srv.if_ranges.append(self.headers.get("If-Range"))
        data = srv.files.get(self.path.lstrip("/"))
        if data is None:
            self.send_error(404)
            return
        if srv.fail_first:
            code, *retry_after = srv.fail_first.pop(0)
            self.send_response(code)
            for value in retry_after:
                self.send_header("Retry-After", value)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if srv.html is not None:
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(srv.html)))
            self.end_headers()
            self.wfile.write(srv.html)
            return
        start, status = 0, 200
        m = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range") or "")
        if_range = self.headers.get("If-Range")
        if if_range is not None and not srv.ignore_if_range and if_range not in (srv.etag, srv.last_modified):
            m = None  # the file changed since the client's copy: send it whole
        if m and not srv.ignore_range:
            start, status = max(int(m.group(1)) - srv.range_shift, 0), 206
            srv.range_shift = 0
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
        body = data[start:]
        self.send_response(status)
        if srv.etag:
            self.send_header("ETag", srv.etag)
        if srv.last_modified:
            self.send_header("Last-Modified", srv.last_modified)
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        if not srv.no_length:
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if srv.cut_after is not None:  # promise the whole body, send part of it, hang up
            body, srv.cut_after = body[: srv.cut_after], None
            self.close_connection = True
        if srv.gate is not None and len(srv.requests) == 1:  # the first response stalls halfway until opened
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            srv.gate.wait(60)
            body = body[len(body) // 2 :]
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def serving() -> Iterator[ThreadingHTTPServer]:
    """The server, running on 127.0.0.1 until the generator is closed (the `server` fixture)."""
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    srv.files, srv.requests, srv.ignore_range, srv.cut_after = {"f.bin": PAYLOAD}, [], False, None
    srv.if_ranges, srv.etag, srv.last_modified, srv.ignore_if_range, srv.html = [], None, None, False, None
    srv.gate, srv.fail_first, srv.range_shift, srv.no_length = None, [], 0, False
    srv.url = f"http://127.0.0.1:{srv.server_address[1]}/"
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


def sha(data):
    return hashlib.sha256(data).hexdigest()


def left(folder):
    """The files a download left, but its lock file (kept: deleting a lock file races with its waiters)."""
    return sorted(p.name for p in folder.iterdir() if not p.name.endswith(".part.lock"))


def earlier_part(server, part, data):
    """`part` as an earlier run leaves it: its bytes and the ETag they came with (server.etag, "v1" if
    unset), without which a later run starts over rather than resume (unless the sha256 is pinned)."""
    server.etag = server.etag or '"v1"'
    part.write_bytes(data)
    part.with_name(part.name + ".validator").write_text(server.etag + "\n")
