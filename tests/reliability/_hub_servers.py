"""Loopback stand-ins for a Hub that misbehaves, and a recorder of huggingface_hub's retry back-off.

:class:`TruncatingProxy` cuts a transfer halfway; the closed port, the stalling server and the one-status server
live in :mod:`bench.olah_server` (the fault benchmark uses them too). Each is a real socket on 127.0.0.1 that
huggingface_hub talks to over HTTP; nothing inside the client is replaced except ``time.sleep`` in its retry loop
(:class:`BackoffRecorder`), so a test sees every retry without waiting for it.
"""

from __future__ import annotations

import http.client
import time
import types
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler
from urllib.parse import urlsplit

import pytest

from bench.olah_server import LoopbackHTTPServer, StallServer, StatusServer, closed_port_url

__all__ = [
    "BackoffRecorder",
    "StallServer",
    "StatusServer",
    "TruncatingProxy",
    "closed_port_url",
    "record_backoff",
]

HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "content-encoding"}


class TruncatingProxy(LoopbackHTTPServer):
    """Forward to ``upstream``; break GETs of paths ending with ``victim`` halfway, then answer 500 to retries.

    The weights are sent with their real headers (full Content-Length) but only half of the body before the
    connection closes; huggingface_hub retries the transfer, which the proxy answers with HTTP 500 (not retried
    for a GET), so the download fails for good.
    """

    def __init__(self, upstream: str, victim: str) -> None:
        parts = urlsplit(upstream)
        host, port = parts.hostname or "127.0.0.1", parts.port or 80
        self.broken: list[str] = []
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: object) -> None:
                pass

            def _forward(self, method: str) -> tuple[int, list[tuple[str, str]], bytes]:
                conn = http.client.HTTPConnection(host, port, timeout=30)
                headers = {
                    k: v for k, v in self.headers.items() if k.lower() not in ("host", "accept-encoding")
                }
                conn.request(method, self.path, headers=headers)
                response = conn.getresponse()
                body = response.read()
                conn.close()
                kept = [(k, v) for k, v in response.getheaders() if k.lower() not in HOP_BY_HOP]
                return response.status, kept, body

            def do_HEAD(self) -> None:
                status, headers, _ = self._forward("HEAD")
                self.send_response(status)
                for key, value in headers:
                    self.send_header(key, value)
                self.end_headers()

            def do_GET(self) -> None:
                if self.path.endswith(victim) and proxy.broken:
                    self.send_error(500, "retry refused by the test proxy")
                    return
                status, headers, body = self._forward("GET")
                self.send_response(status)
                for key, value in headers:
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.path.endswith(victim) and status == 200:
                    proxy.broken.append(self.path)
                    self.wfile.write(body[: len(body) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(body)

        super().__init__(Handler)


class BackoffRecorder:
    """Records the waits of huggingface_hub's retry loop instead of sleeping them.

    ``waits`` lists each back-off in seconds; ``sum(waits)`` is what a user would have waited on top of the
    requests themselves (huggingface_hub 2.x: 1 + 2 + 4 + 8 + 8 = 23 s for one retried request).
    """

    def __init__(self) -> None:
        self.waits: list[float] = []

    @property
    def total(self) -> float:
        """The summed back-off in seconds."""
        return float(sum(self.waits))


@contextmanager
def record_backoff() -> Iterator[BackoffRecorder]:
    """Patch the ``time`` module seen by huggingface_hub's HTTP helpers so its retry sleeps are recorded, not slept."""
    from huggingface_hub.utils import _http

    recorder = BackoffRecorder()
    fake = types.SimpleNamespace(**{k: getattr(time, k) for k in dir(time) if not k.startswith("__")})
    fake.sleep = recorder.waits.append
    patch = pytest.MonkeyPatch()
    patch.setattr(_http, "time", fake)
    try:
        yield recorder
    finally:
        patch.undo()
