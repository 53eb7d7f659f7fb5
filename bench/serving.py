"""Serving speed side by side: llorch vs llama-server vs llama-cpp-python's server.

    .venv/bin/python bench/serving.py [--model PATH] [--threads N] [--tokens 128] [--rounds 3]
                                      [--concurrency 1,2,4,8,16] [--ctx-size 512]

One process tree, one model, one thread count, one greedy prompt. It measures
  single stream  decode tokens/s and time to first token of llorch (POST /execute), of
                 llama.cpp's low-level API called directly (bench/decode.py's direct()) and of
                 llama-server built from the llama.cpp that llama-cpp-python vendors;
  concurrency    aggregate tokens/s of N simultaneous streams (generated tokens / wall time of
                 the batch) for llorch --parallel N, llama-server -np N and
                 `python -m llama_cpp.server` (one request at a time).
All servers are started up front, each on its own port; only one is exercised at a time, and
every round visits them in turn (the order rotates) so that drift of the machine hits all alike.
Writes docs/BENCHMARKS.md and docs/benchmarks.png. Needs the bench-only packages matplotlib,
sse-starlette, starlette-context and pydantic-settings in the venv.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import logging
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import httpx
from benchlib import REPO, load

from llorch.worker.models import resolve_model

# llama-server as the cpu preset builds llama.cpp (-march=native, OpenMP), statically linked;
# no libcurl or OpenSSL (the model is a local file), no web UI (it would be downloaded).
SERVER_CMAKE = ["-DCMAKE_BUILD_TYPE=Release", "-DGGML_NATIVE=ON", "-DGGML_OPENMP=ON",
                "-DBUILD_SHARED_LIBS=OFF", "-DLLAMA_BUILD_SERVER=ON", "-DLLAMA_BUILD_TESTS=OFF",
                "-DLLAMA_BUILD_EXAMPLES=OFF", "-DLLAMA_CURL=OFF", "-DLLAMA_OPENSSL=OFF",
                "-DLLAMA_BUILD_UI=OFF", "-DLLAMA_USE_PREBUILT_UI=OFF"]  # fmt: skip
LLORCH, SERVER, LCP, DIRECT = "llorch", "llama-server", "llama-cpp-python server", "direct"
_counter = itertools.count()


decode = load("bench_decode", REPO / "bench" / "decode.py")
backend = load("llorch_build_backend", REPO / "build" / "backend.py")
BASE_PROMPT: str = decode.PROMPT
logging.getLogger("llama-cpp-python").setLevel(logging.ERROR)  # the direct loop's native log


def llama_server_binary() -> Path:
    """llama-server from llama-cpp-python's vendored llama.cpp, compiled once into the cache."""
    version = backend.LLAMA_CPP_PYTHON.split("==")[1]
    base = backend.cache_dir() / "llama-server" / version
    binary = base / "build" / "bin" / "llama-server"
    if binary.exists():
        return binary
    print(
        f"[serving] no llama-server in {base}: compiling it once from the llama.cpp that "
        f"llama-cpp-python {version} vendors (about 6-10 minutes on two cores)",
        flush=True,
    )
    source = backend.sdist_source(sys.executable) / "vendor" / "llama.cpp"
    cmd = ["cmake", "-S", str(source), "-B", str(base / "build"), *SERVER_CMAKE]
    if shutil.which("ninja"):
        cmd += ["-G", "Ninja"]
    subprocess.run(cmd, check=True)
    jobs = str(os.cpu_count() or 1)
    build = ["cmake", "--build", str(base / "build"), "--target", "llama-server", "-j", jobs]
    subprocess.run(build, check=True)
    return binary


def prompt() -> str:
    """The benchmark prompt behind a unique number of fixed length, so that no server can
    reuse a previous request's prompt from its cache (every request reads its whole prompt)."""
    return f"({next(_counter):05d}) {BASE_PROMPT}"


@dataclass
class Server:
    name: str
    url: str
    proc: subprocess.Popen[bytes]
    cmd: list[str]


def start(name: str, cmd: list[str], port: int, probe: str, logs: Path) -> Server:
    """Runs `cmd` (which listens on `port`) until GET `probe` answers 200."""
    log = logs / f"{name.replace(' ', '_')}-{port}.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if httpx.get(url + probe, timeout=5).status_code == 200:
                return Server(name, url, proc, cmd)
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise SystemExit(f"{name} did not become ready; log:\n{log.read_text()[-3000:]}")


