"""Selecting LoRA adapters per request, with a scripted backend: the served default, an empty
list, explicit scales, unknown names, and the listing. What an adapter does to the output is
checked against llama.cpp in tests/worker/backend/test_lora.py."""

from __future__ import annotations

import pytest
from fakes import FakeBackend
from fastapi.testclient import TestClient

EXECUTE = {"job_id": "l", "prompt": "Hi", "max_tokens": 2}


@pytest.fixture
def served(open_client) -> tuple[TestClient, FakeBackend]:
    backend = FakeBackend()
    adapters = ["tone=/adapters/tone.gguf:0.5", "code=/adapters/code.gguf"]
    return open_client(backend, lora=adapters), backend


def test_the_served_adapters_are_listed(served):
    client, _ = served
    assert client.get("/lora-adapters").json() == [
        {"name": "tone", "path": "/adapters/tone.gguf", "scale": 0.5},
        {"name": "code", "path": "/adapters/code.gguf", "scale": 1.0},
    ]


@pytest.mark.parametrize(
    ("lora", "key"),
    [
        (None, (("code", 1.0), ("tone", 0.5))),  # every served adapter at its served scale
        ([], ()),  # none
        ([{"name": "tone"}], (("tone", 0.5),)),
        ([{"name": "code", "scale": 0.25}], (("code", 0.25),)),
        ([{"name": "code", "scale": 0}], ()),
    ],
)
def test_a_request_picks_its_adapters(served, lora, key):
    client, backend = served
    body = EXECUTE if lora is None else EXECUTE | {"lora": lora}
    assert client.post("/execute", json=body).status_code == 200
    assert backend.requests[-1].lora == key
    chat = {"messages": [{"role": "user", "content": "x"}], "max_tokens": 2}
    if lora is not None:
        chat["lora"] = lora
    assert client.post("/v1/chat/completions", json=chat).status_code == 200
    assert backend.requests[-1].lora == key


def test_an_unknown_adapter_is_a_400_listing_the_served_ones(served):
    client, _ = served
    response = client.post("/execute", json=EXECUTE | {"lora": [{"name": "nope"}]})
    entry = response.json()["errors"][0]
    assert response.status_code == 400 and entry["field"] == "lora"
    assert "code, tone" in entry["message"]
    body = {"prompt": "Hi", "lora": [{"name": "x", "scale": 99}]}
    assert client.post("/v1/completions", json=body).json()["error"]["param"].startswith("lora")
