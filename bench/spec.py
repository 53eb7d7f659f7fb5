"""Speculative decoding side by side: llorch with and without it, and llama-server with and
without its n-gram speculation, single stream.

    .venv/bin/python bench/spec.py [--model PATH] [--threads N] [--tokens 192] [--rounds 5]
                                   [--no-llama-server] [--doc]

Three tasks, greedy:
  grounded  rewrite a given code block with one name changed (the answer repeats the input,
            which prompt lookup can draft)
  quotes    summarise a given passage, quoting its sentences (grounded too)
  free      continue a story (little to look up)
One llorch worker serves both arms (the request's `speculative` field picks one); llama-server
runs twice, plain and with `--spec-type ngram-simple`, when a binary built from the same
llama.cpp is in the cache (bench/serving.py builds it). Every round visits every arm once per
task, in an order that rotates. Prints a table; with --doc, writes it into docs/BENCHMARKS.md
between its markers (bench/serving.py keeps the section).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
from benchlib import REPO, load, write_section

from llorch.worker.models import resolve_model

BEGIN, END = "<!-- bench/spec.py -->", "<!-- end bench/spec.py -->"

CODE = """def total_price(items, tax_rate):
    subtotal = 0
    for item in items:
        subtotal += item.price * item.quantity
    tax = subtotal * tax_rate
    return subtotal + tax


def average_price(items):
    if not items:
        return 0
    return sum(item.price for item in items) / len(items)


def most_expensive(items):
    best = None
    for item in items:
        if best is None or item.price > best.price:
            best = item
    return best