@dataclass
class Sample:
    ttft: float  # seconds from sending the request to the first token
    tps: float  # decode tokens/s from the first token to the last
    tokens: int  # generated tokens, as the server itself counts them


def _rate(tokens: int, first: float, last: float) -> float:
    return (tokens - 1) / (last - first) if tokens > 1 and last > first else float("nan")


async def sse_request(client: httpx.AsyncClient, url: str, n_tokens: int, llorch: bool) -> Sample:
    """One streamed greedy request to llorch's /execute or llama-server's /completion."""
    if llorch:
        route, body = "/execute", {"job_id": f"bench-{next(_counter)}", "max_tokens": n_tokens}
    else:
        route, body = "/completion", {"n_predict": n_tokens, "ignore_eos": True, "stream": True}
    body |= {"prompt": prompt(), "temperature": 0.0}
    t0 = time.perf_counter()
    first = last = 0.0
    tokens = 0
    async with client.stream("POST", url + route, json=body) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            if not line.startswith("data: "):
                continue
            event = json.loads(line[6:])
            kind = event["type"] if llorch else ("end" if event["stop"] else "token")
            if kind == "token":
                last = time.perf_counter()
                first = first or last
            elif kind == "end":
                tokens = event["tokens_out"] if llorch else event["timings"]["predicted_n"]
            elif kind == "error":
                raise RuntimeError(f"llorch: {event}")
    return Sample(first - t0, _rate(tokens, first, last), tokens)


async def lcp_request(client: httpx.AsyncClient, url: str, n_tokens: int) -> Sample:
    body = {"prompt": prompt(), "max_tokens": n_tokens, "temperature": 0.0}
    body["repeat_penalty"] = 1.0  # plain greedy, like the others
    response = await client.post(f"{url}/v1/completions", json=body)
    response.raise_for_status()
    tokens = response.json()["usage"]["completion_tokens"]
    return Sample(float("nan"), float("nan"), tokens)


Request = Callable[[httpx.AsyncClient, str, int], Awaitable[Sample]]
REQUESTS: dict[str, Request] = {
    LLORCH: lambda client, url, n: sse_request(client, url, n, llorch=True),
    SERVER: lambda client, url, n: sse_request(client, url, n, llorch=False),
    LCP: lcp_request,
}


async def _batch(name: str, url: str, streams: int, n_tokens: int) -> tuple[float, list[Sample]]:
    limits = httpx.Limits(max_connections=streams + 4)
    async with httpx.AsyncClient(timeout=httpx.Timeout(None), limits=limits) as client:
        t0 = time.perf_counter()
        jobs = [REQUESTS[name](client, url, n_tokens) for _ in range(streams)]
        samples = await asyncio.gather(*jobs)
        wall = time.perf_counter() - t0
    return sum(s.tokens for s in samples) / wall, list(samples)


def batch(name: str, url: str, streams: int, n_tokens: int) -> tuple[float, list[Sample]]:
    """Aggregate tokens/s of `streams` simultaneous requests, and each request's sample."""
    time.sleep(0.5)  # let the previous server's threads go idle
    return asyncio.run(_batch(name, url, streams, n_tokens))


def direct(path: Path, threads: int, n_tokens: int, ctx_size: int) -> Sample:
    original = decode.PROMPT
    setattr(decode, "PROMPT", prompt())  # noqa: B010 - direct() reads its module's prompt
    try:
        ttft, tps = decode.direct(path, threads, n_tokens, ctx_size)
    finally:
        setattr(decode, "PROMPT", original)  # noqa: B010
    return Sample(ttft, tps, n_tokens)


def rotate(items: list[str], k: int) -> list[str]:
    k %= len(items)
    return items[k:] + items[:k]


def med(values: list[float]) -> str:
    return f"{statistics.median(values):.1f} [{min(values):.1f}, {max(values):.1f}]"


