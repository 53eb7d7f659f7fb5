"""Orchestrator controls with a scripted backend: auth, cancel by id, bounded admission,
deadlines, drain, capacity, metrics and out-of-memory errors."""

from __future__ import annotations

import hmac
import threading

from fakes import FakeBackend
from fastapi.testclient import TestClient
from support import wait_for

from llorch.worker.backend.errors import OutOfMemoryError
from llorch.worker.settings import WorkerSettings

VALID = {"job_id": "j1", "prompt": "Hi", "max_tokens": 5}
TOKEN = "s3cret-token"
LONG = "abcdefghij" * 5  # 50 tokens of the fake script


def events_of(response) -> list[dict]:
    import json

    frames = response.text.split("\n\n")[:-1]
    return [json.loads(f.removeprefix("data: ")) for f in frames]


def in_background(client: TestClient, body: dict, **kwargs) -> tuple[threading.Thread, list]:
    """POST /execute on a thread (the test client returns streams only once they end)."""
    out: list = []
    thread = threading.Thread(
        target=lambda: out.append(client.post("/execute", json=body, **kwargs)), daemon=True
    )
    thread.start()
    return thread, out


# -- authentication -----------------------------------------------------------------------


def test_routes_need_the_bearer_token(open_client):
    client = open_client(api_token=TOKEN)
    response = client.post("/execute", json=VALID)
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"
    [error] = response.json()["errors"]
    assert error["code"] == "UNAUTHORIZED" and error["message"] == "missing bearer token"
    for headers in ({"Authorization": "Bearer nope"}, {"Authorization": TOKEN}):
        response = client.post("/execute", json=VALID, headers=headers)
        assert response.status_code == 401
        assert TOKEN not in response.text
    good = {"Authorization": f"Bearer {TOKEN}"}
    assert client.post("/execute", json=VALID, headers=good).status_code == 200
    assert client.post("/execute", json=VALID, headers={"authorization": f"bearer {TOKEN}"})
    for path in ("/capacity", "/metrics", "/docs", "/openapi.json", "/nowhere"):
        assert client.get(path).status_code == 401, path
    assert client.get("/capacity", headers=good).status_code == 200


def test_health_and_ready_stay_open(open_client):
    client = open_client(api_token=TOKEN)
    assert client.get("/health").status_code == 200
    assert client.get("/ready").json() == {
        "ready": True,
        "state": "ready",
        "models": {"fake": "ready"},
    }


def test_routes_added_later_are_covered_too(open_client):
    client = open_client(api_token=TOKEN)

    @client.app.get("/v1/added-later")
    async def models() -> dict:
        return {"data": []}

    assert client.get("/v1/added-later").status_code == 401
    assert client.get("/v1/added-later", headers={"Authorization": f"Bearer {TOKEN}"}).json() == {
        "data": []
    }


def test_the_token_is_compared_in_constant_time(open_client, monkeypatch):
    calls: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def recording(a, b):
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", recording)
    client = open_client(api_token=TOKEN)
    assert client.get("/capacity", headers={"Authorization": "Bearer guess"}).status_code == 401
    assert calls == [(b"guess", TOKEN.encode())]


def test_no_token_configured_means_open(open_client):
    assert open_client().get("/capacity").status_code == 200


def test_the_token_is_not_in_the_settings_repr():
    settings = WorkerSettings(api_token=TOKEN)
    assert TOKEN not in repr(settings) and TOKEN not in str(settings.model_dump())


# -- cancel by id ---------------------------------------------------------------------------


def test_delete_job_cancels_it(open_client):
    client = open_client(FakeBackend(script=LONG, delay=0.02))
    thread, out = in_background(client, VALID | {"max_tokens": 50})
    wait_for(lambda: client.get("/capacity").json()["slots"]["busy"] == 1)
    response = client.delete("/jobs/j1")
    assert response.status_code == 202
    assert response.json() == {"job_id": "j1", "state": "cancelling"}
    thread.join(5)
    events = events_of(out[0])
    assert events[-1]["type"] == "end" and events[-1]["stop_reason"] == "CANCELLED"
    assert events[-1]["tokens_out"] < 50