"""
PASSAGE = (
    "The lighthouse on the northern cape was built in 1874 from granite quarried on the island "
    "itself. Its lamp burned paraffin until 1931, when the keepers installed an electric lamp "
    "powered by a diesel generator. The last keeper left in 1989, and since then the light has "
    "been automatic, checked twice a year by engineers who arrive by boat. In winter storms the "
    "waves reach the gallery forty metres above the sea, and the tower sways by a few "
    "centimetres. Visitors may climb the 212 steps on summer weekends, when volunteers from the "
    "village open the door and tell the story of the keepers and their families.\n"
)
TASKS = {
    "grounded": "Rewrite the following Python code, renaming the variable `subtotal` to `net`."
    f"\n\n```python\n{CODE}```\n\nRewritten code:\n\n```python\n",
    "quotes": "Read the passage, then summarise it in three points, each quoting the sentence "
    f"of the passage it comes from word for word.\n\nPassage:\n{PASSAGE}\nSummary:\n\n1. ",
    "free": "Once upon a time, in a small village at the edge of a great forest, there lived",
}
LLORCH, LLORCH_SPEC = "llorch", "llorch + ngram"
Sample = tuple[float, int, int, int]  # decode tokens/s, tokens, drafted, accepted
SERVER, SERVER_SPEC = "llama-server", "llama-server + ngram-simple"


serving = load("bench_serving", REPO / "bench" / "serving.py")


def request(url: str, arm: str, prompt: str, tokens: int) -> Sample:
    """One streamed greedy request: (decode tokens/s as the server times it, tokens, drafted,
    accepted). The servers' own timings, not the client's: llama-server streams the tokens of
    a verified draft together, so the time between the first and last streamed token would
    leave out part of its decoding."""
    llorch = arm in (LLORCH, LLORCH_SPEC)
    if llorch:
        route = "/execute"
        body = {"job_id": f"spec-{time.monotonic_ns()}", "max_tokens": tokens}
        body["speculative"] = arm == LLORCH_SPEC
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="GGUF (default: the default model)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--tokens", type=int, default=192)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--no-llama-server", action="store_true")
    parser.add_argument("--doc", action="store_true", help="write docs/BENCHMARKS.md's section")
    ns = parser.parse_args()
    path = resolve_model(ns.model)
    started = datetime.now(UTC)
    load_before = " ".join(f"{x:.2f}" for x in os.getloadavg())
    logs = Path(tempfile.mkdtemp(prefix="llorch-spec-"))
    t, ctx = str(ns.threads), "1024"
    servers: dict[str, Any] = {}  # bench/serving.py's Server
    try:
        port = serving.decode.free_port()
        cmd = [sys.executable, "-m", "llorch.cli", "serve", "--model", str(path), "--port",
               str(port), "--threads", t, "--parallel", "1", "--ctx-size", ctx]  # fmt: skip
        servers[LLORCH] = servers[LLORCH_SPEC] = serving.start(LLORCH, cmd, port, "/ready", logs)
        binary = None
        if not ns.no_llama_server:
            version = serving.backend.LLAMA_CPP_PYTHON.split("==")[1]
            built = serving.backend.cache_dir() / "llama-server" / version / "build" / "bin"
            binary = built / "llama-server" if (built / "llama-server").exists() else None
        if binary is not None:
            base = [str(binary), "-m", str(path), "--host", "127.0.0.1", "-t", t, "-tb", t,
                    "-np", "1", "-c", ctx, "--swa-full"]  # fmt: skip
            for arm, extra in ((SERVER, []), (SERVER_SPEC, ["--spec-type", "ngram-simple"])):
                port = serving.decode.free_port()
                servers[arm] = serving.start(arm, [*base, "--port", str(port), *extra], port,
                                             "/health", logs)  # fmt: skip
        arms = list(servers)
        results: dict[str, dict[str, list[Sample]]] = {t: {a: [] for a in arms} for t in TASKS}
        for arm in arms:  # warm-up
            request(servers[arm].url, arm, TASKS["free"], 8)
        for r in range(ns.rounds):
            for task, prompt in TASKS.items():
                for arm in arms[r % len(arms) :] + arms[: r % len(arms)]:
                    url = servers[arm].url
                    sample = request(url, arm, prompt, ns.tokens)
                    results[task][arm].append(sample)
                    print(f"[spec] round {r + 1} {task:8} {arm:28} {sample[0]:6.1f} tokens/s "
                          f"drafted {sample[2]:4} accepted {sample[3]:4}", flush=True)  # fmt: skip
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
    results: dict[str, dict[str, list[Sample]]],
    path: Path,
    started: datetime,
    load: tuple[str, str],
    with_server: bool,
) -> str:
    lines = [BEGIN, "## Speculative decoding, single stream", ""]
    lines += [
        f"Generated by `.venv/bin/python bench/spec.py --doc` on {started:%Y-%m-%d %H:%M} UTC; "
        f"model `{path.name}`, threads {ns.threads}, {ns.tokens} greedy tokens per request, "
        f"{ns.rounds} rounds; machine: {os.cpu_count()} cores, shared; load average before "
        f"{load[0]}, after {load[1]}.",
        "",
        "Cells: decode tokens/s as each server times it (llorch's `tokens_per_sec`, "
        "llama-server's `predicted_per_second`: generation after the prompt; llama-server "
        "streams a verified draft's tokens together, so client-side gaps between streamed "
        "tokens would flatter it), median of the rounds [min, max]; draft tokens accepted / "
        "verified (each server's counts), summed over the rounds.",
        "",
        "| task | path | decode tokens/s | vs llorch without | accepted / drafted |",
        "|---|---|---|---|---|",
    ]
    ratios: dict[tuple[str, str], float] = {}
    medians: dict[tuple[str, str], float] = {}
    for task, by_arm in results.items():
        base = statistics.median(s[0] for s in by_arm[LLORCH])
        for arm, samples in by_arm.items():
            rates = [s[0] for s in samples]
            ratio = statistics.median(rates) / base
            ratios[task, arm] = ratio
            medians[task, arm] = statistics.median(rates)
            drafted, accepted = sum(s[2] for s in samples), sum(s[3] for s in samples)
            counts = f"{accepted} / {drafted}" if drafted else "-"
            lines.append(f"| {task} | {arm} | {_med(rates)} | {ratio:.2f}x | {counts} |")
    lines += ["", "Targets (#10):", ""]
    # The targets are for the rewriting task; `quotes` is reported beside it.
    targets = [
        ("grounded, llorch + ngram ≥ 1.5x llorch without", ratios["grounded", LLORCH_SPEC], 1.5),
        ("free text, llorch + ngram ≥ 0.97x llorch without", ratios["free", LLORCH_SPEC], 0.97),
    ]
    if with_server:
        # tokens/s as a user sees them: llorch's speculation against llama-server's
        mine, theirs = medians["grounded", LLORCH_SPEC], medians["grounded", SERVER_SPEC]
        targets.append(("grounded, llorch + ngram ≥ 1.0x llama-server + ngram", mine / theirs, 1.0))
    for what, got, want in targets:
        lines.append(f"- {what}: {got:.2f}x, " + ("met" if got >= want else "**missed**"))
    lines += [
        "",
        "- One llorch worker (`--parallel 1 --ctx-size 1024`) serves both llorch rows; the "
        "request's `speculative` field picks the arm. Prompt lookup: the last 12 tokens looked "
        "up earlier in the sequence, drafts of the 12 to 48 tokens that followed them (the "
        "parameters of llama.cpp's ngram-simple, which llama-server runs here).",
        "- `quotes` asks for a summary quoting the passage; this 270M model paraphrases more "
        "than it quotes, so neither server finds much to draft there.",
        "- Every verified draft position costs a row of logits over Gemma 3's 262,144-token "
        "vocabulary, which is most of this 270M model's work per token; a rejected draft is "
        "paid for in full, so the gain hangs on how much of the output repeats the input.",
    ]
    if with_server:
        lines.append(
            "- llama-server (`-np 1 -c 1024 --swa-full`, `ignore_eos`), plain and with "
            "`--spec-type ngram-simple` at its defaults."
        )
    else:
        lines.append(
            "- llama-server was not compared in this run (no binary built from the same "
            "llama.cpp in the cache; bench/serving.py builds one)."
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
