"""gunicorn responses whose status line and headers leave in the same write as the body.

gunicorn's ``Response.write`` sends the headers with one ``sendall`` and each body chunk with
another, so every answer costs two system calls and, behind nginx, two wake-ups of its event
loop (py-spy put 8% of a worker's wall time under load in those two writes). Here the
response's socket holds the headers back (``HeldHeaders``) and puts them in front of the first
body bytes; anything else that reaches the socket (``sendfile`` of a static file, a close with
no body, a chunk of a chunked body) sends what is held first, so the bytes on the wire and
their order are gunicorn's own. ``install`` swaps the class ``gunicorn.http.wsgi.create``
builds every HTTP/1 response from (its module's ``Response``, looked up at each call);
gunicorn.conf.py calls it in each worker.
"""

from __future__ import annotations

import socket
from typing import Any

from gunicorn.http import wsgi

#: Bodies up to this size are joined to the headers (one copy); larger ones are sent after them.
JOIN_LIMIT = 256 * 1024


class HeldHeaders:
    """A socket whose first ``sendall`` (the headers) waits for the next one or a flush."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._held: bytes | None = None
        self._first = True

    def sendall(self, data: bytes) -> None:
        """Hold the first write; send it joined to the second (or before it, when large)."""
        if self._first:
            self._first = False
            self._held = bytes(data)
            return
        held, self._held = self._held, None
        if held is None:
            self._sock.sendall(data)
        elif len(data) <= JOIN_LIMIT:
            self._sock.sendall(held + data)
        else:
            self._sock.sendall(held)
            self._sock.sendall(data)

    def flush(self) -> None:
        """Send what is held (the headers of a response with no body bytes written)."""
        self._first = False
        held, self._held = self._held, None
        if held:
            self._sock.sendall(held)

    def sendfile(self, file: Any, offset: int = 0, count: int | None = None) -> int:
        """The headers first, then the kernel copies the file."""
        self.flush()
        return self._sock.sendfile(file, offset=offset, count=count)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


class OneWriteResponse(wsgi.Response):
    """gunicorn's response on a ``HeldHeaders`` socket, flushed when the response closes."""

    def __init__(self, req: Any, sock: socket.socket, cfg: Any) -> None:
        super().__init__(req, HeldHeaders(sock), cfg)

    def close(self) -> None:
        """gunicorn's close (headers if none were sent, a chunked body's end), then the flush."""
        try:
            super().close()
        finally:
            self.sock.flush()


def install() -> None:
    """Make this process's gunicorn build ``OneWriteResponse``s (idempotent)."""
    wsgi.Response = OneWriteResponse  # type: ignore[misc]
