"""Time to first token of a conversation's second turn on another slot: llorch's prompt cache
and llama-server's `--cache-ram`, side by side in one run, over HTTP.

    python bench/prompt_cache.py [--model PATH] [--threads 2] [--turn-tokens 1500]
                                 [--rounds 3] [--no-llama-server] [--doc]

Each server runs with two slots. A ~1,500-token first turn is answered (16 greedy tokens) on
one slot, a short unrelated request goes to the other, then a long request on the first
turn's prompt keeps the slot that holds it busy, so the second turn (the whole conversation
plus a short question) lands on the other slot. Time from sending the second turn to its
first streamed token, and how many prompt tokens the server reused, for:
  cold       a fresh server that never saw the conversation (the whole prompt is read)
  no cache   the host-RAM cache off (llorch `--cache-ram 0`, llama-server `--cache-ram 0`)
  cache      the host-RAM cache on, 512 MiB each (llama-server also saves idle slots to it,
             its default `--cache-idle-slots`)
Every (server, case) starts a fresh server in every round; rounds rotate the order; medians
are reported. With --doc, the table goes into docs/BENCHMARKS.md between its markers.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import httpx
from benchlib import REPO, load, write_section

from llorch.worker.models import resolve_model

BEGIN, END = "<!-- bench/prompt_cache.py -->", "<!-- end bench/prompt_cache.py -->"
CACHE_MIB = 512
QUESTION = " And how many boxes of screws?"


serving = load("bench_serving", REPO / "bench" / "serving.py")


def conversation(url: str, tokenize: Callable[[str, str], int], tokens: int) -> str:
    text = "Here is the inventory of the shop:\n"
    i = 0
    while tokenize(url, text) < tokens:
        for _ in range(20):
            text += f"- item {i}: {i % 7 + 1} boxes of {['nails', 'screws', 'bolts'][i % 3]}\n"
            i += 1
    return text + "How many boxes of nails are there?"


class Api:
    """The two servers' streaming completion routes, read the same way."""

    def __init__(self, llorch: bool) -> None:
        self.llorch = llorch

    def tokens(self, url: str, text: str) -> int:
        reply = httpx.post(f"{url}/tokenize", json={"content": text}, timeout=60)  # both
        reply.raise_for_status()
        return len(reply.json()["tokens"])

    def stream(
        self, url: str, prompt: str, n: int, on_first: Callable[[], None] | None = None
    ) -> tuple[str, float, int]:
        """(generated text, seconds to the first token, prompt tokens reused)."""
        if self.llorch:
            route = "/execute"
            body = {"job_id": f"pc-{time.monotonic_ns()}", "max_tokens": n}
        else:
            route, body = "/completion", {"n_predict": n, "stream": True, "cache_prompt": True}
        body |= {"prompt": prompt, "temperature": 0.0}
        text, first, reused = "", float("nan"), 0
        started = time.perf_counter()
        with httpx.stream("POST", url + route, json=body, timeout=None) as response:
            response.raise_for_status()
            for line in response.iter_lines():
                if not line.startswith("data: "):
                    continue
                event = json.loads(line[6:])
                if self.llorch:
                    kind = event["type"]
                    if kind == "metrics":
                        reused = event["prompt_cached"]
                    elif kind == "error":
                        raise RuntimeError(event)
                    if kind != "token":
                        continue
                    piece = event["t"]
                else:
                    if event.get("stop"):
                        reused = event["timings"]["cache_n"]
                        continue
                    piece = event["content"]
                if first != first:  # nan: this is the first token
                    first = time.perf_counter() - started
                    if on_first is not None:
                        on_first()
                text += piece
        return text, first, reused