def test_delete_a_queued_job(open_client):
    client = open_client(FakeBackend(script=LONG, delay=0.02))
    first, _ = in_background(client, VALID | {"max_tokens": 30})
    wait_for(lambda: client.get("/capacity").json()["slots"]["busy"] == 1)
    second, out = in_background(client, VALID | {"job_id": "j2"})
    wait_for(lambda: client.get("/capacity").json()["queue"]["depth"] == 1)
    assert client.delete("/jobs/j2").status_code == 202
    second.join(5)
    first.join(5)
    assert events_of(out[0])[-1]["stop_reason"] == "CANCELLED"


def test_a_job_id_in_flight_cannot_be_reused(open_client):
    client = open_client(FakeBackend(script=LONG, delay=0.02))
    thread, _ = in_background(client, VALID | {"max_tokens": 50})
    wait_for(lambda: client.get("/capacity").json()["slots"]["busy"] == 1)
    response = client.post("/execute", json=VALID)
    assert response.status_code == 409
    [error] = response.json()["errors"]
    assert error["code"] == "DUPLICATE_JOB" and "j1" in error["message"]
    client.delete("/jobs/j1")
    thread.join(5)


def test_delete_unknown_job_is_404(open_client):
    response = open_client().delete("/jobs/nobody")
    assert response.status_code == 404
    [error] = response.json()["errors"]
    assert error["code"] == "NOT_FOUND" and "nobody" in error["message"]


# -- bounded admission ----------------------------------------------------------------------


def test_full_queue_is_429_with_retry_after(open_client):
    client = open_client(FakeBackend(script=LONG, delay=0.02), max_queue=1)
    first, _ = in_background(client, VALID | {"max_tokens": 30})
    wait_for(lambda: client.get("/capacity").json()["slots"]["busy"] == 1)
    second, _ = in_background(client, VALID | {"job_id": "j2"})
    wait_for(lambda: client.get("/capacity").json()["queue"]["depth"] == 1)
    response = client.post("/execute", json=VALID | {"job_id": "j3"})
    assert response.status_code == 429
    assert int(response.headers["retry-after"]) >= 1
    [error] = response.json()["errors"]
    assert error["code"] == "QUEUE_FULL"
    first.join(5)
    second.join(5)
    assert (
        'llorch_requests_total{outcome="rejected",reason="429"} 1.0' in client.get("/metrics").text
    )


# -- deadlines ------------------------------------------------------------------------------


def test_timeout_ends_the_stream_with_a_timeout_error(open_client):
    client = open_client(FakeBackend(script=LONG, delay=0.02))
    response = client.post("/execute", json=VALID | {"max_tokens": 50, "timeout_ms": 100})
    assert response.status_code == 200
    events = events_of(response)
    assert events[-1]["type"] == "error" and events[-1]["code"] == "TIMEOUT"
    assert not any(e["type"] == "end" for e in events)


def test_timeout_ms_must_be_positive(open_client):
    response = open_client().post("/execute", json=VALID | {"timeout_ms": 0})
    assert response.status_code == 400
    assert response.json()["errors"][0]["field"] == "timeout_ms"


# -- drain ----------------------------------------------------------------------------------