def machine(load_before: str, load_after: str) -> list[str]:
    cpuinfo, meminfo = Path("/proc/cpuinfo"), Path("/proc/meminfo")
    text = cpuinfo.read_text() if cpuinfo.exists() else ""
    fields = dict(ln.split(":", 1) for ln in text.split("\n\n")[0].splitlines() if ":" in ln)
    cpu = {k.strip(): v.strip() for k, v in fields.items()}
    mem = f"{int(meminfo.read_text().split()[1]) / 2**20:.0f} GiB" if meminfo.exists() else "?"
    return [
        f"machine: nproc {os.cpu_count()}, {cpu.get('model name', platform.processor())} "
        f"(family {cpu.get('cpu family', '?')}, model {cpu.get('model', '?')}), "
        f"{mem} RAM, {platform.system()} {platform.release()}",
        f"load average (1, 5, 15 min) before the run: {load_before}; after it: {load_after} "
        "(the run itself keeps the cores busy)",
    ]


def plot(
    single: dict[str, list[Sample]], agg: dict[str, dict[int, list[float]]], out: Path
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    names = list(single)
    left.bar(names, [statistics.median(s.tps for s in single[n]) for n in names],
             color=["#999999", "#1f77b4", "#ff7f0e"][: len(names)])  # fmt: skip
    left.set_ylabel("decode tokens/s")
    left.set_title("single stream")
    for name, color in ((LLORCH, "#1f77b4"), (SERVER, "#ff7f0e"), (LCP, "#2ca02c")):
        xs = sorted(agg[name])
        right.plot(xs, [statistics.median(agg[name][x]) for x in xs], "o-", label=name, color=color)
    right.set_xscale("log", base=2)
    right.set_xticks(sorted(agg[LLORCH]), [str(x) for x in sorted(agg[LLORCH])])
    right.set_xlabel("concurrent streams")
    right.set_ylabel("aggregate tokens/s")
    right.set_title("concurrency (median of rounds)")
    right.legend()
    right.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=110)


def report(
    ns: argparse.Namespace,
    single: dict[str, list[Sample]],  # single-stream samples by path, one per round
    agg: dict[str, dict[int, list[float]]],  # aggregate tokens/s by server, streams, round
    short: dict[str, int],  # streams that ended before max_tokens, by server
    header: list[str],  # the run's facts, one bullet each
    commands: list[str],
) -> str:
    direct_tps = statistics.median(s.tps for s in single[DIRECT])
    args = " ".join(["bench/serving.py", *sys.argv[1:]])
    lines = ["# Benchmarks", "", f"Generated by `.venv/bin/python {args}`; do not edit.", ""]
    lines += [f"- {fact}" for fact in header]
    lines += ["", "Cells: median of the rounds [min, max].", "", "## Single stream", ""]
    lines += [
        "| path | decode tokens/s | vs direct | time to first token (ms) |",
        "|---|---|---|---|",
    ]
    for name, samples in single.items():
        tps, ttft = [s.tps for s in samples], [s.ttft * 1000 for s in samples]
        ratio = statistics.median(tps) / direct_tps
        lines.append(f"| {name} | {med(tps)} | {ratio:.3f}x | {med(ttft)} |")
    lines += ["", "## Aggregate tokens/s at N concurrent streams", ""]
    lines += [f"| streams | {LLORCH} | {SERVER} | {LCP} | llorch / llama-server | llorch / {LCP} |"]
    lines += ["|---|---|---|---|---|---|"]
    for n in ns.concurrency:
        a, b, c = (statistics.median(agg[k][n]) for k in (LLORCH, SERVER, LCP))
        cells = " | ".join(med(agg[k][n]) for k in (LLORCH, SERVER, LCP))
        lines.append(f"| {n} | {cells} | {a / b:.2f}x | {a / c:.2f}x |")
    one = statistics.median(s.tps for s in single[LLORCH]) / direct_tps
    targets = [("single stream, llorch ≥ 0.97x direct", one, 0.97)]
    if 8 in ns.concurrency:
        a, b, c = (statistics.median(agg[k][8]) for k in (LLORCH, SERVER, LCP))
        targets += [("8 streams, llorch ≥ 1.0x llama-server", a / b, 1.0)]
        targets += [(f"8 streams, llorch ≥ 1.8x {LCP}", a / c, 1.8)]
    lines += ["", "## Targets", ""]
    for what, got, want in targets:
        lines.append(f"- {what}: {got:.3f}x, " + ("met" if got >= want else "**missed**"))
    lines += ["", "![single stream and concurrency](benchmarks.png)", "", "## Commands", ""]
    lines += [f"For {ns.concurrency[-1]} streams (the others differ in `--parallel`, `-np`, `-c`;"]
    lines += ["the ports are picked free at each run):", ""] + [f"- `{c}`" for c in commands]
    lines += ["", "## Method", ""] + [f"- {note}" for note in NOTES]
    counts = ", ".join(f"{k}: {v}" for k, v in short.items() if v)
    lines.append(f"- Streams that ended before {ns.tokens} tokens: {counts or 'none'}.")
    return "\n".join(lines) + "\n"


