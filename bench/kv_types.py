"""The context a quantized KV cache fits: the KV cache llama.cpp allocates for F16, Q8_0 and
Q4_0 keys and values at the same slots and context, side by side in one run.

    python bench/kv_types.py [--model PATH] [--parallel 4] [--ctx-size 16384]
                             [--types f16,q8_0,q4_0] [--prompt-tokens 2000] [--flash-attn on]
                             [--doc]

For each type the worker starts fresh with `--ctx-size` tokens for each of `--parallel` slots
and `--cache-type-k/-v` of the type (flash attention on for all: a quantized V needs it, and
F16 without it would also differ in its compute buffers). /health gives the KV cache's size as
llama.cpp allocated it; the context that fits in F16's KV memory is the context times the
ratio of the sizes at least (the cache is the type's bytes per cell times cells that grow
with the context, plus the sliding-window layers' fixed windows; those make the true ratio of
contexts a little larger). One prompt of `--prompt-tokens` is read and the
worker's resident set measured, and its greedy answer compared with F16's. (`--fit` picks the
context from the same per-token cost; a bench of its choice would measure MemAvailable's
drift, ~100 MiB between two starts on a shared machine.) With --doc, the table goes into
docs/BENCHMARKS.md between its markers.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path

import httpx
from benchlib import REPO, load, write_section

from llorch.worker.models import resolve_model

BEGIN, END = "<!-- bench/kv_types.py -->", "<!-- end bench/kv_types.py -->"
serving = load("bench_serving", REPO / "bench" / "serving.py")
memory = load("bench_memory", REPO / "bench" / "memory.py")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="GGUF (default: the default model)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--parallel", type=int, default=4)
    parser.add_argument("--ctx-size", type=int, default=16384)
    parser.add_argument("--types", default="f16,q8_0,q4_0")
    parser.add_argument("--prompt-tokens", type=int, default=2000)
    parser.add_argument("--flash-attn", default="on", help="for every type")
    parser.add_argument("--doc", action="store_true", help="write docs/BENCHMARKS.md's section")
    ns = parser.parse_args()
    path = resolve_model(ns.model)
    started = datetime.now(UTC)
    load_before = " ".join(f"{x:.2f}" for x in os.getloadavg())
    logs = Path(tempfile.mkdtemp(prefix="llorch-kv-types-"))
    rows = []
    prompt = ""
    answers = []
    for kv_type in ns.types.split(","):
        port = serving.decode.free_port()
        cmd = [
            sys.executable, "-m", "llorch.cli", "serve", "--model", str(path), "--no-chat-model",
            "--threads", str(ns.threads), "--parallel", str(ns.parallel), "--ctx-size",
            str(ns.ctx_size), "--cache-type-k", kv_type, "--cache-type-v", kv_type,
            "--flash-attn", ns.flash_attn, "--port", str(port),
        ]  # fmt: skip
        server = serving.start(f"llorch-{kv_type}", cmd, port, "/ready", logs)
        try:
            kv = httpx.get(server.url + "/health", timeout=60).json()["model"]["kv_cache"]
            prompt = prompt or memory.long_prompt(server.url, True, ns.prompt_tokens)
            body = {"prompt": prompt, "max_tokens": 16, "temperature": 0}
            reply = httpx.post(server.url + "/v1/completions", json=body, timeout=3600)
            reply.raise_for_status()
            answers.append(reply.json()["choices"][0]["text"])
            rss = memory.rss_mib(server.proc.pid)
        finally:
            server.proc.terminate()
            server.proc.wait(30)
        rows.append((kv_type, kv["size_bytes"] / 2**20, rss, answers[-1] == answers[0]))
        print(f"[kv_types] {kv_type:6} KV {rows[-1][1]:.0f} MiB, RSS {rss:.0f} MiB", flush=True)
    base = rows[0][1]
    load_after = " ".join(f"{x:.2f}" for x in os.getloadavg())
    lines = [
        BEGIN,
        "## The context a quantized KV cache fits (`bench/kv_types.py`)",
        "",
        f"{ns.parallel} slots x {ns.ctx_size} tokens, flash attention {ns.flash_attn}, "
        f"{path.name}; one prompt of ~{ns.prompt_tokens} tokens, 16 greedy tokens; "
        f"{started:%Y-%m-%d %H:%M} UTC, load average {load_before} before, {load_after} after.",
        "",
        f"| KV type | KV cache (MiB, llama.cpp) | context in {rows[0][0]}'s KV memory (at least) "
        "| RSS after the prompt (MiB) | greedy answer as " + rows[0][0] + "'s |",
        "|---|---|---|---|---|",
        *(
            f"| {t} | {k:.1f} | {base / k:.2f}x ({round(ns.ctx_size * base / k)} a slot) "
            f"| {r:.0f} | {'yes' if same else 'no'} |"
            for t, k, r, same in rows
        ),
    ]
    lines.append(END)
    print("\n".join(lines))
    if ns.doc:
        write_section("\n".join(lines), BEGIN, END)


if __name__ == "__main__":
    main()