def test_drain_refuses_new_work_and_finishes_in_flight(open_client):
    client = open_client(FakeBackend(script=LONG, delay=0.02))
    thread, out = in_background(client, VALID | {"max_tokens": 20})
    wait_for(lambda: client.get("/capacity").json()["slots"]["busy"] == 1)
    assert client.post("/drain").status_code == 202
    response = client.post("/execute", json=VALID | {"job_id": "late"})
    assert response.status_code == 503
    assert response.json()["errors"][0]["code"] == "DRAINING"
    assert client.get("/capacity").json()["state"] == "draining"
    ready = client.get("/ready")
    assert ready.status_code == 503 and ready.json()["state"] in ("draining", "drained")
    thread.join(5)
    events = events_of(out[0])
    assert events[-1]["type"] == "end" and events[-1]["stop_reason"] == "MAX_TOKENS"
    assert events[-1]["tokens_out"] == 20
    wait_for(lambda: client.get("/ready").json()["state"] == "drained")
    assert client.get("/ready").json() == {
        "ready": False,
        "state": "drained",
        "models": {"fake": "draining"},
    }
    health = client.get("/health")
    assert health.status_code == 200 and health.json()["status"] == "healthy"
    assert health.json()["state"] == "draining"


# -- capacity -------------------------------------------------------------------------------


def test_capacity_shape(open_client):
    body = open_client(max_queue=7).get("/capacity").json()
    models = body.pop("models")
    assert models == {"fake": body}  # one model: the top level is that model's
    assert body == {
        "state": "ready",
        "slots": {"total": body["slots"]["total"], "busy": 0},
        "queue": {"depth": 0, "max": 7},
        "kv": {"used": 0, "total": body["kv"]["total"]},
        "ctx_per_slot": 64,
        "model": {"sha256": "0" * 64, "architecture": "fake"},
        "cache": {
            "prefix_block": 256,
            "prefixes": [],
            "entries": 0,
            "bytes_used": 0,
            "bytes_budget": 0,
            "checkpoints": 0,
            "checkpoint_bytes": 0,
        },
        "inputs": ["text"],  # no projector: text only
    }
    assert body["slots"]["total"] >= 1 and body["kv"]["total"] >= 64


def test_capacity_while_loading(open_client):
    gate = threading.Event()
    client = open_client(FakeBackend(load_gate=gate), loaded=False)
    body = client.get("/capacity").json()
    assert body["state"] == "loading" and body["model"] is None
    gate.set()


# -- metrics --------------------------------------------------------------------------------


