"""End to end: `llorch serve` in its own process with the real default model, over a real
socket, driven by httpx the way an orchestrator would."""

from __future__ import annotations

import json
import signal
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import ClassVar

import httpx
import pytest
from support import FRANCE, THREADS, WorkerProcess, free_port, sse_events, start_worker, wait_for

pytestmark = pytest.mark.e2e


def execute(url: str, **body) -> tuple[list[dict], list[float]]:
    """Events of one /execute call and the time each arrived (seconds since the request)."""
    body = {"job_id": f"e2e-{uuid.uuid4().hex[:8]}", "max_tokens": 16, "temperature": 0.0} | body
    events, arrivals = [], []
    t0 = time.monotonic()
    with httpx.stream("POST", f"{url}/execute", json=body, timeout=120) as response:
        assert response.status_code == 200, response.read()
        for event in sse_events(response):
            events.append(event)
            arrivals.append(time.monotonic() - t0)
    return events, arrivals


def text(events: list[dict]) -> str:
    return "".join(e["t"] for e in events if e["type"] == "token")


def test_greedy_capital_of_france_streams_paris(worker: WorkerProcess):
    events, arrivals = execute(worker.url, prompt=FRANCE, max_tokens=48)
    types = [e["type"] for e in events]
    assert types[0] == "started" and types[-2:] == ["metrics", "end"]
    assert text(events).startswith(" Paris")
    tokens = [e for e in events if e["type"] == "token"]
    assert [e["i"] for e in tokens] == list(range(len(tokens)))
    end = events[-1]
    assert end["tokens_out"] == len(tokens) and end["decode_time_ms"] > 0
    # Streaming, not buffering: the first token arrives long before the stream ends.
    first = arrivals[types.index("token")]
    assert first < arrivals[-1] / 2, (first, arrivals[-1])


def test_same_seed_and_temperature_give_the_same_text(worker: WorkerProcess):
    body = dict(prompt="Once upon a time", max_tokens=24, temperature=0.9, seed=1234)
    first, _ = execute(worker.url, **body)
    second, _ = execute(worker.url, **body)
    other, _ = execute(worker.url, **(body | {"seed": 4321}))
    assert text(first) == text(second)
    assert text(first) != text(other)


def test_stop_sequence(worker: WorkerProcess):
    free, _ = execute(worker.url, prompt=FRANCE, max_tokens=20)
    assert "\nQuestion" in text(free)
    events, _ = execute(worker.url, prompt=FRANCE, max_tokens=20, stop=["\nQuestion"])
    assert events[-1]["stop_reason"] == "STOP_SEQUENCE"
    assert events[-1]["stop_sequence_matched"] == "\nQuestion"
    assert text(events) == text(free).split("\nQuestion")[0]


def test_max_tokens_exact(worker: WorkerProcess):
    events, _ = execute(worker.url, prompt="Count: 1, 2, 3,", max_tokens=7, temperature=0.8, seed=5)
    assert len([e for e in events if e["type"] == "token"]) == 7
    assert events[-1]["tokens_out"] == 7 and events[-1]["stop_reason"] == "MAX_TOKENS"


def test_health_answers_quickly_during_a_generation(worker: WorkerProcess):
    with ThreadPoolExecutor(1) as pool:
        running = pool.submit(execute, worker.url, prompt="Once upon a time", max_tokens=200)
        with httpx.Client(base_url=worker.url, timeout=5) as client:

            def active() -> bool:
                assert not running.done(), "generation ended before /health saw it"
                return client.get("/health").json()["active_job"] is not None

            wait_for(active, 120)
            latencies = []
            for _ in range(10):
                t0 = time.monotonic()
                health = client.get("/health")
                latencies.append(time.monotonic() - t0)
                assert health.status_code == 200
            assert health.json()["active_job"].startswith("e2e-")
        events, _ = running.result()
    assert events[-1]["tokens_out"] == 200
    assert max(latencies) < 0.1, latencies
    body = health.json()
    assert body["model"]["architecture"] == "gemma3"
    assert len(body["model"]["sha256"]) == 64
    assert body["backend"]["gpu_offload"] in (True, False) and body["devices"]


def test_concurrent_requests_queue_and_each_get_their_own_text(tmp_path):
    # One slot: concurrent requests wait their turn, and each gets exactly the text it gets
    # alone. (With several slots they are decoded together; tests/worker/test_batching_e2e.py
    # checks those by re-scoring, since batched kernels may differ in the last bits.)
    proc = start_worker(tmp_path, "--parallel", "1", "--threads", str(THREADS))
    try:
        prompts = [FRANCE, "The largest planet in the solar system is", "def fibonacci(n):"]
        alone = [text(execute(proc.url, prompt=p, max_tokens=20)[0]) for p in prompts]
        with ThreadPoolExecutor(len(prompts)) as pool:
            together = list(
                pool.map(lambda p: text(execute(proc.url, prompt=p, max_tokens=20)[0]), prompts)
            )
        assert together == alone
    finally:
        assert proc.stop() == 0


