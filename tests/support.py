"""Helpers of the tests: a real worker process on a free port, strict SSE parsing, waiting for a
condition with a deadline."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from llorch.cpus import usable_cpus

FRANCE = "Question: What is the capital of France?\nAnswer:"


def _cpus_of_this_test_process() -> int:
    """How many llama.cpp threads a test asks for: every CPU this process may use.

    Under pytest-xdist (`-n N`), each worker first takes its own share of the CPUs, pinned
    (children inherit it: a started worker, llama-server): two workers' llama.cpp threads never
    share a core, where they would stall each other at llama.cpp's spinning barrier."""
    worker, workers = (
        os.environ.get("PYTEST_XDIST_WORKER"),
        os.environ.get("PYTEST_XDIST_WORKER_COUNT"),
    )
    if worker and workers and hasattr(os, "sched_setaffinity"):  # not on macOS
        cpus, index, count = sorted(os.sched_getaffinity(0)), int(worker[2:]), int(workers)
        if count <= len(cpus):  # worker "gw<index>" of count
            share = cpus[index * len(cpus) // count : (index + 1) * len(cpus) // count]
        else:
            share = [cpus[index % len(cpus)]]
        os.sched_setaffinity(0, share)
    return usable_cpus()


THREADS = _cpus_of_this_test_process()


def wait_for(
    predicate: Callable[[], object],
    timeout: float = 30.0,
    message: str = "condition not reached in time",
    interval: float = 0.005,
) -> None:
    """Poll `predicate` until it is true; fail with `message` once `timeout` seconds have passed.

    Every wait of a test on another thread or process goes through here, so a condition that is
    never reached fails the test instead of hanging the run. The timeout is a guard against a
    hang, not a claim about speed: keep it generous."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"{message} (waited {timeout}s)"
        time.sleep(interval)


def model_loaded(client: Any, timeout: float = 5.0) -> bool:
    """Waits up to `timeout` seconds until loading the default model of the app behind `client`
    (a TestClient) has ended, well or not; false when time ran out."""
    return bool(client.app.state.fleet.default.wait_loaded(timeout))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class LoggedProcess:
    """A `llorch` command in its own process, its output in a log file."""

    process: subprocess.Popen[bytes]
    address: str  # what clients dial: a URL or HOST:PORT
    log: Path

    def stop(self, timeout: float = 30.0) -> int:
        if self.process.poll() is None:
            self.process.terminate()
        return self.process.wait(timeout)

    def output(self) -> str:
        return self.log.read_text(errors="replace")


def launch(
    tmp: Path,
    command: str,
    args: tuple[str, ...],
    address: str,
    port: int,
    ready: Callable[[LoggedProcess], bool],
    ready_timeout: float,
) -> LoggedProcess:
    """`llorch COMMAND --port PORT ARGS...`, waited for until `ready` says so."""
    log = tmp / f"{command}-{port}.log"
    cmd = [sys.executable, "-m", "llorch.cli", command, "--port", str(port), *args]
    with log.open("wb") as sink:
        process = subprocess.Popen(cmd, stdout=sink, stderr=subprocess.STDOUT)
    launched = LoggedProcess(process, address, log)
    deadline = time.monotonic() + ready_timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(
                f"{command} exited with {process.returncode}:\n{launched.output()}"
            )
        if ready(launched):
            return launched
        time.sleep(0.1)
    launched.stop()
    raise AssertionError(f"{command} not ready after {ready_timeout}s:\n{launched.output()}")


class WorkerProcess(LoggedProcess):
    @property
    def url(self) -> str:
        return self.address


def _worker_ready(worker: LoggedProcess) -> bool:
    try:
        return httpx.get(f"{worker.address}/ready", timeout=1.0).status_code == 200
    except httpx.TransportError:
        return False


def start_worker(tmp: Path, *args: str, ready_timeout: float = 120.0) -> WorkerProcess:
    """`llorch serve` in its own process on a free port, waited for until /ready says ready."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    launched = launch(tmp, "serve", args, url, port, _worker_ready, ready_timeout)
    return WorkerProcess(launched.process, launched.address, launched.log)


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
