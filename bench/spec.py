"""Speculative decoding side by side, each server as it comes: llorch's default (`--spec
auto`) and llorch without speculation, llama-server's default (no speculation) and
llama-server with its n-gram speculation, at 1, 4 and 16 concurrent streams.

    .venv/bin/python bench/spec.py [--model PATH] [--threads N] [--tokens 192] [--rounds 3]
                                   [--streams 1,4,16] [--no-llama-server] [--doc]

Three tasks, greedy (bench/tasks.py):
  grounded  rewrite a given code block with one name changed (the answer repeats the input,
            which prompt lookup can draft)
  quotes    summarise a given passage, quoting its sentences (grounded too)
  free      continue a story (little to look up)
One llorch worker with its default settings serves both llorch arms (the request's
`speculative` field: absent for the default, false for none); llama-server runs twice, plain
and with `--spec-type ngram-simple`, when a binary built from the same llama.cpp is in the
cache (bench/serving.py builds it). Both sides have as many slots as the most streams. Every
round visits every arm once per task and stream count, in an order that rotates. Prints a
table; with --doc, writes it into docs/BENCHMARKS.md between its markers.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
from benchlib import REPO, load, write_section
from tasks import TASKS

from llorch.worker.models import resolve_model

BEGIN, END = "<!-- bench/spec.py -->", "<!-- end bench/spec.py -->"
LLORCH, LLORCH_OFF = "llorch (default: auto)", "llorch, speculation off"
SERVER, SERVER_SPEC = "llama-server (default)", "llama-server + ngram-simple"
# One request: decode tokens/s as the server times it, tokens, drafted, accepted.
Sample = tuple[float, int, int, int]
# One batch of streams: aggregate tokens/s over the wall time, and its requests.
Batch = tuple[float, list[Sample]]

serving = load("bench_serving", REPO / "bench" / "serving.py")


def request(url: str, arm: str, prompt: str, tokens: int) -> Sample:
    """One streamed greedy request: (decode tokens/s as the server times it, tokens, drafted,
    accepted). The servers' own timings, not the client's: llama-server streams the tokens of
    a verified draft together, so the time between the first and last streamed token would
    leave out part of its decoding."""
    llorch = arm in (LLORCH, LLORCH_OFF)
    if llorch:
        route = "/execute"
        body: dict[str, Any] = {"job_id": f"spec-{time.monotonic_ns()}", "max_tokens": tokens}
        if arm == LLORCH_OFF:
            body["speculative"] = False  # the default arm says nothing: the server decides
    else:
        route, body = "/completion", {"n_predict": tokens, "ignore_eos": True, "stream": True}
    body |= {"prompt": prompt, "temperature": 0.0}
    rate = float("nan")
    n = drafted = accepted = 0
    with httpx.stream("POST", url + route, json=body, timeout=None) as response:
        response.raise_for_status()
        for line in response.iter_lines():
            if not line.startswith("data: "):
                continue
            event = json.loads(line[6:])
            kind = event["type"] if llorch else ("end" if event["stop"] else "token")
            if kind == "metrics":
                rate = event["tokens_per_sec"]  # tokens_out / time from the first to the end
                drafted, accepted = event["drafted"], event["accepted"]
            elif kind == "end":
                if llorch:
                    n = event["tokens_out"]
                else:
                    timings = event["timings"]  # generation after the prompt
                    n, rate = timings["predicted_n"], timings["predicted_per_second"]
                    drafted = timings.get("draft_n", 0)
                    accepted = timings.get("draft_n_accepted", 0)
            elif kind == "error":
                raise RuntimeError(f"{arm}: {event}")
    return rate, n, drafted, accepted


def batch(url: str, arm: str, prompt: str, tokens: int, streams: int) -> Batch:
    """`streams` copies of the request at once: generated tokens over the wall time of the
    batch (prompts included, the same for every arm), and each request's sample."""
    started = time.perf_counter()
    with ThreadPoolExecutor(streams) as pool:
        samples = list(pool.map(lambda _: request(url, arm, prompt, tokens), range(streams)))
    wall = time.perf_counter() - started
    return sum(s[1] for s in samples) / wall, samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="GGUF (default: the default model)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--tokens", type=int, default=192)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--streams", default="1,4,16", help="comma-separated stream counts")
    parser.add_argument("--no-llama-server", action="store_true")
    parser.add_argument("--doc", action="store_true", help="write docs/BENCHMARKS.md's section")
    ns = parser.parse_args()
    stream_counts = [int(x) for x in ns.streams.split(",")]
    path = resolve_model(ns.model)
    started = datetime.now(UTC)
    load_before = " ".join(f"{x:.2f}" for x in os.getloadavg())
    logs = Path(tempfile.mkdtemp(prefix="llorch-spec-"))
    t, ctx, slots = str(ns.threads), 1024, max(stream_counts)
    servers: dict[str, Any] = {}  # bench/serving.py's Server
    try:
        port = serving.decode.free_port()
        # llorch's defaults but for the sizes: speculation is whatever it does by default.
        cmd = [sys.executable, "-m", "llorch.cli", "serve", "--model", str(path), "--port",
               str(port), "--threads", t, "--parallel", str(slots),
               "--ctx-size", str(ctx)]  # fmt: skip
        servers[LLORCH] = servers[LLORCH_OFF] = serving.start(LLORCH, cmd, port, "/ready", logs)
        binary = None
        if not ns.no_llama_server:
            version = serving.backend.LLAMA_CPP_PYTHON.split("==")[1]
            built = serving.backend.cache_dir() / "llama-server" / version / "build" / "bin"
            binary = built / "llama-server" if (built / "llama-server").exists() else None
        if binary is not None:
            # -c is the whole context, shared by the slots: as much per slot as llorch's.
            base = [str(binary), "-m", str(path), "--host", "127.0.0.1", "-t", t, "-tb", t,
                    "-np", str(slots), "-c", str(ctx * slots), "--swa-full"]  # fmt: skip
            for arm, extra in ((SERVER, []), (SERVER_SPEC, ["--spec-type", "ngram-simple"])):
                port = serving.decode.free_port()
                servers[arm] = serving.start(arm, [*base, "--port", str(port), *extra], port,
                                             "/health", logs)  # fmt: skip
        arms = list(servers)
        results: dict[tuple[int, str], dict[str, list[Batch]]] = {
            (n, task): {a: [] for a in arms} for n in stream_counts for task in TASKS
        }
        for arm in arms:  # warm-up
            request(servers[arm].url, arm, TASKS["free"], 8)
        for r in range(ns.rounds):
            for (n, task), by_arm in results.items():
                for arm in arms[r % len(arms) :] + arms[: r % len(arms)]:
                    got = batch(servers[arm].url, arm, TASKS[task], ns.tokens, n)
                    by_arm[arm].append(got)
                    drafted, accepted = sum(s[2] for s in got[1]), sum(s[3] for s in got[1])
                    print(f"[spec] round {r + 1} x{n:<2} {task:8} {arm:28} {got[0]:6.1f} "
                          f"tokens/s drafted {drafted:5} accepted {accepted:5}",
                          flush=True)  # fmt: skip
    finally:
        for server in {id(s): s for s in servers.values()}.values():
            server.proc.terminate()
            server.proc.wait(30)
    load_after = " ".join(f"{x:.2f}" for x in os.getloadavg())
    text = section(ns, results, path, started, (load_before, load_after), binary is not None)
    print(text)
    if ns.doc:
        write_section(text, BEGIN, END)