def test_context_overflow_is_a_400(worker: WorkerProcess):
    response = httpx.post(
        f"{worker.url}/execute",
        json={"job_id": "big", "prompt": FRANCE, "max_tokens": 2048},
        timeout=10,
    )
    assert response.status_code == 400
    assert response.json()["errors"][0]["field"] == "max_tokens"


def test_client_disconnect_cancels_the_generation(worker: WorkerProcess):
    with httpx.stream(
        "POST",
        f"{worker.url}/execute",
        json={"job_id": "gone", "prompt": "Once upon a time", "max_tokens": 1500},
        timeout=60,
    ) as response:
        for event in sse_events(response):
            if event["type"] == "token":
                break  # hang up mid-stream
    wait_for(
        lambda: httpx.get(f"{worker.url}/health").json()["active_job"] is None,
        10,
        "the generation kept running after the client went away",
        interval=0.05,
    )


class _Receiver(BaseHTTPRequestHandler):
    received: ClassVar[list[dict]] = []
    failures_left = 0

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if type(self).failures_left > 0:
            type(self).failures_left -= 1
            self.send_response(503)
        else:
            type(self).received.append(body)
            self.send_response(204)
        self.end_headers()

    def log_message(self, *args) -> None:
        pass


def test_ready_callback_after_listening_with_retries(tmp_path):
    _Receiver.received, _Receiver.failures_left = [], 2  # the first two attempts fail
    port = free_port()
    server = ThreadingHTTPServer(("127.0.0.1", port), _Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    proc = start_worker(
        tmp_path,
        "--worker-id",
        "w-cb",
        "--callback-url",
        f"http://127.0.0.1:{port}/ready",
        "--advertise-url",
        "http://worker-7.internal:9000",
    )
    try:
        wait_for(lambda: _Receiver.received, 20, "no ready callback arrived", interval=0.05)
        [payload] = _Receiver.received
        assert payload["worker_id"] == "w-cb"
        assert payload["url"] == "http://worker-7.internal:9000"  # as --advertise-url says
        assert payload["model"].endswith(".gguf")
        assert payload["backend"] in ("cpu", "cuda", "metal", "vulkan")
        assert isinstance(payload["vram_bytes"], int)
        # It called back only once it was listening and ready.
        assert httpx.get(f"{proc.url}/ready").status_code == 200
    finally:
        server.shutdown()
        assert proc.stop() == 0


def test_unreachable_callback_is_not_fatal(tmp_path):
    proc = start_worker(tmp_path, "--callback-url", f"http://127.0.0.1:{free_port()}/nobody")
    try:
        events, _ = execute(proc.url, prompt=FRANCE, max_tokens=4)
        assert text(events).startswith(" Paris")
    finally:
        assert proc.stop() == 0


def test_sigterm_drains_in_flight_work_and_exits_0(tmp_path):
    # A drain timeout long enough for a slow, shared CPU: this test is about finishing.
    proc = start_worker(tmp_path, "--drain-timeout", "300")
    events: list[dict] = []

    def consume() -> None:
        body = {"job_id": "long", "prompt": "Once upon a time", "max_tokens": 64}
        with httpx.stream("POST", f"{proc.url}/execute", json=body, timeout=300) as response:
            events.extend(sse_events(response))

    reader = threading.Thread(target=consume)
    reader.start()
    wait_for(lambda: any(e["type"] == "token" for e in events), 300, "no token arrived")
    proc.process.send_signal(signal.SIGTERM)
    # Still listening while it drains: probes answer, new work is refused.
    wait_for(
        lambda: httpx.get(f"{proc.url}/ready").json()["state"] == "draining",
        10,
        "SIGTERM did not start a drain",
    )
    late = httpx.post(
        f"{proc.url}/execute", json={"job_id": "late", "prompt": "Hi", "max_tokens": 2}
    )
    assert late.status_code == 503 and late.json()["errors"][0]["code"] == "DRAINING"
    assert proc.process.wait(300) == 0
    reader.join(10)
    # The in-flight generation finished on its own terms.
    assert events[-1]["type"] == "end" and events[-1]["stop_reason"] in ("MAX_TOKENS", "EOS")
    assert events[-1]["tokens_out"] == len([e for e in events if e["type"] == "token"])
    assert "Traceback" not in proc.output()
