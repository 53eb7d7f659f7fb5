"""End to end: the orchestrator controls against `llorch serve` with the real default model,
over a real socket (cancel by id, deadlines, drain, SIGTERM, auth, capacity, metrics)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time

import httpx
import pytest
from support import FRANCE, WorkerProcess, sse_events, start_worker, wait_for

pytestmark = pytest.mark.e2e

TOKEN = "e2e-token-7f3a"


class Stream:
    """One /execute stream read on a thread; events arrive in `events` as they come."""

    def __init__(self, url: str, body: dict, headers: dict[str, str] | None = None) -> None:
        self.events: list[dict] = []
        self.status: int | None = None
        self.ended_at: float | None = None
        self._thread = threading.Thread(target=self._read, args=(url, body, headers or {}))
        self._thread.start()

    def _read(self, url: str, body: dict, headers: dict[str, str]) -> None:
        with httpx.stream(
            "POST", f"{url}/execute", json=body, headers=headers, timeout=300
        ) as response:
            self.status = response.status_code
            for event in sse_events(response):
                self.events.append(event)
        self.ended_at = time.monotonic()

    def wait_for(self, kind: str, timeout: float = 60.0) -> None:
        wait_for(lambda: any(e["type"] == kind for e in self.events), timeout)

    def join(self, timeout: float = 60.0) -> list[dict]:
        self._thread.join(timeout)
        assert not self._thread.is_alive(), "the stream did not end"
        return self.events

    def tokens(self) -> list[dict]:
        return [e for e in self.events if e["type"] == "token"]


def body(job_id: str, **fields) -> dict:
    return {"job_id": job_id, "prompt": "Once upon a time", "max_tokens": 1500} | fields


def metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith((name + " ", name + "{")):  # gauges carry a model label
            return float(line.split()[-1])
    raise AssertionError(f"{name} not in /metrics")


# -- on the shared worker ------------------------------------------------------------------


def test_cancel_by_id_during_generation(worker: WorkerProcess):
    stream = Stream(worker.url, body("cancel-gen"))
    stream.wait_for("token")
    response = httpx.delete(f"{worker.url}/jobs/cancel-gen", timeout=5)
    asked = time.monotonic()
    assert response.status_code == 202
    assert response.json() == {"job_id": "cancel-gen", "state": "cancelling"}
    events = stream.join(30)
    assert events[-1]["type"] == "end" and events[-1]["stop_reason"] == "CANCELLED"
    assert events[-1]["tokens_out"] < 1500
    assert stream.ended_at is not None and stream.ended_at - asked < 5
    assert httpx.delete(f"{worker.url}/jobs/cancel-gen", timeout=5).status_code == 404


def test_cancel_by_id_during_prompt_ingestion(worker: WorkerProcess):
    # About 1,800 tokens of prompt: ingesting it takes a while on a CPU, and the job is
    # cancelled as soon as it reached the model, before its first token.
    prompt = "The quick brown fox jumps over the lazy dog. " * 180
    stream = Stream(worker.url, body("cancel-prompt", prompt=prompt, max_tokens=64))
    stream.wait_for("started")
    assert httpx.delete(f"{worker.url}/jobs/cancel-prompt", timeout=5).status_code == 202
    events = stream.join(60)
    assert events[-1]["type"] == "end" and events[-1]["stop_reason"] == "CANCELLED"
    assert stream.tokens() == [] and events[-1]["tokens_out"] == 0
    wait_for(lambda: httpx.get(f"{worker.url}/capacity").json()["slots"]["busy"] == 0, 10)


def test_timeout_ends_with_a_timeout_error(worker: WorkerProcess):
    stream = Stream(worker.url, body("deadline", timeout_ms=300))
    events = stream.join(30)
    assert stream.status == 200
    assert events[-1]["type"] == "error" and events[-1]["code"] == "TIMEOUT"
    assert len(stream.tokens()) < 1500


def test_capacity_describes_the_worker(worker: WorkerProcess):
    capacity = httpx.get(f"{worker.url}/capacity", timeout=5).json()
    assert capacity["state"] == "ready"
    assert capacity["slots"]["total"] >= 1 and capacity["slots"]["busy"] >= 0
    assert capacity["queue"]["max"] == 64
    assert capacity["ctx_per_slot"] > 0 and capacity["kv"]["total"] >= capacity["ctx_per_slot"]
    assert capacity["model"]["architecture"] == "gemma3"
    assert len(capacity["model"]["sha256"]) == 64


def test_metrics_after_traffic(worker: WorkerProcess):
    before = httpx.get(f"{worker.url}/metrics", timeout=5).text
    finished = 'llorch_requests_total{outcome="finished",reason="MAX_TOKENS"}'
    count = metric(before, finished) if finished in before else 0.0
    generated = metric(before, "llorch_generated_tokens_total")
    stream = Stream(worker.url, body("metered", prompt=FRANCE, max_tokens=8, temperature=0.0))
    assert stream.join(60)[-1]["stop_reason"] == "MAX_TOKENS"
    after = httpx.get(f"{worker.url}/metrics", timeout=5)
    assert after.status_code == 200 and after.headers["content-type"].startswith("text/plain")
    text = after.text
    assert metric(text, finished) == count + 1
    assert metric(text, "llorch_generated_tokens_total") == generated + 8
    assert metric(text, "llorch_prompt_tokens_total") >= 10
    assert metric(text, "llorch_time_to_first_token_seconds_count") >= 1
    assert metric(text, "llorch_inter_token_latency_seconds_count") >= 7
    assert metric(text, "llorch_model_load_seconds") > 0
    assert metric(text, "llorch_kv_cells_total") > 0
    assert metric(text, "llorch_slots_busy") == 0


# -- on workers of their own ----------------------------------------------------------------


def test_auth_over_the_socket(tmp_path, monkeypatch):
    monkeypatch.setenv("LLORCH_API_TOKEN", TOKEN)  # the worker process inherits it
    proc = start_worker(tmp_path)
    try:
        url = proc.url
        assert httpx.get(f"{url}/health").status_code == 200
        assert httpx.get(f"{url}/ready").status_code == 200
        refused = httpx.post(f"{url}/execute", json=body("a", max_tokens=2))
        assert refused.status_code == 401
        assert refused.headers["www-authenticate"] == "Bearer"
        assert refused.json()["errors"][0]["code"] == "UNAUTHORIZED"
        wrong = {"Authorization": "Bearer " + TOKEN[:-1]}
        assert httpx.get(f"{url}/capacity", headers=wrong).status_code == 401
        assert httpx.get(f"{url}/v1/models").status_code == 401
        good = {"Authorization": f"Bearer {TOKEN}"}
        assert httpx.get(f"{url}/v1/models", headers=good).status_code == 200
        assert httpx.get(f"{url}/metrics", headers=good).status_code == 200
        stream = Stream(url, body("authed", prompt=FRANCE, max_tokens=4), headers=good)
        assert stream.join(60)[-1]["type"] == "end"
    finally:
        assert proc.stop() == 0
    assert TOKEN not in proc.output()


def test_non_loopback_host_without_token_refuses_to_start(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "LLORCH_API_TOKEN"}
    result = subprocess.run(
        [sys.executable, "-m", "llorch.cli", "serve", "--host", "0.0.0.0"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "without an API token" in result.stderr


def test_drain_finishes_in_flight_work_and_refuses_new(tmp_path):
    proc = start_worker(tmp_path)
    try:
        url = proc.url
        stream = Stream(url, body("in-flight", max_tokens=128, temperature=0.0))
        stream.wait_for("token")
        assert httpx.post(f"{url}/drain").status_code == 202
        refused = httpx.post(f"{url}/execute", json=body("late", max_tokens=2))
        assert refused.status_code == 503
        assert refused.json()["errors"][0]["code"] == "DRAINING"
        assert httpx.get(f"{url}/capacity").json()["state"] == "draining"
        events = stream.join(300)
        assert events[-1]["type"] == "end"
        assert events[-1]["stop_reason"] in ("MAX_TOKENS", "EOS")
        wait_for(lambda: httpx.get(f"{url}/ready").json()["state"] == "drained", 10)
        ready = httpx.get(f"{url}/ready")
        assert ready.status_code == 503
        assert ready.json()["ready"] is False and ready.json()["state"] == "drained"
        assert httpx.get(f"{url}/health").status_code == 200
    finally:
        assert proc.stop() == 0


def test_sigterm_past_the_drain_timeout_cancels(tmp_path):
    proc = start_worker(tmp_path, "--drain-timeout", "1")
    stream = Stream(proc.url, body("too-long"))
    stream.wait_for("token")
    signalled = time.monotonic()
    proc.process.send_signal(signal.SIGTERM)
    assert proc.process.wait(30) == 0
    events = stream.join(10)
    assert events[-1]["type"] == "end" and events[-1]["stop_reason"] == "CANCELLED"
    assert stream.ended_at is not None and 0.9 < stream.ended_at - signalled < 10
    assert "Traceback" not in proc.output()


def test_second_sigterm_cancels_at_once(tmp_path):
    proc = start_worker(tmp_path)  # the default drain timeout: 30 s
    stream = Stream(proc.url, body("twice"))
    stream.wait_for("token")
    proc.process.send_signal(signal.SIGTERM)
    wait_for(lambda: httpx.get(f"{proc.url}/ready").json()["state"] == "draining", 10)
    signalled = time.monotonic()
    proc.process.send_signal(signal.SIGTERM)
    assert proc.process.wait(30) == 0
    events = stream.join(10)
    assert events[-1]["type"] == "end" and events[-1]["stop_reason"] == "CANCELLED"
    assert stream.ended_at is not None and stream.ended_at - signalled < 10


def test_a_context_too_large_for_memory_is_reported_as_such(tmp_path):
    """64 slots of 1M tokens: a KV cache of about 1.1 TiB, which llama.cpp cannot allocate.
    /ready and /health say it is out of memory and by how much, not that the file is bad."""
    from support import free_port

    port = free_port()
    log = (tmp_path / "oom.log").open("wb")
    cmd = [sys.executable, "-m", "llorch.cli", "serve", "--port", str(port)]
    args = ["--ctx-size", "1048576", "--parallel", "64", "--threads", "1"]
    proc = subprocess.Popen([*cmd, *args], stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        body: dict = {}
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and body.get("state") != "error":
            with contextlib.suppress(httpx.TransportError):
                body = httpx.get(f"{url}/ready").json()
            time.sleep(0.1)
        assert body["state"] == "error", (tmp_path / "oom.log").read_text()
        assert body["code"] == "VRAM_OOM" and "out of memory" in body["reason"]
        memory = body["memory"]
        assert memory["needed_bytes"] > 1 << 40  # the KV cache asked for, from the header
        assert 0 < memory["free_bytes"] < memory["needed_bytes"]
        health = httpx.get(f"{url}/health").json()
        assert health["status"] == "unhealthy" and health["code"] == "VRAM_OOM"
        assert health["memory"] == memory
    finally:
        proc.terminate()
        assert proc.wait(30) == 0