def _med(values: list[float]) -> str:
    return f"{statistics.median(values):.1f} [{min(values):.1f}, {max(values):.1f}]"


def section(
    ns: argparse.Namespace,
    results: dict[tuple[int, str], dict[str, list[Batch]]],
    path: Path,
    started: datetime,
    load: tuple[str, str],
    with_server: bool,
) -> str:
    lines = [BEGIN, "## Speculative decoding: llorch's default against llama-server's", ""]
    lines += [
        f"Generated by `.venv/bin/python bench/spec.py --doc` on {started:%Y-%m-%d %H:%M} UTC; "
        f"model `{path.name}`, threads {ns.threads}, {ns.tokens} greedy tokens per request, "
        f"{ns.rounds} rounds; machine: {os.cpu_count()} cores, shared; load average before "
        f"{load[0]}, after {load[1]}.",
        "",
        "Cells: aggregate tokens/s of the streams (generated tokens over the wall time of the "
        "batch, prompts included), median of the rounds [min, max]; decode tokens/s per "
        "request as each server times it (llorch's `tokens_per_sec`, llama-server's "
        "`predicted_per_second`), median; draft tokens accepted / verified (each server's "
        "counts), summed over the rounds.",
        "",
        "| streams | task | path | tokens/s | vs llama-server | per request | accepted / drafted |",
        "|---|---|---|---|---|---|---|",
    ]
    ratios: dict[tuple[int, str], float] = {}
    for (n, task), by_arm in results.items():
        reference = SERVER if with_server else LLORCH_OFF
        base = statistics.median(b[0] for b in by_arm[reference])
        for arm, batches in by_arm.items():
            rates = [b[0] for b in batches]
            samples = [s for b in batches for s in b[1]]
            ratio = statistics.median(rates) / base
            if arm == LLORCH:
                ratios[n, task] = ratio
            drafted, accepted = sum(s[2] for s in samples), sum(s[3] for s in samples)
            counts = f"{accepted} / {drafted}" if drafted else "-"
            per = statistics.median(s[0] for s in samples)
            lines.append(
                f"| {n} | {task} | {arm} | {_med(rates)} | {ratio:.2f}x | {per:.1f} | {counts} |"
            )
    against = "llama-server's default" if with_server else "llorch without speculation"
    lines += ["", f"Targets (#23), llorch's default against {against}:", ""]
    for (n, task), got in ratios.items():
        want = (1.3 if task != "free" else 1.0) if n == 1 else 1.0
        verdict = "met" if got >= want else "**missed**"
        lines.append(f"- {n} stream(s), {task}: {got:.2f}x (target ≥ {want}x), {verdict}")
    lines += [
        "",
        f"- llorch: its defaults (`--spec auto`) but `--parallel {max(n for n, _ in results)} "
        "--ctx-size 1024`; one worker serves both llorch rows (the request's `speculative` "
        "field, false for the row without). Under auto a sequence drafts by prompt lookup "
        "(12-token matches, drafts of up to 48 tokens) only where the step's measured cost "
        "and the sequence's recent acceptance expect more tokens per second.",
        "- Every verified draft position costs a row of logits over Gemma 3's 262,144-token "
        "vocabulary, which is most of this 270M model's work per token; a rejected draft is "
        "paid for in full.",
        "- `quotes` asks for a summary quoting the passage; this 270M model paraphrases more "
        "than it quotes, so neither server finds much to draft there.",
    ]
    if with_server:
        lines.append(
            "- llama-server (`-np` as many slots, `-c` 1024 per slot, `--swa-full`, "
            "`ignore_eos`), plain (its default) and with `--spec-type ngram-simple`."
        )
    else:
        lines.append(
            "- llama-server was not compared in this run (no binary built from the same "
            "llama.cpp in the cache; bench/serving.py builds one): ratios are against llorch "
            "without speculation."
        )
    lines += [
        "- A draft changes the batch's shape, so float rounding differs from the plain run: "
        "at a near tie the greedy output can leave the plain path (with either server), and "
        "the text after that, and how much of it repeats the prompt, differs. Compare the "
        "accepted counts before the speeds.",
        "- The machine is shared with other work: rounds differ by 10% or more, so read the "
        "ratios with the [min, max] spread.",
    ]
    return "\n".join([*lines, END])


if __name__ == "__main__":
    main()
