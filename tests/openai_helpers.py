"""Helpers of the OpenAI-surface tests: an app over a scripted backend, SSE chunks, errors."""

from __future__ import annotations

import json

from fakes import FakeBackend
from fastapi.testclient import TestClient

from llorch.worker.server import build_app
from llorch.worker.settings import WorkerSettings


def client_for(backend: FakeBackend) -> TestClient:
    app = build_app(backend, WorkerSettings(worker_id="w-test"), model_path=lambda: __file__)
    return TestClient(app, base_url="http://127.0.0.1")


def chunks_of(response) -> list[dict | str]:
    """The SSE data of a stream; the closing `[DONE]` stays a string."""
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/event-stream")
    frames = response.text.split("\n\n")
    assert frames[-1] == ""
    out: list[dict | str] = []
    for f in frames[:-1]:
        assert f.startswith("data: ") and "\n" not in f
        data = f.removeprefix("data: ")
        out.append(data if data == "[DONE]" else json.loads(data))
    return out


def assert_error(response, status: int, param: str | None = None) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["message"]
    if status == 400:
        assert error["type"] == "invalid_request_error"
    if param is not None:
        assert error["param"] == param
    return error
