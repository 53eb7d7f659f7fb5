"""`llorch serve --model HF_FOLDER`: detect, convert into the cache, serve; a restart reuses it."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from support import free_port, sse_events, start_worker

pytestmark = pytest.mark.e2e

TINY = {
    "hidden_size": 256,
    "intermediate_size": 512,
    "num_hidden_layers": 1,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
}


def generate(url: str) -> dict:
    body = {"job_id": "hf", "prompt": "hello world", "max_tokens": 5, "temperature": 0.0}
    with httpx.stream("POST", f"{url}/execute", json=body, timeout=60) as response:
        assert response.status_code == 200
        return list(sse_events(response))[-1]


def test_serve_a_hugging_face_folder(checkpoint: Any, tmp_path: Path, monkeypatch: Any) -> None:
    built = checkpoint("LlamaForCausalLM", "LlamaConfig", TINY)
    cache = tmp_path / "cache"
    monkeypatch.setenv("LLORCH_CACHE", str(cache))  # inherited by the worker process
    args = ("--model", str(built.folder), "--ctx-size", "128", "--parallel", "1")

    first = start_worker(tmp_path, *args)
    try:
        model = httpx.get(f"{first.url}/health").json()["model"]
        assert model["architecture"] == "llama"
        served = Path(model["path"])
        assert served.is_relative_to(cache.resolve()) and served.suffix == ".gguf"
        end = generate(first.url)
        assert end["type"] == "end" and 1 <= end["tokens_out"] <= 5
    finally:
        assert first.stop() == 0
    stamp = served.stat().st_mtime_ns

    second = start_worker(tmp_path, *args)
    try:
        again = Path(httpx.get(f"{second.url}/health").json()["model"]["path"])
        assert again == served and again.stat().st_mtime_ns == stamp  # not converted again
        assert generate(second.url)["type"] == "end"
    finally:
        assert second.stop() == 0


def test_an_unsupported_folder_reports_why_on_ready(tmp_path: Path, monkeypatch: Any) -> None:
    folder = tmp_path / "weird"
    folder.mkdir()
    (folder / "config.json").write_text('{"architectures": ["WeirdForCausalLM"]}')
    monkeypatch.setenv("LLORCH_CACHE", str(tmp_path / "cache"))
    port = free_port()
    log = (tmp_path / "worker.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "llorch.cli", "serve", "--model", str(folder), "--port", str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 60
        body: dict = {}
        while time.monotonic() < deadline:
            try:
                body = httpx.get(f"http://127.0.0.1:{port}/ready").json()
                if body.get("state") == "error":
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        assert body["state"] == "error"
        assert "WeirdForCausalLM" in body["reason"] and "LlamaForCausalLM" in body["reason"]
    finally:
        proc.terminate()
        assert proc.wait(30) == 0


# Large enough that writing takes a while: tensors of ~1M elements each.
LARGE = {
    "hidden_size": 1024,
    "intermediate_size": 2816,
    "num_hidden_layers": 4,
    "num_attention_heads": 8,
    "num_key_value_heads": 8,
}


def test_sigterm_while_serve_converts_leaves_no_file(
    checkpoint: Any, tmp_path: Path, monkeypatch: Any
) -> None:
    """The worker converts on its model thread; SIGTERM stops the conversion at its next
    tensor, and the process exits 0 with nothing left in the cache."""
    built = checkpoint("LlamaForCausalLM", "LlamaConfig", LARGE)
    cache = tmp_path / "cache"
    monkeypatch.setenv("LLORCH_CACHE", str(cache))
    log = (tmp_path / "worker.log").open("wb")
    cmd = [sys.executable, "-m", "llorch.cli", "serve", "--model", str(built.folder)]
    proc = subprocess.Popen(
        [*cmd, "--port", str(free_port())], stdout=log, stderr=subprocess.STDOUT
    )
    try:
        deadline = time.monotonic() + 120
        while proc.poll() is None and not any(p.is_file() for p in cache.rglob("*")):
            assert time.monotonic() < deadline, "the conversion never started"
            time.sleep(0.01)  # the temporary appears when writing starts
        assert proc.poll() is None, (tmp_path / "worker.log").read_text()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(120) == 0, (tmp_path / "worker.log").read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
    left = [p for p in cache.rglob("*") if p.is_file() and p.name != "digests.json"]
    assert left == []