def sample(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    raise AssertionError(f"{name} not in metrics:\n{text}")


def test_metrics_move_after_a_request(open_client):
    client = open_client()
    before = client.get("/metrics")
    assert before.status_code == 200
    assert before.headers["content-type"].startswith("text/plain")
    assert sample(before.text, "llorch_generated_tokens_total") == 0
    assert client.post("/execute", json=VALID).status_code == 200
    assert client.post("/execute", json=VALID | {"max_tokens": 0}).status_code == 400
    text = client.get("/metrics").text
    assert sample(text, 'llorch_requests_total{outcome="finished",reason="MAX_TOKENS"}') == 1
    assert sample(text, 'llorch_requests_total{outcome="rejected",reason="400"}') == 1
    assert sample(text, "llorch_prompt_tokens_total") == 2
    assert sample(text, "llorch_generated_tokens_total") == 5
    assert sample(text, "llorch_time_to_first_token_seconds_count") == 1
    assert sample(text, "llorch_inter_token_latency_seconds_count") == 4
    assert sample(text, 'llorch_queue_depth{model="fake"}') == 0
    assert sample(text, 'llorch_slots_busy{model="fake"}') == 0
    assert sample(text, 'llorch_kv_cells_used{model="fake"}') == 0
    capacity = client.get("/capacity").json()
    assert sample(text, 'llorch_kv_cells_total{model="fake"}') == capacity["kv"]["total"]
    assert sample(text, 'llorch_slots_total{model="fake"}') == capacity["slots"]["total"]
    assert sample(text, 'llorch_model_load_seconds{model="fake"}') >= 0


def test_requests_are_counted_and_timed_by_surface(open_client):
    client = open_client()
    chat = {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}
    assert client.post("/execute", json=VALID).status_code == 200
    assert client.post("/v1/chat/completions", json=chat).status_code == 200
    assert client.post("/v1/messages", json=chat).status_code == 200
    assert client.post("/v1/responses", json={"input": "Hi"}).status_code == 200
    assert client.post("/infill", json={"input_prefix": "a"}).status_code == 400
    json = {"content-type": "application/json"}
    assert client.post("/v1/messages", content=b"{", headers=json).status_code == 400
    assert client.get("/health").status_code == 200
    text = client.get("/metrics").text
    for surface, status in [
        ("contract", "200"),
        ("openai", "200"),
        ("anthropic", "200"),
        ("anthropic", "400"),
        ("responses", "200"),
        ("infill", "400"),
        ("ops", "200"),
    ]:
        labels = f'status="{status}",surface="{surface}"'  # as the exposition sorts them
        assert sample(text, f"llorch_http_requests_total{{{labels}}}") == 1, labels
    assert sample(text, 'llorch_http_request_seconds_count{surface="anthropic"}') == 2
    assert sample(text, 'llorch_http_request_seconds_count{surface="infill"}') == 1


def test_requests_refused_before_any_route_count_too(open_client):
    client = open_client(api_token=TOKEN)
    assert client.post("/v1/responses", json={"input": "Hi"}).status_code == 401
    text = client.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"}).text
    assert sample(text, 'llorch_http_requests_total{status="401",surface="responses"}') == 1


def test_gauges_are_read_at_scrape_time(open_client):
    client = open_client(FakeBackend(script=LONG, delay=0.02))
    thread, _ = in_background(client, VALID | {"max_tokens": 30})
    wait_for(lambda: client.get("/capacity").json()["slots"]["busy"] == 1)
    text = client.get("/metrics").text
    assert sample(text, 'llorch_slots_busy{model="fake"}') == 1
    assert sample(text, 'llorch_queue_depth{model="fake"}') == 0
    thread.join(5)


def test_two_apps_in_one_process_keep_their_own_metrics(open_client):
    first, second = open_client(), open_client()
    assert first.post("/execute", json=VALID).status_code == 200
    assert sample(first.get("/metrics").text, "llorch_generated_tokens_total") == 5
    assert sample(second.get("/metrics").text, "llorch_generated_tokens_total") == 0


def test_failed_jobs_are_counted_by_code(open_client):
    client = open_client(FakeBackend(script=LONG, delay=0.02))
    client.post("/execute", json=VALID | {"max_tokens": 50, "timeout_ms": 50})
    text = client.get("/metrics").text
    assert sample(text, 'llorch_requests_total{outcome="failed",reason="TIMEOUT"}') == 1


# -- out of memory --------------------------------------------------------------------------


class _OomTokenizing(FakeBackend):
    def tokenize(self, text: str, add_special: bool = True, parse_special: bool = True):
        raise OutOfMemoryError("could not allocate the batch")


def test_out_of_memory_before_streaming_is_503(open_client):
    response = open_client(_OomTokenizing()).post("/execute", json=VALID)
    assert response.status_code == 503
    assert response.json()["errors"][0]["code"] == "VRAM_OOM"


def test_out_of_memory_while_generating_is_an_error_event(open_client):
    backend = FakeBackend(fail=OutOfMemoryError("could not allocate the KV cache"))
    events = events_of(open_client(backend).post("/execute", json=VALID))
    assert events[-1] == {
        "type": "error",
        "code": "VRAM_OOM",
        "message": "could not allocate the KV cache",
    }


def test_openai_requests_count_in_the_metrics(open_client):
    client = open_client()
    body = {"model": "fake", "prompt": "Hi", "max_tokens": 4}
    assert client.post("/v1/completions", json=body).status_code == 200
    text = client.get("/metrics").text
    assert sample(text, 'llorch_requests_total{outcome="finished",reason="MAX_TOKENS"}') == 1
    assert sample(text, "llorch_prompt_tokens_total") == 2
    assert sample(text, "llorch_generated_tokens_total") == 4
    assert sample(text, "llorch_time_to_first_token_seconds_count") == 1
