"""Speculative decoding through the worker: the default (`--spec auto`), the per-request
`speculative` field on /execute and /v1, the drafted/accepted counts and the time saved of the
metrics event and /metrics, and a draft model with another vocabulary refused on /ready."""

from __future__ import annotations

import contextlib
import runpy
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from support import THREADS, WorkerProcess, free_port, sse_events, start_worker

pytestmark = pytest.mark.e2e

# bench/tasks.py's rewriting prompt, its first function only. Over a long output, a batch of
# drafts and a single token may pick differently where the two best logits are within rounding
# (tests/worker/backend/test_speculative.py handles that); the first 40 tokens of this answer
# have no such near-tie.
TASKS = runpy.run_path(str(Path(__file__).parents[2] / "bench" / "tasks.py"))
REWRITE = TASKS["rewrite"](TASKS["FUNCTIONS"][0])


@pytest.fixture(scope="module")
def spec_worker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WorkerProcess]:
    proc = start_worker(  # speculation as it comes: --spec auto
        tmp_path_factory.mktemp("spec"),
        "--parallel",
        "2",
        "--ctx-size",
        "512",
        "--threads",
        str(THREADS),
    )
    yield proc
    proc.stop()


def execute(url: str, **fields: object) -> tuple[str, dict]:
    body = {"job_id": f"s-{time.monotonic_ns()}", "prompt": REWRITE, "max_tokens": 40}
    body |= {"temperature": 0.0} | fields
    text, metrics = "", {}
    with httpx.stream("POST", f"{url}/execute", json=body, timeout=300) as response:
        assert response.status_code == 200, response.read()
        for event in sse_events(response):
            if event["type"] == "token":
                text += event["t"]
            elif event["type"] == "metrics":
                metrics = event
            elif event["type"] == "error":
                raise AssertionError(event)
    return text, metrics


def metric(url: str, name: str) -> float:
    for line in httpx.get(f"{url}/metrics").text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} not in /metrics")


def test_the_server_default_and_the_request_field(spec_worker):
    url = spec_worker.url
    names = ("llorch_draft_tokens_total", "llorch_draft_accepted_total")
    before = [metric(url, name) for name in (*names, "llorch_draft_saved_seconds")]
    # auto: one stream copying its prompt drafts (the rule's estimate of a lone sequence)
    text, on = execute(url)
    plain, off = execute(url, speculative=False)
    forced, ngram = execute(url, speculative=True)  # drafts every match, as --spec ngram
    assert on["accepted"] > 0 and on["drafted"] >= on["accepted"]
    assert ngram["accepted"] > 0
    assert off["drafted"] == off["accepted"] == 0 and off["draft_saved_ms"] == 0
    assert text == plain == forced
    after = [metric(url, name) for name in (*names, "llorch_draft_saved_seconds")]
    assert after[0] - before[0] == on["drafted"] + ngram["drafted"]
    assert after[1] - before[1] == on["accepted"] + ngram["accepted"]
    saved = (on["draft_saved_ms"] + ngram["draft_saved_ms"]) / 1000
    assert after[2] - before[2] == pytest.approx(saved, abs=1e-5)


def test_v1_takes_the_extension(spec_worker):
    body = {"prompt": REWRITE, "max_tokens": 24, "temperature": 0, "speculative": True}
    reply = httpx.post(f"{spec_worker.url}/v1/completions", json=body, timeout=300)
    assert reply.status_code == 200, reply.text
    plain = httpx.post(
        f"{spec_worker.url}/v1/completions", json=body | {"speculative": False}, timeout=300
    )
    assert reply.json()["choices"][0]["text"] == plain.json()["choices"][0]["text"]
    bad = httpx.post(f"{spec_worker.url}/v1/completions", json=body | {"speculative": "yes"})
    assert bad.status_code == 400


def test_a_draft_model_with_another_vocabulary_is_an_error_on_ready(tmp_path):
    from tiny_hf import tiny_llama

    from llorch.convert.api import convert

    draft = tmp_path / "tiny.gguf"
    convert(tiny_llama(tmp_path / "tiny"), draft, outtype="f32")
    port = free_port()
    cmd = [sys.executable, "-m", "llorch.cli", "serve", "--port", str(port), "--threads", "1"]
    with (tmp_path / "worker.log").open("wb") as log:
        proc = subprocess.Popen(
            [*cmd, "--ctx-size", "256", "--draft-model", str(draft)],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        body: dict = {}
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and body.get("state") != "error":
            with contextlib.suppress(httpx.TransportError):
                body = httpx.get(f"http://127.0.0.1:{port}/ready").json()
            time.sleep(0.1)
        assert body.get("state") == "error", (tmp_path / "worker.log").read_text()
        assert "does not share the model's vocabulary" in body["reason"]
    finally:
        proc.terminate()
        proc.wait(30)
