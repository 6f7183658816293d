"""A loopback HTTP server in a thread, for the download tests (no proxy between the test and it)."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

PROXY_VARIABLES = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy")


@contextmanager
def serving(monkeypatch: pytest.MonkeyPatch, handler: type[http.server.BaseHTTPRequestHandler],
            path: str, **attributes) -> Iterator[http.server.ThreadingHTTPServer]:
    """`handler` on a free 127.0.0.1 port until the block ends; `attributes` are set on the server,
    `server.url` is `http://127.0.0.1:<port><path>` and `server.requests` starts empty."""
    for name in PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    httpd.daemon_threads = True
    httpd.requests = []
    for key, value in attributes.items():
        setattr(httpd, key, value)
    httpd.url = f"http://127.0.0.1:{httpd.server_address[1]}{path}"
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield httpd
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)
