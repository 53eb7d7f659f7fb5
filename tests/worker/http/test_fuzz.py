"""Every route against the published OpenAPI document, by schemathesis' own checks, all of them
(no 5xx; statuses, content types, headers and bodies as documented; invalid data refused and
valid data accepted; a 405 with Allow for a method a path does not take; ...), over the cases of
its coverage phase (each keyword's boundaries and violations), its fuzzing phase and its
stateful phase, run by its command line against a worker on a real socket with a scripted
backend. Seeded and bounded (schemathesis.toml here), so every run makes the same cases."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import httpx
import uvicorn
from fakes import N_VOCAB, FakeBackend

from llorch.worker.backend.protocol import FimTokens, ModelInfo
from llorch.worker.server import build_app, uvicorn_config
from llorch.worker.settings import WorkerSettings

CONFIG = Path(__file__).with_name("schemathesis.toml")
ROOT = Path(__file__).parents[3]  # the config names its hooks from here
# The routes that take the model out of service (or bring it back): every later case would
# meet a drained or unloaded worker, so they are run on a worker of their own, after the rest.
CONTROLS = "^/(drain|models/load|models/unload)$"
CONTROL = ["<PRE>", "<SUF>", "<MID>"]


class CoderBackend(FakeBackend):
    """The fake with a coder's FIM tokens, so that /infill answers rather than refuses."""

    def __init__(self) -> None:
        super().__init__(control_tokens=CONTROL, n_ctx=512)

    def info(self) -> ModelInfo:
        pre, suf, mid = (N_VOCAB + i for i in range(len(CONTROL)))
        return replace(super().info(), fim=FimTokens(pre=pre, suf=suf, mid=mid))


@contextmanager
def worker() -> Iterator[str]:
    # A model named by a file that is not there: loading it again (/models/load) does not read
    # the default model's GGUF for its size first.
    settings = WorkerSettings(max_queue=8, model=["fake.gguf"])
    app = build_app(CoderBackend(), settings, model_path=lambda: __file__)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = uvicorn.Server(uvicorn_config(app, settings, port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "the worker did not start"
        time.sleep(0.02)
    assert app.state.fleet.default.wait_loaded(10)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


def schemathesis_run(url: str, junit: Path, *selection: str) -> set[str]:
    """schemathesis' command line over the operations `selection` picks; the operations it
    tested. A failure fails the test with schemathesis' report of it."""
    command = [
        *(sys.executable, "-m", "schemathesis.cli", "--config-file", str(CONFIG), "--no-color"),
        *("run", f"{url}/openapi.json", "--request-timeout", "30", *selection),
        *("--report", "junit", "--report-junit-path", str(junit)),
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=900, cwd=ROOT)
    start = max(result.stdout.find("FAILURES"), result.stdout.find("ERRORS"), 0)
    report = result.stdout[start:]
    assert result.returncode == 0, report[:60000] + result.stderr[-4000:]
    return {case.get("name", "") for case in ET.parse(junit).iter("testcase")}


def operations(url: str) -> set[str]:
    paths = httpx.get(f"{url}/openapi.json").json()["paths"]
    return {f"{method.upper()} {path}" for path, ops in paths.items() for method in ops}


def test_every_route_conforms_to_the_published_document(tmp_path: Path) -> None:
    with worker() as url:
        tested = schemathesis_run(url, tmp_path / "serving.xml", "--exclude-path-regex", CONTROLS)
        published = operations(url)
        # Nothing is left running or waiting.
        capacity = httpx.get(f"{url}/capacity").json()
        assert capacity["slots"]["busy"] == 0 and capacity["queue"]["depth"] == 0
    with worker() as url:
        tested |= schemathesis_run(url, tmp_path / "controls.xml", "--include-path-regex", CONTROLS)
    assert published <= tested, sorted(published - tested)  # (and the stateful tests)
