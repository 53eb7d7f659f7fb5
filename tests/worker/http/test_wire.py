"""The worker on a real socket, as serve() configures uvicorn (worker/server.py uvicorn_config):
a request whose header section is too large is answered 431 and the connection then closes
cleanly, and the access log leaves out query strings (where a client may have put a token)."""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Iterator

import httpx
import pytest
import uvicorn
from fakes import FakeBackend

from llorch.worker.http import wire
from llorch.worker.server import build_app, uvicorn_config
from llorch.worker.settings import WorkerSettings

TOKEN = "wire-token"
SECRET = "s3cret-in-the-query"


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


@pytest.fixture(scope="module")
def worker() -> Iterator[tuple[str, int, Records]]:
    settings = WorkerSettings(api_token=TOKEN)
    app = build_app(FakeBackend(), settings, model_path=lambda: __file__)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    # The access log is written at level info, as serve() runs it.
    server = uvicorn.Server(uvicorn_config(app, settings, port=port, log_level="info"))
    records = Records()  # after the config, whose logging setup replaces the log's handlers
    access = logging.getLogger("uvicorn.access")
    access.addHandler(records)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "the worker did not start"
        time.sleep(0.02)
    yield "127.0.0.1", port, records
    server.should_exit = True
    thread.join(10)
    access.removeHandler(records)


def read_all(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes; a reset fails the test."""
    sock.settimeout(30)
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


def test_a_header_section_too_large_is_a_431(worker):
    host, port, _ = worker
    big = b"x" * (1 << 20)  # 1 MB, far past wire.MAX_HEAD_BYTES
    request = b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: " + big + b"\r\n\r\n"
    with socket.create_connection((host, port)) as sock:
        sock.sendall(request)  # the server reads all of it, so this does not stall
        answer = read_all(sock)
    # RFC 6585 §5: 431 Request Header Fields Too Large, then the connection closes cleanly.
    assert answer.startswith(b"HTTP/1.1 431 Request Header Fields Too Large\r\n"), answer[:200]
    assert str(wire.MAX_HEAD_BYTES).encode() in answer.split(b"\r\n\r\n", 1)[1]
    # A client library sees the answer too, not a reset connection.
    response = httpx.get(f"http://{host}:{port}/health", headers={"X-Big": "x" * (1 << 20)})
    assert response.status_code == 431
    # The worker goes on serving.
    assert httpx.get(f"http://{host}:{port}/health").status_code == 200


def test_a_header_section_within_the_bound_is_read(worker):
    host, port, _ = worker
    response = httpx.get(f"http://{host}:{port}/health", headers={"X-Big": "x" * 8000})
    assert response.status_code == 200


def test_the_access_log_leaves_out_query_strings(worker):
    host, port, records = worker
    refused = httpx.get(f"http://{host}:{port}/capacity?token={SECRET}")
    assert refused.status_code == 401
    headers = {"Authorization": f"Bearer {TOKEN}"}
    assert httpx.get(f"http://{host}:{port}/capacity?x={SECRET}", headers=headers).is_success
    deadline = time.monotonic() + 10  # the log line is written once the answer has been sent
    while sum("/capacity" in line for line in records.lines) < 2:
        assert time.monotonic() < deadline, records.lines
        time.sleep(0.02)
    lines = [line for line in records.lines if "/capacity" in line]
    assert any('"GET /capacity HTTP/1.1" 401' in line for line in lines), lines
    assert any('"GET /capacity HTTP/1.1" 200' in line for line in lines), lines
    assert not any(SECRET in line or "?" in line for line in records.lines), records.lines
