"""Fixtures of the HTTP tests: an app over a fake backend behind a TestClient, its model loaded."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from fakes import FakeBackend
from fastapi.testclient import TestClient
from support import model_loaded

from llorch.worker.server import build_app
from llorch.worker.settings import WorkerSettings


@pytest.fixture
def open_client() -> Iterator[Callable[..., TestClient]]:
    """Opens TestClients, each on a fresh app over `backend` (a FakeBackend by default) with
    `WorkerSettings(worker_id="w-test", **settings)` and `build_app(..., **app)`, and waits
    until its model has loaded (`loaded=False`: a test of the loading state waits itself, with
    `support.model_loaded`). Every client is closed after the test."""
    opened: list[TestClient] = []

    def open_(
        backend: FakeBackend | None = None,
        *,
        loaded: bool = True,
        app: dict[str, Any] | None = None,
        **settings: Any,
    ) -> TestClient:
        built = build_app(
            backend or FakeBackend(),
            WorkerSettings(**{"worker_id": "w-test", **settings}),
            model_path=lambda: __file__,
            **(app or {}),
        )
        client = TestClient(built, base_url="http://127.0.0.1").__enter__()
        opened.append(client)
        if loaded:
            assert model_loaded(client)
        return client

    yield open_
    for client in reversed(opened):
        client.__exit__(None, None, None)
