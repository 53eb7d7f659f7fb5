"""Property-based fuzzing of both surfaces from the published OpenAPI document (schemathesis),
against a worker on a real socket with a scripted backend: valid and invalid bodies for every
route. Checks: no 5xx, every status documented, bodies in the documented shape, invalid data
refused. Seeded and bounded (a few hundred cases), so every run is the same."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import httpx
import pytest
import schemathesis
import uvicorn
from fakes import FakeBackend
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis.checks import (
    content_type_conformance,
    negative_data_rejection,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)
from schemathesis.generation import GenerationMode

from llorch.worker.server import build_app
from llorch.worker.settings import WorkerSettings

CASES_PER_ROUTE = 25
CHECKS = (
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    negative_data_rejection,
)


@pytest.fixture(scope="module")
def worker_url() -> Iterator[str]:
    app = build_app(
        FakeBackend(n_ctx=512), WorkerSettings(max_queue=8), model_path=lambda: __file__
    )
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "the worker did not start"
        time.sleep(0.02)
    assert app.state.fleet.default.wait_loaded(10)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(10)


def _operations(worker_url: str) -> list:
    # /drain and /models/unload take the model out of service for every later case (and
    # /models/load goes with them); they have their own tests.
    schema = schemathesis.openapi.from_url(f"{worker_url}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    changing = {"/drain", "/models/load", "/models/unload"}
    return [op for op in operations if op.path not in changing]


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_no_request_breaks_the_worker(worker_url: str, mode: GenerationMode) -> None:
    operations = _operations(worker_url)
    assert {op.path for op in operations} >= {"/execute", "/v1/chat/completions"}
    counted = 0

    for operation in operations:
        raw = operation.definition.raw
        if mode is GenerationMode.NEGATIVE and not (
            raw.get("requestBody") or raw.get("parameters")
        ):
            continue  # nothing of the request can be made invalid

        @given(case=operation.as_strategy(generation_mode=mode))
        @settings(
            max_examples=CASES_PER_ROUTE,
            deadline=None,
            derandomize=True,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        def fuzz(case: schemathesis.Case) -> None:
            nonlocal counted
            counted += 1
            response = case.call(base_url=worker_url, timeout=30)
            # 413 refuses a body too large to read: a rejection schemathesis does not list.
            checks = CHECKS if response.status_code != 413 else CHECKS[:-1]
            case.validate_response(response, checks=checks)

        try:
            fuzz()
        except Unsatisfiable:
            # Negative data for a route whose only input is a free string (a job id).
            assert mode is GenerationMode.NEGATIVE and not raw.get("requestBody")
    print(f"fuzzed {counted} {mode.value} cases over {len(operations)} routes")
    assert counted >= len(operations)
    # The worker is still there, and nothing is left running or waiting.
    capacity = httpx.get(f"{worker_url}/capacity").json()
    assert capacity["slots"]["busy"] == 0 and capacity["queue"]["depth"] == 0
