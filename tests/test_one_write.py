"""deploy/one_write.py: the same bytes on the wire as gunicorn's own response, in fewer writes.

Each case parses a real request with gunicorn's parser from one end of a socket pair, answers
it with a small WSGI app through ``gunicorn.http.wsgi.create`` (as the sync worker does), once
with gunicorn's ``Response`` and once with ``OneWriteResponse``, and compares what the client
end received and how many writes reached the socket.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import pytest
from gunicorn.config import Config
from gunicorn.http import get_parser, wsgi

from deploy import one_write

App = Callable[[dict, Callable], Iterable[bytes]]


class CountingSocket:
    """A real socket that counts the writes made to it (sendall and sendfile calls)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.writes: list[str] = []

    def sendall(self, data: bytes) -> None:
        self.writes.append("sendall")
        self.sock.sendall(data)

    def sendfile(self, file: Any, offset: int = 0, count: int | None = None) -> int:
        self.writes.append("sendfile")
        return self.sock.sendfile(file, offset=offset, count=count)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.sock, name)


def _serve(app: App, request: bytes, response_class: type) -> tuple[bytes, list[str]]:
    """One request through gunicorn's parser and ``wsgi.create``; (wire bytes, the writes)."""
    cfg = Config()
    server, client = socket.socketpair()
    received = bytearray()

    def drain() -> None:  # the client end reads as the server writes (a large body blocks)
        while chunk := client.recv(1 << 20):
            received.extend(chunk)

    with server, client:
        client.sendall(request)
        reader = threading.Thread(target=drain)
        reader.start()
        counting = CountingSocket(server)
        req = next(iter(get_parser(cfg, counting, ("127.0.0.1", 5000))))
        resp, environ = wsgi.create(
            req, counting, ("127.0.0.1", 5000), ("127.0.0.1", 8000), cfg, response_class
        )
        body = app(environ, resp.start_response)
        if isinstance(body, environ["wsgi.file_wrapper"]):
            resp.write_file(body)
        else:
            for chunk in body:
                resp.write(chunk)
        resp.close()
        if hasattr(body, "close"):
            body.close()
        server.shutdown(socket.SHUT_WR)
        reader.join(timeout=10)
    return bytes(received), counting.writes


def _both(app: App, request: bytes) -> tuple[bytes, list[str], list[str]]:
    """Wire bytes (asserted equal) and the writes: gunicorn's response's, then the one-write's."""
    stock, stock_writes = _serve(app, request, wsgi.Response)
    ours, our_writes = _serve(app, request, one_write.OneWriteResponse)
    assert ours == stock
    return ours, stock_writes, our_writes


def _app(status: str, headers: list[tuple[str, str]], chunks: list[bytes]) -> App:
    def app(environ: dict, start_response: Callable) -> Iterable[bytes]:
        start_response(status, headers)
        return chunks

    return app


GET = b"GET /x HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"


def test_a_json_answer_goes_out_in_one_write() -> None:
    body = b'{"label": "Trouser"}'
    app = _app("200 OK", [("Content-Type", "application/json"), ("Content-Length", "20")], [body])
    wire, stock, ours = _both(app, GET)
    assert wire.startswith(b"HTTP/1.1 200 OK\r\n") and wire.endswith(b"\r\n\r\n" + body)
    assert (len(stock), len(ours)) == (2, 1)


def test_a_head_request_sends_the_headers_alone_at_close() -> None:
    app = _app("200 OK", [("Content-Length", "5")], [b"hello"])
    wire, stock, ours = _both(app, b"HEAD /x HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
    assert wire.endswith(b"\r\n\r\n") and b"hello" not in wire
    assert ours == ["sendall"]


def test_an_empty_body_still_gets_its_headers() -> None:
    wire, _, ours = _both(_app("204 No Content", [], []), GET)
    assert wire.startswith(b"HTTP/1.1 204 No Content\r\n") and wire.endswith(b"\r\n\r\n")
    assert ours == ["sendall"]


def test_a_streamed_body_keeps_its_chunks_in_order() -> None:
    chunks = [b"first,", b"", b"second,", b"third"]
    wire, stock, ours = _both(_app("200 OK", [("Content-Type", "text/csv")], chunks), GET)
    assert b"Transfer-Encoding: chunked" in wire
    assert wire.endswith(b"6\r\nfirst,\r\n7\r\nsecond,\r\n5\r\nthird\r\n0\r\n\r\n")
    assert len(ours) == len(stock) - 1


def test_a_large_body_is_not_copied_onto_the_headers() -> None:
    body = b"x" * (one_write.JOIN_LIMIT + 1)
    headers = [("Content-Length", str(len(body)))]
    wire, stock, ours = _both(_app("200 OK", headers, [body]), GET)
    assert wire.endswith(b"\r\n\r\n" + body)
    assert ours == stock == ["sendall", "sendall"]


def test_a_file_is_sent_after_its_headers(tmp_path: Path) -> None:
    path = tmp_path / "static.css"
    path.write_bytes(b"body { color: #123; }\n" * 100)

    def app(environ: dict, start_response: Callable) -> Iterable[bytes]:
        start_response("200 OK", [("Content-Length", str(path.stat().st_size))])
        return environ["wsgi.file_wrapper"](path.open("rb"))

    wire, stock, ours = _both(app, GET)
    assert wire.endswith(b"\r\n\r\n" + path.read_bytes())
    assert ours == stock == ["sendall", "sendfile"]


def test_an_app_failing_before_its_body_sends_nothing_half_made() -> None:
    """gunicorn closes the connection when an app raises after start_response; the held
    headers of such an answer never reach the client (nginx then answers 502), where gunicorn's
    own response would have sent a 200's headers with no body after them."""

    def app(environ: dict, start_response: Callable) -> Iterable[bytes]:
        start_response("200 OK", [("Content-Length", "5")])
        raise RuntimeError("the body could not be made")

    cfg = Config()
    server, client = socket.socketpair()
    with server, client:
        client.sendall(GET)
        req = next(iter(get_parser(cfg, server, ("127.0.0.1", 5000))))
        resp, environ = wsgi.create(
            req, server, ("127.0.0.1", 5000), ("127.0.0.1", 8000), cfg, one_write.OneWriteResponse
        )
        with pytest.raises(RuntimeError):
            app(environ, resp.start_response)
        resp.send_headers()  # gunicorn's worker may have sent them; here they are only held
        server.shutdown(socket.SHUT_WR)
        assert client.recv(1024) == b""


def test_install_swaps_the_class_gunicorn_builds(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(wsgi, "Response", wsgi.Response)
    one_write.install()
    one_write.install()
    assert wsgi.Response is one_write.OneWriteResponse
