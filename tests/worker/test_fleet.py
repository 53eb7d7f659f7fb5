"""Several models in one worker, with scripted backends: routing by name, on-demand loads,
explicit load and unload, least-recently-used eviction under --max-models, idle unloading,
and a load refused with its numbers before anything is unloaded."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from fakes import FakeBackend
from fastapi.testclient import TestClient

from llorch.worker.fleet import ModelEntry
from llorch.worker.server import build_app
from llorch.worker.settings import WorkerSettings

MODELS = ["alpha=/models/a.gguf", "beta=/models/b.gguf", "gamma=/models/g.gguf"]


def factory(scripts: dict[str, str]):
    """One FakeBackend per model; the script says which model answered."""
    made: list[FakeBackend] = []

    def make(entry: ModelEntry) -> FakeBackend:
        backend = FakeBackend(script=scripts[entry.name or ""])
        made.append(backend)
        return backend

    return make, made


@pytest.fixture
def open_app() -> Iterator:
    opened: list[TestClient] = []

    def make(settings: WorkerSettings, backend, **kwargs) -> TestClient:
        app = build_app(backend, settings, model_path=lambda: __file__, **kwargs)
        client = TestClient(app, base_url="http://127.0.0.1").__enter__()
        opened.append(client)
        for engine in app.state.fleet.loaded().values():
            assert engine.wait_loaded(5)
        return client

    yield make
    for client in opened:
        client.__exit__(None, None, None)


def complete(client: TestClient, model: str | None) -> dict:
    body = {"prompt": "Hi", "max_tokens": 1} | ({"model": model} if model else {})
    return client.post("/v1/completions", json=body).json()


def test_requests_go_to_the_model_they_name(open_app):
    make, _ = factory({"alpha": "A", "beta": "B"})
    client = open_app(WorkerSettings(model=MODELS[:2]), make)
    assert complete(client, "alpha")["choices"][0]["text"] == "A"
    assert complete(client, "beta")["choices"][0]["text"] == "B"
    assert complete(client, None)["choices"][0]["text"] == "A"  # the first is the default
    execute = client.post(
        "/execute", json={"job_id": "x", "model": "beta", "prompt": "p", "max_tokens": 1}
    )
    assert '"t":"B"' in execute.text
    listed = client.get("/v1/models").json()["data"]
    assert [(m["id"], m["state"]) for m in listed] == [("alpha", "ready"), ("beta", "ready")]


def test_an_unknown_model_is_a_404_listing_the_served_ones(open_app):
    make, _ = factory({"alpha": "A", "beta": "B"})
    client = open_app(WorkerSettings(model=MODELS[:2]), make)
    response = client.post("/v1/completions", json={"prompt": "Hi", "model": "/etc/passwd"})
    error = response.json()["error"]
    assert response.status_code == 404 and error["code"] == "model_not_found"
    assert "alpha, beta" in error["message"] and error["param"] == "model"
    execute = client.post(
        "/execute", json={"job_id": "u", "model": "nope", "prompt": "p", "max_tokens": 1}
    )
    assert execute.status_code == 404 and execute.json()["errors"][0]["code"] == "MODEL_NOT_FOUND"
    # Only registered names can be loaded: never a path from a request.
    assert client.post("/models/load", json={"model": "/models/a.gguf"}).status_code == 404


def test_max_models_unloads_the_least_recently_used(open_app):
    make, made = factory({"alpha": "A", "beta": "B", "gamma": "G"})
    client = open_app(WorkerSettings(model=MODELS, max_models=2), make)
    assert client.get("/ready").json()["models"] == {
        "alpha": "ready",
        "beta": "ready",
        "gamma": "unloaded",
    }
    complete(client, "alpha")  # beta is now the least recently used
    assert complete(client, "gamma")["choices"][0]["text"] == "G"  # loaded on demand
    states = client.get("/capacity").json()["models"]
    assert states["beta"] == {"state": "unloaded"} and states["alpha"]["state"] == "ready"
    assert made[1].closed  # beta's model was freed
    metrics = client.get("/metrics").text
    assert 'llorch_model_loaded{model="beta"} 0.0' in metrics


def test_explicit_load_and_unload(open_app):
    make, _ = factory({"alpha": "A", "beta": "B"})
    client = open_app(WorkerSettings(model=MODELS[:2]), make)
    assert client.post("/models/unload", json={"model": "beta"}).json() == {
        "model": "beta",
        "state": "unloaded",
        "was_loaded": True,
    }
    assert client.get("/v1/models/beta").json()["state"] == "unloaded"
    assert client.post("/models/load", json={"model": "beta"}).json()["state"] == "ready"
    assert complete(client, "beta")["choices"][0]["text"] == "B"
    assert client.post("/models/unload", json={"model": "x" * 300}).status_code == 400


def test_idle_models_are_unloaded_after_keep_alive(open_app):
    make, _ = factory({"alpha": "A", "beta": "B"})
    client = open_app(WorkerSettings(model=MODELS[:2], keep_alive=0.2), make)
    deadline = time.monotonic() + 20
    while client.get("/ready").json()["models"] != {"alpha": "unloaded", "beta": "unloaded"}:
        assert time.monotonic() < deadline, "idle models were not unloaded"
        time.sleep(0.1)
    assert complete(client, "beta")["choices"][0]["text"] == "B"  # and come back on demand


def test_a_load_that_cannot_fit_is_refused_before_anything_is_unloaded(open_app):
    make, made = factory({"alpha": "A", "beta": "B", "gamma": "G"})
    settings = WorkerSettings(model=MODELS, max_models=2)
    app_client = open_app(settings, make)
    fleet = app_client.app.state.fleet
    # 8 GiB per model, 1 GiB free: unloading one model (8) is not enough for gamma (8 + 1 < 16).
    sizes = {"alpha": 8 << 30, "beta": 8 << 30, "gamma": 16 << 30}
    fleet._footprint = lambda entry: sizes[entry.name]
    fleet._free_memory = lambda: 1 << 30
    response = app_client.post("/models/load", json={"model": "gamma"})
    entry = response.json()["errors"][0]
    assert response.status_code == 503 and entry["code"] == "VRAM_OOM"
    assert "16.00 GiB" in entry["message"] and "gamma" in entry["message"]
    assert not any(b.closed for b in made)  # nothing was unloaded for it
    assert set(fleet.states().values()) == {"ready", "unloaded"}


def test_model_names_from_settings():
    settings = WorkerSettings(model=["chat=/m/a.gguf", "/m/embed.gguf"])
    assert settings.model_entries == [
        ModelEntry("chat", "/m/a.gguf"),
        ModelEntry("embed", "/m/embed.gguf"),
    ]
    assert WorkerSettings(model=["/m/one.gguf"]).model_entries == [ModelEntry(None, "/m/one.gguf")]
    with pytest.raises(ValueError, match="unique"):
        WorkerSettings(model=["a=/x.gguf", "a=/y.gguf"])