NOTES = [
    "All servers are started before measuring, each on its own port, and only one is exercised "
    "at a time. Each round visits every server (and the direct loop) once per concurrency level, "
    "in an order that rotates between rounds; a warm-up request precedes the rounds.",
    "Every request's prompt starts with a unique five-digit number, so no server reuses a cached "
    "prompt prefix from an earlier request: all of them read the whole prompt each time.",
    "Decode tokens/s counts from the first streamed token to the last (prompt reading left out); "
    "time to first token runs from sending the request (for `direct`, from the prompt decode).",
    "Aggregate tokens/s = tokens generated by the N streams (as each server reports them: "
    "llorch's `tokens_out`, llama-server's `timings.predicted_n`, the OpenAI `usage`) / wall "
    "time from sending the N requests together to the last one's end, prompts included.",
    "llorch and llama-server stream (SSE) and are parsed by the client; llama-cpp-python's server "
    "is asked without streaming (less work for it and for the client). It serves one request at "
    "a time, so its aggregate is its single-stream speed.",
    "Same KV layout for llorch and llama-server: one KV stream per slot (`--no-kv-unified`), each "
    "slot holding the same context (llorch `--ctx-size` is per slot, llama-server `-c` is the "
    "total, so it gets N x per slot), full sliding-window cache (`--swa-full`, as llorch does). "
    "Flash attention is llama.cpp's `auto` in llorch, the direct loop and llama-server; "
    "llama-cpp-python's server defaults to off, so it is passed `--flash_attn true`.",
    "llama-server gets `ignore_eos`; llorch and llama-cpp-python's server have no such switch, so "
    "the prompt is a base-model prompt that runs to max_tokens (checked below when it does not).",
    "The client (this script: asyncio and httpx) runs on the same cores as the servers; reading "
    "the SSE streams costs llorch and llama-server alike.",
    "The machine is shared with other work; the run was started when it was idle (load average "
    "above). Rounds still differ by 10% or more here, so a ratio that is within the [min, max] "
    "spread of a target can land on either side of it from one run to the next.",
]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="GGUF (default: the default model)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--ctx-size", type=int, default=512, help="context per slot")
    parser.add_argument("--concurrency", default="1,2,4,8,16")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "BENCHMARKS.md")
    ns = parser.parse_args()
    ns.concurrency = sorted({int(x) for x in ns.concurrency.split(",")})
    if ns.concurrency[0] != 1:
        parser.error("--concurrency must include 1 (the single-stream servers)")
    return ns


def start_all(
    ns: argparse.Namespace, path: Path, logs: Path, servers: dict[str, dict[int, Server]]
) -> None:
    """Starts every server into `servers` (filled as they come up, so a failure can stop the
    ones already running)."""
    binary = llama_server_binary()
    t, c = str(ns.threads), ns.ctx_size
    for n in ns.concurrency:
        port = decode.free_port()
        cmd = [sys.executable, "-m", "llorch.cli", "serve", "--model", str(path), "--port",
               str(port), "--threads", t, "--parallel", str(n), "--ctx-size", str(c)]  # fmt: skip
        servers[LLORCH][n] = start(LLORCH, cmd, port, "/ready", logs)
        port = decode.free_port()
        cmd = [str(binary), "-m", str(path), "--host", "127.0.0.1", "--port", str(port),
               "-t", t, "-tb", t, "-np", str(n), "-c", str(n * c), "--no-kv-unified",
               "--swa-full"]  # fmt: skip
        servers[SERVER][n] = start(SERVER, cmd, port, "/health", logs)
    port = decode.free_port()
    cmd = [sys.executable, "-m", "llama_cpp.server", "--model", str(path), "--host", "127.0.0.1",
           "--port", str(port), "--n_threads", t, "--n_threads_batch", t, "--n_ctx", str(c),
           "--flash_attn", "true", "--verbose", "false"]  # fmt: skip
    lcp = start(LCP, cmd, port, "/v1/models", logs)
    servers[LCP].update({n: lcp for n in ns.concurrency})