def second_turn(url: str, api: Api, turn1: str, cold: bool) -> tuple[float, int]:
    api.stream(url, "Hello", 1)  # the same warm-up for every case
    if cold:
        _, ttft, reused = api.stream(url, turn1 + " 3 boxes." + QUESTION, 1)
        return ttft, reused
    answer, _, _ = api.stream(url, turn1, 16)
    api.stream(url, "Tell me a story about the sea. " * 20, 2)  # the other slot
    busy_started = threading.Event()
    busy = threading.Thread(
        target=lambda: api.stream(url, turn1, 300, on_first=busy_started.set), daemon=True
    )
    busy.start()
    if not busy_started.wait(600):
        raise RuntimeError("the busy request did not start")
    _, ttft, reused = api.stream(url, turn1 + answer + QUESTION, 1)
    busy.join()
    return ttft, reused


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="GGUF (default: the default model)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--turn-tokens", type=int, default=1500)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--no-llama-server", action="store_true")
    parser.add_argument("--doc", action="store_true", help="write docs/BENCHMARKS.md's section")
    ns = parser.parse_args()
    path = resolve_model(ns.model)
    started = datetime.now(UTC)
    load_before = " ".join(f"{x:.2f}" for x in os.getloadavg())
    logs = Path(tempfile.mkdtemp(prefix="llorch-prompt-cache-"))
    t, per_slot = str(ns.threads), ns.turn_tokens + 512
    llorch = [sys.executable, "-m", "llorch.cli", "serve", "--model", str(path)]
    llorch += ["--threads", t, "--parallel", "2", "--ctx-size", str(per_slot)]
    commands: dict[str, Callable[[int, int], list[str]]] = {
        "llorch": lambda port, mib: [*llorch, "--port", str(port), "--cache-ram", str(mib)]
    }
    if not ns.no_llama_server:
        base = [str(serving.llama_server_binary()), "-m", str(path), "--host", "127.0.0.1"]
        base += ["-t", t, "-tb", t, "-np", "2", "-c", str(2 * per_slot)]
        commands["llama-server"] = lambda port, mib: [
            *base,
            "--port",
            str(port),
            "--cache-ram",
            str(mib),
        ]
    cases = {"cold": CACHE_MIB, "no cache": 0, "cache": CACHE_MIB}
    runs: dict[tuple[str, str], list[tuple[float, int]]] = {
        (s, c): [] for s in commands for c in cases
    }
    arms = list(runs)
    turn1 = ""
    for r in range(ns.rounds):
        for server, case in arms[r % len(arms) :] + arms[: r % len(arms)]:
            port = serving.decode.free_port()
            probe = "/ready" if server == "llorch" else "/health"
            proc = serving.start(server, commands[server](port, cases[case]), port, probe, logs)
            try:
                api = Api(server == "llorch")
                turn1 = turn1 or conversation(proc.url, api.tokens, ns.turn_tokens)
                sample = second_turn(proc.url, api, turn1, case == "cold")
            finally:
                proc.proc.terminate()
                proc.proc.wait(30)
            runs[server, case].append(sample)
            print(f"[prompt-cache] round {r + 1} {server:12} {case:8} TTFT {sample[0]:.3f} s, "
                  f"{sample[1]} prompt tokens reused", flush=True)  # fmt: skip
    load_after = " ".join(f"{x:.2f}" for x in os.getloadavg())
    text = section(ns, runs, path, started, (load_before, load_after))
    print(text)
    if ns.doc:
        write_section(text, BEGIN, END)


def section(
    ns: argparse.Namespace,
    runs: dict[tuple[str, str], list[tuple[float, int]]],
    path: Path,
    started: datetime,
    load: tuple[str, str],
) -> str:
    lines = [BEGIN, "## Prompt cache: a conversation's second turn on another slot", ""]
    lines += [
        f"Generated by `.venv/bin/python bench/prompt_cache.py --doc` on "
        f"{started:%Y-%m-%d %H:%M} UTC; model `{path.name}`, threads {ns.threads}, two slots, "
        f"a {ns.turn_tokens}-token first turn, {ns.rounds} rounds, a fresh server per case "
        f"and round; machine: {os.cpu_count()} cores, shared; load average before {load[0]}, "
        f"after {load[1]}.",
        "",
        "The first turn is answered on one slot, a long request on the same prompt keeps that "
        "slot busy, and the second turn (the conversation plus a question) lands on the other "
        "slot. Cells: time from sending the second turn to its first streamed token, median "
        "[min, max]; prompt tokens the server reused instead of reading (its own count: "
        "llorch's `prompt_cached`, llama-server's `cache_n`).",
        "",
        "| server | case | TTFT (s) | vs its cold | prompt tokens reused |",
        "|---|---|---|---|---|",
    ]
    ratios: dict[tuple[str, str], float] = {}
    for (server, case), samples in runs.items():
        ttfts = [s[0] for s in samples]
        cold = statistics.median(s[0] for s in runs[server, "cold"])
        ratios[server, case] = statistics.median(ttfts) / cold
        cells = f"{statistics.median(ttfts):.3f} [{min(ttfts):.3f}, {max(ttfts):.3f}]"
        reused = statistics.median(s[1] for s in samples)
        lines.append(
            f"| {server} | {case} | {cells} | {ratios[server, case]:.2f}x | {reused:.0f} |"
        )
    lines += ["", "Targets (#10):", ""]
    got = ratios["llorch", "cache"]
    lines.append(
        f"- llorch cache ≤ 0.2x cold: {got:.2f}x, " + ("met" if got <= 0.2 else "**missed**")
    )
    if ("llama-server", "cache") in runs:
        mine = statistics.median(s[0] for s in runs["llorch", "cache"])
        theirs = statistics.median(s[0] for s in runs["llama-server", "cache"])
        lines.append(
            f"- second turn with the cache, llorch vs llama-server: {mine:.3f} s vs "
            f"{theirs:.3f} s ({theirs / mine:.2f}x faster)"
        )
    lines += [
        "",
        f"- llorch: `--parallel 2 --ctx-size {ns.turn_tokens + 512} --cache-ram N`; "
        f"llama-server: `-np 2 -c {2 * (ns.turn_tokens + 512)} --cache-ram N` "
        "(its default unified KV and `--cache-idle-slots`), `cache_prompt: true`.",
        "- Without the cache the second turn can be slower than cold: it is read while the "
        "busy request decodes beside it.",
        "- The machine is shared with other work: read the ratios with the [min, max] spread.",
    ]
    return "\n".join([*lines, END])


if __name__ == "__main__":
    main()
