"""Resident memory of a long conversation: llorch and llama-server with the same slots and
context, after one long prompt, side by side in one run.

    python bench/memory.py [--model PATH] [--threads 2] [--parallel 4] [--ctx-size 32768]
                           [--prompt-tokens 10000] [--llorch-args "..."] [--no-llama-server]
                           [--doc]

Each server starts fresh with `--parallel` slots of `--ctx-size` tokens (llama-server:
`-np P -c P*C`, its defaults otherwise: sliding-window layers keep their window, context
checkpoints on), reads one prompt of about `--prompt-tokens` tokens (1 greedy token back),
and then its resident set (VmRSS of the server process, /proc) is read, with the KV size
llorch's /health reports. llorch's process is a Python interpreter with FastAPI, which
llama-server is not: its RSS before the prompt is shown too. With --doc, the table goes into
docs/BENCHMARKS.md between its markers.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path

import httpx
from benchlib import REPO, load, write_section

from llorch.worker.models import resolve_model

BEGIN, END = "<!-- bench/memory.py -->", "<!-- end bench/memory.py -->"
serving = load("bench_serving", REPO / "bench" / "serving.py")


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for {pid}")


def long_prompt(url: str, llorch: bool, tokens: int) -> str:
    """A shop inventory of about `tokens` tokens, measured with the server's tokenizer."""
    # Both servers answer POST /tokenize {"content"} with {"tokens"}.
    del llorch
    text, i = "Here is the inventory of the shop:\n", 0
    while True:
        n = len(httpx.post(url + "/tokenize", json={"content": text}, timeout=60).json()["tokens"])
        if n >= tokens:
            return text + "How many boxes of nails are there?"
        for _ in range(max(1, (tokens - n) // 12)):
            text += f"- item {i}: {i % 7 + 1} boxes of {['nails', 'screws', 'bolts'][i % 3]}\n"
            i += 1


def read(url: str, prompt: str) -> None:
    body = {"prompt": prompt, "max_tokens": 1, "temperature": 0}
    response = httpx.post(url + "/v1/completions", json=body, timeout=3600)
    response.raise_for_status()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="GGUF (default: the default model)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--parallel", type=int, default=4)
    parser.add_argument("--ctx-size", type=int, default=32768)
    parser.add_argument("--prompt-tokens", type=int, default=10000)
    parser.add_argument("--llorch-args", default="", help="more llorch serve flags")
    parser.add_argument("--no-llama-server", action="store_true")
    parser.add_argument("--doc", action="store_true", help="write docs/BENCHMARKS.md's section")
    ns = parser.parse_args()
    path = resolve_model(ns.model)
    started = datetime.now(UTC)
    load_before = " ".join(f"{x:.2f}" for x in os.getloadavg())
    logs = Path(tempfile.mkdtemp(prefix="llorch-memory-"))
    t, p, c = str(ns.threads), str(ns.parallel), ns.ctx_size
    commands = {
        "llorch": [
            sys.executable,
            "-m",
            "llorch.cli",
            "serve",
            "--model",
            str(path),
            "--no-chat-model",
            "--threads",
            t,
            "--parallel",
            p,
            "--ctx-size",
            str(c),
            *shlex.split(ns.llorch_args),
        ],
    }
    if not ns.no_llama_server:
        commands["llama-server"] = [
            str(serving.llama_server_binary()),
            "-m",
            str(path),
            "--host",
            "127.0.0.1",
            "-t",
            t,
            "-tb",
            t,
            "-np",
            p,
            "-c",
            str(ns.parallel * c),
        ]
    rows = []
    prompt = ""
    for name, cmd in commands.items():
        port = serving.decode.free_port()
        llorch = name == "llorch"
        server = serving.start(
            name, [*cmd, "--port", str(port)], port, "/ready" if llorch else "/health", logs
        )
        try:
            idle = rss_mib(server.proc.pid)
            prompt = prompt or long_prompt(server.url, llorch, ns.prompt_tokens)
            read(server.url, prompt)
            after = rss_mib(server.proc.pid)
            kv = ""
            if llorch:
                model = httpx.get(server.url + "/health").json()["model"]
                kv = f"{model['kv_cache']['size_bytes'] / 2**20:.1f}"
        finally:
            server.proc.terminate()
            server.proc.wait(30)
        rows.append((name, idle, after, kv))
        print(
            f"[memory] {name:12} RSS idle {idle:.0f} MiB, after the prompt {after:.0f} MiB",
            flush=True,
        )
    load_after = " ".join(f"{x:.2f}" for x in os.getloadavg())
    lines = [
        BEGIN,
        "## Resident memory after one long prompt (`bench/memory.py`)",
        "",
        f"{ns.parallel} slots x {c} tokens, one prompt of ~{ns.prompt_tokens} tokens, "
        f"{path.name}, {ns.threads} threads; {started:%Y-%m-%d %H:%M} UTC, load average "
        f"{load_before} before, {load_after} after (a shared machine: not a clean figure).",
        "",
        "| server | RSS idle (MiB) | RSS after the prompt (MiB) | KV cache (MiB, /health) |",
        "|---|---|---|---|",
        *(f"| {n} | {i:.0f} | {a:.0f} | {k or '-'} |" for n, i, a, k in rows),
    ]
    if len(rows) == 2:
        lines += ["", f"llorch / llama-server after the prompt: {rows[0][2] / rows[1][2]:.2f}x"]
    lines.append(END)
    text = "\n".join(lines)
    print(text)
    if ns.doc:
        write_section(text, BEGIN, END)


if __name__ == "__main__":
    main()