def main() -> None:
    ns = parse_args()
    started = time.monotonic()
    path = resolve_model(ns.model)
    load_before = " ".join(f"{x:.2f}" for x in os.getloadavg())
    logs = Path(tempfile.mkdtemp(prefix="llorch-serving-"))
    servers: dict[str, dict[int, Server]] = {LLORCH: {}, SERVER: {}, LCP: {}}
    single: dict[str, list[Sample]] = {DIRECT: [], LLORCH: [], SERVER: []}
    agg: dict[str, dict[int, list[float]]] = {k: {n: [] for n in ns.concurrency} for k in servers}
    short: dict[str, int] = {}
    try:
        start_all(ns, path, logs, servers)
        version = subprocess.run(
            [servers[SERVER][1].cmd[0], "--version"], capture_output=True, text=True, check=False
        )
        lines = (version.stdout + version.stderr).splitlines()
        server_version = next((ln for ln in lines if ln.startswith("version")), "?")
        for name, by_n in servers.items():
            for n, server in by_n.items():
                batch(name, server.url, n, 8)  # warm-up
        for r in range(ns.rounds):
            print(f"[serving] round {r + 1}/{ns.rounds}", flush=True)
            for name in rotate([DIRECT, LLORCH, SERVER], r):
                if name == DIRECT:
                    single[DIRECT].append(direct(path, ns.threads, ns.tokens, ns.ctx_size))
                else:
                    single[name] += batch(name, servers[name][1].url, 1, ns.tokens)[1]
            for n in ns.concurrency:
                for name in rotate(list(servers), r + n):
                    rate, samples = batch(name, servers[name][n].url, n, ns.tokens)
                    agg[name][n].append(rate)
                    short[name] = short.get(name, 0) + sum(s.tokens < ns.tokens for s in samples)
                    print(f"[serving]   {n:>2} streams {name}: {rate:.1f} tokens/s", flush=True)
    finally:
        procs = {id(s.proc): s.proc for by_n in servers.values() for s in by_n.values()}
        for proc in procs.values():
            proc.terminate()
            proc.wait(30)
        shutil.rmtree(logs, ignore_errors=True)
    home = str(Path.home())
    commands = [
        " ".join(servers[k][ns.concurrency[-1]].cmd)
        .replace(sys.executable, ".venv/bin/python")
        .replace(home, "~")
        for k in (LLORCH, SERVER, LCP)
    ]
    load_after = " ".join(f"{x:.2f}" for x in os.getloadavg())
    header = [
        f"date: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC; the run took "
        f"{time.monotonic() - started:.0f} s",
        *machine(load_before, load_after),
        f"model: `{path.name}`; threads: {ns.threads}; a {len(BASE_PROMPT)}-character prompt "
        f"and {ns.tokens} greedy tokens per request; context per slot: {ns.ctx_size}; "
        f"rounds: {ns.rounds}",
        f"llama-cpp-python {backend.LLAMA_CPP_PYTHON.split('==')[1]}; llama-server "
        f"{server_version}, compiled from the llama.cpp that llama-cpp-python vendors",
    ]
    ns.out.parent.mkdir(parents=True, exist_ok=True)
    text = report(ns, single, agg, short, header, commands)
    kept = ns.out.read_text() if ns.out.is_file() else ""
    # The sections of bench/convert.py and bench/spec.py stay.
    sections = [
        kept.index(m) for m in ("<!-- bench/convert.py -->", "<!-- bench/spec.py -->") if m in kept
    ]
    if sections:
        text = text.rstrip("\n") + "\n\n" + kept[min(sections) :]
    ns.out.write_text(text)
    plot(single, agg, ns.out.parent / "benchmarks.png")
    print(ns.out.read_text())


if __name__ == "__main__":
    main()
