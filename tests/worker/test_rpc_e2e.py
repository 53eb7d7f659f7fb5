"""End to end over llama.cpp RPC: two `llorch rpc-server` processes on loopback and a
`llorch serve --rpc` worker using both, against the same worker without RPC (the reference)."""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from rpc_servers import RpcServerProcess, dead_endpoint, start_rpc_server
from support import FRANCE, THREADS, WorkerProcess, free_port, sse_events, start_worker

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[RpcServerProcess]]:
    tmp = tmp_path_factory.mktemp("rpc-e2e")
    started: list[RpcServerProcess] = []
    try:
        for _ in range(2):
            started.append(start_rpc_server(tmp, "--threads", "1"))
        yield started
    finally:
        for server in started:
            server.stop()


def greedy_token_ids(url: str) -> list[int]:
    body = {"job_id": f"rpc-{uuid.uuid4().hex[:8]}", "prompt": FRANCE, "max_tokens": 16}
    with httpx.stream("POST", f"{url}/execute", json=body | {"temperature": 0}, timeout=300) as r:
        assert r.status_code == 200, r.read()
        events = list(sse_events(r))
    assert events[-1]["type"] == "end", events[-1]
    return [e["id"] for e in events if e["type"] == "token"]


def test_a_worker_over_two_rpc_servers_gives_the_greedy_tokens_of_the_worker_alone(
    worker: WorkerProcess, servers: list[RpcServerProcess], tmp_path: Path
):
    reference = greedy_token_ids(worker.url)  # the session worker: the same flags, no --rpc
    endpoints = [s.endpoint for s in servers]
    split = start_worker(
        tmp_path,
        *("--ctx-size", "2048", "--threads", str(THREADS)),
        *("--rpc", ",".join(endpoints), "--tensor-split", "1,1", "--n-gpu-layers", "12"),
        ready_timeout=300,
    )
    try:
        tokens = greedy_token_ids(split.url)
        health = httpx.get(f"{split.url}/health", timeout=10).json()
    finally:
        assert split.stop() == 0
    assert len(reference) == 16 and tokens == reference
    remote = [d for d in health["devices"] if d["kind"] == "rpc"]
    assert [d["description"] for d in remote] == endpoints
    assert all(d["memory_total_bytes"] > 0 for d in remote)
    assert [d["kind"] for d in health["devices"]].count("cpu") == 1  # this machine's own


def test_a_dead_rpc_server_at_start_is_an_error_on_ready(tmp_path: Path):
    endpoint = dead_endpoint()
    port = free_port()
    log = tmp_path / "worker.log"
    proc = _start(port, log, "--rpc", endpoint)
    try:
        body = _ready_after_loading(f"http://127.0.0.1:{port}", proc)
        assert body["state"] == "error" and body["ready"] is False
        assert body["code"] == "RPC_UNAVAILABLE"
        assert f"rpc server {endpoint} is unreachable" in body["reason"]
        assert proc.poll() is None  # an error to report, not a crash
    finally:
        proc.terminate()
        proc.wait(30)


def _start(port: int, log: Path, *args: str) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, "-m", "llorch.cli", "serve", "--port", str(port), *args]
    with log.open("wb") as sink:
        return subprocess.Popen(cmd, stdout=sink, stderr=subprocess.STDOUT)


def _ready_after_loading(url: str, proc: subprocess.Popen[bytes]) -> dict:
    """/ready's body once the worker has stopped loading."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"worker exited with {proc.returncode}"
        try:
            response = httpx.get(f"{url}/ready", timeout=2.0)
        except httpx.TransportError:
            time.sleep(0.1)
            continue
        body = response.json()
        if body["state"] != "loading":
            assert response.status_code == (200 if body["ready"] else 503)
            return dict(body)
        time.sleep(0.1)
    raise AssertionError("the worker was still loading after 120s")
