"""What the worker does on the wire, below the app: uvicorn's HTTP/1.1 protocol (h11) answering
a request it cannot read with the status h11 names for it (431 for header fields too large) and
closing the connection cleanly, and an access log that leaves out query strings.

uvicorn answers every request h11 cannot parse with a 400, and then, when the client goes on
sending (as one sending a 1 MB header does), fails on the next bytes and drops the connection:
the client sees a reset rather than an answer. Here the answer is sent, the rest of the request
is read and thrown away for a few seconds (as nginx's lingering close does), and then the
connection closes.
"""

from __future__ import annotations

import logging
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import STATUS_PHRASES
from uvicorn.protocols.http.h11_impl import H11Protocol as UvicornH11Protocol

# The request line and header fields together, at most (h11's own default, stated here).
MAX_HEAD_BYTES = 16 * 1024
# How long the rest of a refused request is read, at most, before the connection closes.
LINGER_S = 5.0

_EXPLAINED = {
    # RFC 6585 §5: 431 Request Header Fields Too Large.
    431: f"the request line and header fields are larger than {MAX_HEAD_BYTES} bytes",
}


class _Connection(h11.Connection):
    """h11's connection, keeping the error that made a request unreadable: its status hint
    (431 for a head too large, 400 otherwise) is the answer's status."""

    error: h11.RemoteProtocolError | None = None

    def next_event(self) -> Any:
        try:
            return super().next_event()
        except h11.RemoteProtocolError as exc:
            self.error = exc
            raise


class H11Protocol(UvicornH11Protocol):
    """uvicorn's h11 protocol, answering an unreadable request with h11's status for it and
    closing the connection without a reset."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        size = self.config.h11_max_incomplete_event_size or MAX_HEAD_BYTES
        self.conn: _Connection = _Connection(h11.SERVER, max_incomplete_event_size=size)
        self._refused = False

    def send_400_response(self, msg: str) -> None:
        if self._refused:
            return
        self._refused = True
        error = self.conn.error
        status = error.error_status_hint if error is not None else 400
        text = _EXPLAINED.get(status, msg).encode()
        headers = [
            (b"content-type", b"text/plain; charset=utf-8"),
            (b"content-length", str(len(text)).encode()),
            (b"connection", b"close"),
        ]
        try:
            for event in (
                h11.Response(status_code=status, headers=headers, reason=STATUS_PHRASES[status]),
                h11.Data(data=text),
                h11.EndOfMessage(),
            ):
                self.transport.write(self.conn.send(event) or b"")
        except h11.LocalProtocolError:
            # A response had already begun (the error came in a later request's bytes):
            # nothing more can be said on this connection.
            self.transport.close()
            return
        # Closing now, with the rest of the request unread, makes the kernel reset the
        # connection, and the client may lose the answer with it: say that nothing more is
        # coming, read what the client still sends, and close when it is done or after a while.
        if self.transport.can_write_eof():
            self.transport.write_eof()
        self.loop.call_later(LINGER_S, self.transport.close)

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return  # the rest of a refused request
        super().data_received(data)

    def eof_received(self) -> None:
        # The client is done: asyncio closes the transport when this returns None.
        return None


class NoQueryString(logging.Filter):
    """uvicorn's access-log lines without the query string: a client may put a secret there
    (a token in `?token=`, refused with a 401 but written to the log all the same)."""

    def filter(self, record: logging.LogRecord) -> bool:
        # uvicorn logs '%s - "%s %s HTTP/%s" %d' with (client, method, path?query, version,
        # status); the path is percent-encoded, so its first "?" starts the query string.
        args = record.args
        if isinstance(args, tuple) and len(args) == 5 and isinstance(args[2], str):
            record.args = (args[0], args[1], args[2].split("?", 1)[0], *args[3:])
        return True


def log_config(base: dict[str, Any]) -> dict[str, Any]:
    """uvicorn's logging config (`base`: uvicorn.config.LOGGING_CONFIG) with NoQueryString on
    the access log."""
    config = {**base, "filters": {**base.get("filters", {}), "no_query": {"()": NoQueryString}}}
    loggers = {name: dict(logger) for name, logger in base["loggers"].items()}
    access = loggers.setdefault("uvicorn.access", {})
    access["filters"] = [*access.get("filters", []), "no_query"]
    config["loggers"] = loggers
    return config
