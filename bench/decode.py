"""Single-stream decode speed, side by side in one run, on the same model and threads.

    python bench/decode.py [--model PATH] [--threads 2] [--tokens 128] [--rounds 3]

Three ways to generate the same greedy tokens from the same prompt:
  direct   llama-cpp-python's low-level API in a minimal loop (batch_get_one + greedy sampler)
  backend  llorch's batch decoder, one request alone (UTF-8 holding, stop matching, events)
  http     a `llorch serve` process, POST /execute over a socket, SSE parsed by the client
Rounds are interleaved so that drift of the machine hits all three alike; the median round is
reported with the ratio to `direct`. Decode speed counts from the first generated token to the
last, so prompt ingestion is left out of every column (time to first token is shown apart).
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx
import llama_cpp as ll

from llorch.worker.backend.llama import LlamaCppBackend
from llorch.worker.backend.protocol import (
    GenerationRequest,
    LoadOptions,
    SamplingParams,
    TokenEvent,
)
from llorch.worker.backend.single import generate
from llorch.worker.models import resolve_model

PROMPT = "Write a long story about a lighthouse keeper who finds a message in a bottle.\n\n"


def direct(path: Path, threads: int, n_tokens: int, ctx_size: int) -> tuple[float, float]:
    """Returns (time to first token s, decode tokens/s after the first token)."""
    mparams = ll.llama_model_default_params()
    model = ll.llama_model_load_from_file(str(path).encode(), mparams)
    cparams = ll.llama_context_default_params()
    cparams.n_ctx, cparams.n_batch, cparams.n_ubatch = ctx_size, 512, 512
    cparams.n_threads = cparams.n_threads_batch = threads
    ctx = ll.llama_init_from_model(model, cparams)
    vocab = ll.llama_model_get_vocab(model)
    raw = PROMPT.encode()
    buf = (ll.llama_token * (len(raw) + 8))()
    n = ll.llama_tokenize(vocab, raw, len(raw), buf, len(buf), True, True)
    chain = ll.llama_sampler_chain_init(ll.llama_sampler_chain_default_params())
    ll.llama_sampler_chain_add(chain, ll.llama_sampler_init_greedy())
    piece = ctypes.create_string_buffer(64)
    t0 = time.perf_counter()
    ll.llama_decode(ctx, ll.llama_batch_get_one(buf, n))
    one = (ll.llama_token * 1)()
    first = 0.0
    for i in range(n_tokens):
        token = ll.llama_sampler_sample(chain, ctx, -1)
        ll.llama_token_to_piece(vocab, token, piece, 64, 0, False)  # what any server must do
        if i == 0:
            first = time.perf_counter()
        if i == n_tokens - 1:
            break
        one[0] = token
        ll.llama_decode(ctx, ll.llama_batch_get_one(one, 1))
    end = time.perf_counter()
    ll.llama_sampler_free(chain)
    ll.llama_free(ctx)
    ll.llama_model_free(model)
    return first - t0, (n_tokens - 1) / (end - first)


def backend(path: Path, threads: int, n_tokens: int, ctx_size: int) -> tuple[float, float]:
    b = LlamaCppBackend()
    b.load(path, LoadOptions(ctx_size=ctx_size, threads=threads))
    try:
        request = GenerationRequest(
            tuple(b.tokenize(PROMPT)), n_tokens, SamplingParams(temperature=0.0)
        )
        t0 = time.perf_counter()
        first = end = 0.0
        count = 0
        for event in generate(b.decoder(), request):
            if isinstance(event, TokenEvent):
                count += 1
                end = time.perf_counter()
                if count == 1:
                    first = end
        return first - t0, (count - 1) / (end - first)
    finally:
        b.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(path: Path, threads: int, ctx_size: int) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    args = ["--model", str(path), "--port", str(port), "--threads", str(threads)]
    args += ["--ctx-size", str(ctx_size)]
    proc = subprocess.Popen(
        [sys.executable, "-m", "llorch.cli", "serve", *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    for _ in range(600):
        try:
            if httpx.get(f"{url}/ready").status_code == 200:
                return proc, url
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    proc.kill()
    raise SystemExit("the worker did not become ready")


def http(url: str, n_tokens: int) -> tuple[float, float]:
    body = {"job_id": "bench", "prompt": PROMPT, "max_tokens": n_tokens, "temperature": 0.0}
    t0 = time.perf_counter()
    first = end = 0.0
    count = 0
    with httpx.stream("POST", f"{url}/execute", json=body, timeout=600) as response:
        for line in response.iter_lines():
            if line.startswith("data: ") and json.loads(line[6:])["type"] == "token":
                count += 1
                end = time.perf_counter()
                if count == 1:
                    first = end
    return first - t0, (count - 1) / (end - first)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="GGUF (default: the default model)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--ctx-size", type=int, default=2048)
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    ns = parser.parse_args()
    path = resolve_model(ns.model)
    proc, url = start_server(path, ns.threads, ns.ctx_size)
    results: dict[str, list[tuple[float, float]]] = {"direct": [], "backend": [], "http": []}
    try:
        http(url, 8)  # warm-up
        for _ in range(ns.rounds):
            results["direct"].append(direct(path, ns.threads, ns.tokens, ns.ctx_size))
            results["backend"].append(backend(path, ns.threads, ns.tokens, ns.ctx_size))
            results["http"].append(http(url, ns.tokens))
    finally:
        proc.terminate()
        proc.wait(30)
    summary = {
        name: {
            "decode_tok_s": statistics.median(r[1] for r in runs),
            "ttft_ms": statistics.median(r[0] for r in runs) * 1000,
        }
        for name, runs in results.items()
    }
    base = summary["direct"]["decode_tok_s"]
    for row in summary.values():
        row["ratio_vs_direct"] = row["decode_tok_s"] / base
    if ns.json:
        print(json.dumps(summary, indent=2))
        return
    print(f"model {path.name}, {ns.threads} threads, {ns.tokens} tokens, median of {ns.rounds}")
    print("| path | decode tokens/s | vs direct | time to first token (ms) |")
    print("|---|---|---|---|")
    for name, row in summary.items():
        print(
            f"| {name} | {row['decode_tok_s']:.1f} | {row['ratio_vs_direct']:.3f}x "
            f"| {row['ttft_ms']:.0f} |"
        )


if __name__ == "__main__":
    main()
