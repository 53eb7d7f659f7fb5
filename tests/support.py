"""Helpers of the worker tests: a real worker process on a free port, and strict SSE parsing."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx

FRANCE = "Question: What is the capital of France?\nAnswer:"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class WorkerProcess:
    process: subprocess.Popen[bytes]
    url: str
    log: Path

    def stop(self, timeout: float = 30.0) -> int:
        if self.process.poll() is None:
            self.process.terminate()
        return self.process.wait(timeout)

    def output(self) -> str:
        return self.log.read_text(errors="replace")


def start_worker(tmp: Path, *args: str, ready_timeout: float = 120.0) -> WorkerProcess:
    """`llorch serve` in its own process on a free port, waited for until /ready says ready."""
    port = free_port()
    log = tmp / f"worker-{port}.log"
    cmd = [sys.executable, "-m", "llorch.cli", "serve", "--port", str(port), *args]
    with log.open("wb") as sink:
        process = subprocess.Popen(cmd, stdout=sink, stderr=subprocess.STDOUT)
    worker = WorkerProcess(process, f"http://127.0.0.1:{port}", log)
    deadline = time.monotonic() + ready_timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"worker exited with {process.returncode}:\n{worker.output()}")
        try:
            if httpx.get(f"{worker.url}/ready", timeout=1.0).status_code == 200:
                return worker
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    worker.stop()
    raise AssertionError(f"worker not ready after {ready_timeout}s:\n{worker.output()}")


def sse_events(response: httpx.Response) -> Iterator[dict]:
    """Parse a text/event-stream body into its JSON events, strictly: every event is exactly
    one `data:` line followed by a blank line."""
    pending: list[str] = []
    for line in response.iter_lines():
        if line == "":
            assert len(pending) == 1, f"an event must be one data line, got {pending}"
            yield json.loads(pending[0].removeprefix("data: "))
            pending = []
        else:
            assert line.startswith("data: "), f"unexpected SSE line {line!r}"
            pending.append(line)
    assert not pending, f"stream ended inside an event: {pending}"
