"""Soak and storm: N clients x M minutes of mixed traffic against one `llorch serve`.

    .venv/bin/python bench/soak.py [--clients 6] [--minutes 10] [--model PATH] [--parallel 4]
                                   [--seed 0] [--warmup 30] [--out FILE]

Starts its own worker on a free loopback port, as bench/serving.py does. Each client loops over
random requests until the time is up: `/execute` streams read to the end, cancelled with `DELETE
/jobs/{id}` after a random number of tokens, or dropped by closing the connection; `/v1/completions`
and `/v1/chat/completions`, streamed and not; bad requests; `/tokenize`; probes. It reports
- requests by outcome: finished per stop_reason (finish_reason on /v1), cancelled, disconnected,
  error events by code, 4xx and 5xx by status;
- lost: an answer that never came (transport error, 60 s without a byte), a stream read to its
  end without its `end`/`error` event or `[DONE]`; unexpected: a status other than the one the
  request must get, a job still in flight once its client has been gone max(1 s, 4 token gaps);
- cancel latency from sending the DELETE to reading the stream's `end` event, p50/p95, next to
  the gap between two tokens of a stream (a cancel lands at the next decode step);
- the worker's VmRSS after the warm-up and at the end, and `/capacity` once the traffic is over.
Targets (#12): 0 lost, 0 5xx, memory growth < 5 % over 10 minutes, cancel p95 < 0.5 s. Prints a
table, writes the figures as JSON to --out, exits 1 when a target is missed or a slot stays busy.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import sys
import tempfile
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
from decode import free_port  # bench/ is the script's folder, first on sys.path
from serving import start

from llorch.worker.models import resolve_model

PROMPTS = ["Question: What is the capital of France?\nAnswer:", "The three primary colors are",
           "Once upon a time, in a small village by the sea,", "def fibonacci(n):\n",
           "A recipe for bread: first, take", "Les étoiles brillent ce soir, et"]  # fmt: skip
JOB = {"job_id": "bad", "prompt": "x", "max_tokens": 4}
BAD = [  # (method, path, JSON body or raw text, the status it must get)
    ("POST", "/execute", JOB | {"temperature": 9}, 400),
    ("POST", "/execute", JOB | {"max_tokens": 0, "top_p": 2}, 400),
    ("POST", "/execute", JOB | {"unknown_field": 1}, 400),
    ("POST", "/execute", JOB | {"max_tokens": 10**6}, 400),  # does not fit the context
    ("POST", "/execute", '{"job_id": "bad", "prompt": ', 400),
    ("POST", "/v1/completions", {"prompt": "x", "max_tokens": -1}, 400),
    ("POST", "/v1/completions", {"prompt": "x", "temperature": "hot"}, 400),
    ("POST", "/v1/chat/completions", {"messages": "hi"}, 400),
    ("GET", "/v1/models/no-such-model", None, 404),
    ("DELETE", "/jobs/no-such-job", None, 404),
    ("GET", "/no/such/path", None, 404),
    ("PUT", "/execute", None, 405),
]
PROBES = ["/health", "/ready", "/capacity", "/metrics", "/v1/models"]
KINDS = {"execute": 22, "execute-cancel": 14, "execute-disconnect": 10, "completion": 9,
         "completion-stream": 9, "chat": 7, "chat-stream": 7, "bad": 6, "tokenize": 6,
         "probe": 10}  # fmt: skip
FAILED = ("lost", "truncated", "unexpected", "5xx")


class Soak:
    """The clients' shared tally; each request kind is one method."""

    def __init__(self, client: httpx.AsyncClient, seed: int) -> None:
        self.client, self.seed, self.n = client, seed, 0
        self.outcomes: Counter[tuple[str, str]] = Counter()  # (kind, outcome)
        self.cancel_s: list[float] = []
        self.gaps: list[float] = []  # seconds between two consecutive tokens of /execute
        self.failures: list[dict[str, Any]] = []  # the requests behind FAILED outcomes

    def record(self, kind: str, outcome: str, sent: Any = None, detail: str = "") -> None:
        self.outcomes[kind, outcome] += 1
        if outcome.split(":")[0] in FAILED:
            text = sent if isinstance(sent, str) else json.dumps(sent)
            at = datetime.now(UTC).strftime("%H:%M:%S")
            self.failures.append(dict(kind=kind, outcome=outcome, at=at, request=text[:500],
                                      answer=detail[:1000]))  # fmt: skip
            print(f"[soak] {at} {kind} {outcome}: {text[:300]} -> {detail[:300]}", flush=True)

    def status(self, kind: str, response: httpx.Response, sent: Any, want: int = 200) -> None:
        code = response.status_code
        outcome = "ok" if code == want == 200 else f"{code // 100}xx:{code}"
        if code != want and code < 500:
            outcome = f"unexpected:{code}"
        self.record(kind, outcome, sent, response.text)

    async def client_loop(self, index: int, until: float) -> None:
        rng = random.Random(self.seed * 1000 + index)
        while time.monotonic() < until:
            kind = rng.choices(list(KINDS), list(KINDS.values()))[0]
            sent: list[Any] = []  # what the request sent, for the report if no answer comes
            try:
                await getattr(self, kind.replace("-", "_"))(kind, rng, sent)
            except httpx.TransportError as exc:  # timeouts included
                why = f"{type(exc).__name__}: {exc}; /capacity then: "
                try:  # what the worker was doing
                    why += (await self.client.get("/capacity", timeout=10)).text
                except httpx.TransportError as again:
                    why += f"no answer either ({type(again).__name__})"
                self.record(kind, "lost", sent[:1] or kind, why)
            except (ValueError, KeyError, IndexError) as exc:  # an answer not in its shape
                self.record(kind, "unexpected:malformed", sent[:1], f"{type(exc).__name__}: {exc}")

    async def execute(self, kind: str, rng: random.Random, sent: list[Any]) -> None:
        self.n += 1
        body: dict[str, Any] = {"job_id": f"soak-{self.seed}-{self.n}", "max_tokens": 400,
                                "prompt": rng.choice(PROMPTS), "seed": rng.randrange(2**32 - 1),
                                "temperature": rng.choice([0.0, 0.7, 1.0])}  # fmt: skip
        stop_after = rng.randint(0 if kind == "execute-disconnect" else 1, 16)
        if kind == "execute":  # read to the end: short, sometimes a stop sequence or a deadline
            stop_after, body["max_tokens"] = 10**9, rng.randint(1, 48)
            if rng.random() < 0.2:
                body["stop"] = [rng.choice([".", "\n", " the"])]
            if rng.random() < 0.1:
                body["timeout_ms"] = rng.randint(20, 400)
        sent.append(body)
        tokens, end, cancel_t0, deleted, last, gap = 0, None, 0.0, 0, 0.0, 0.0
        async with self.client.stream("POST", "/execute", json=body) as response:
            if response.status_code != 200:
                await response.aread()
                return self.status(kind, response, body)
            async for line in response.aiter_lines():
                event = json.loads(line[6:]) if line.startswith("data: ") else {"type": ""}
                if event["type"] == "token":
                    now, tokens = time.perf_counter(), tokens + 1
                    if last:
                        gap = now - last
                        self.gaps.append(gap)
                    last = now
                if event["type"] in ("end", "error"):
                    end = event
                    break
                if tokens >= stop_after and not cancel_t0 and event["type"]:
                    if kind == "execute-disconnect":
                        break  # leaving the block closes the connection mid-stream
                    cancel_t0 = time.perf_counter()
                    deleted = (await self.client.delete(f"/jobs/{body['job_id']}")).status_code
        if kind == "execute-disconnect" and end is None:
            wait = max(1.0, 4 * gap)  # time for the worker to see the closed connection
            await asyncio.sleep(wait)
            gone = await self.client.delete(f"/jobs/{body['job_id']}")
            left = "disconnected" if gone.status_code == 404 else "unexpected:job-left-running"
            detail = f"{tokens} tokens, last gap {gap:.3f} s; DELETE {wait:.1f} s after: "
            return self.record(kind, left, body, detail + gone.text)
        if end is None:
            return self.record(kind, "truncated", body, f"{tokens} tokens, no end/error event")
        if end["type"] == "error":  # only a deadline that passed is expected
            ok = end["code"] == "TIMEOUT" and "timeout_ms" in body
            outcome = f"error:{end['code']}" if ok else f"unexpected:error {end['code']}"
            return self.record(kind, outcome, body, json.dumps(end))
        if deleted not in (0, 202, 404):
            self.record(kind, f"unexpected:DELETE {deleted}", body)
        if end["stop_reason"] == "CANCELLED" and cancel_t0:
            self.cancel_s.append(time.perf_counter() - cancel_t0)
            return self.record(kind, "cancelled")
        self.record(kind, f"finished:{end['stop_reason']}")  # it ended before the DELETE

    execute_cancel = execute_disconnect = execute

    async def completion(self, kind: str, rng: random.Random, sent: list[Any]) -> None:
        chat, stream = kind.startswith("chat"), kind.endswith("stream")
        body: dict[str, Any] = {"model": "llorch", "stream": stream}
        body |= {"max_tokens": rng.randint(1, 32), "temperature": rng.choice([0.0, 0.8])}
        text = rng.choice(PROMPTS)
        body |= {"messages": [{"role": "user", "content": text}]} if chat else {"prompt": text}
        path = "/v1/chat/completions" if chat else "/v1/completions"
        sent.append(body)
        finish, done, error = None, False, None
        async with self.client.stream("POST", path, json=body) as response:
            if response.status_code != 200 or not stream:
                await response.aread()
            if response.status_code != 200:
                return self.status(kind, response, body)
            if not stream:
                return self.record(
                    kind, f"finished:{response.json()['choices'][0]['finish_reason']}"
                )
            async for line in response.aiter_lines():
                if line == "data: [DONE]":
                    done = True
                elif line.startswith("data: "):
                    chunk = json.loads(line[6:])
                    error = chunk.get("error", error)
                    for choice in chunk.get("choices", []):
                        finish = choice.get("finish_reason") or finish
        if error is not None:
            code = error.get("code") or error.get("type")
            return self.record(kind, f"unexpected:error {code}", body, json.dumps(error))
        if not done or finish is None:
            return self.record(kind, "truncated", body, f"[DONE]: {done}, finish: {finish}")
        self.record(kind, f"finished:{finish}")

    completion_stream = chat = chat_stream = completion

    async def bad(self, kind: str, rng: random.Random, sent: list[Any]) -> None:
        method, path, body, want = rng.choice(BAD)
        content = body if isinstance(body, str) else json.dumps(body) if body else None
        sent.append(f"{method} {path} {content or ''}")
        headers = {"content-type": "application/json"}
        response = await self.client.request(method, path, content=content, headers=headers)
        self.status(kind, response, sent[0], want)

    async def tokenize(self, kind: str, rng: random.Random, sent: list[Any]) -> None:
        sent.append(text := rng.choice(PROMPTS))
        response = await self.client.post("/tokenize", json={"content": text})
        if response.status_code != 200:
            return self.status(kind, response, text)
        back = await self.client.post("/detokenize", json=response.json())
        if back.status_code != 200 or text not in back.json()["content"]:
            return self.record(kind, f"unexpected:{back.status_code}", text, back.text)
        self.record(kind, "ok")

    async def probe(self, kind: str, rng: random.Random, sent: list[Any]) -> None:
        sent.append(path := rng.choice(PROBES))
        self.status(kind, await self.client.get(path), path)


def rss_kib(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(ln for ln in status.splitlines() if ln.startswith("VmRSS:")).split()[1])


def spread(xs: list[float]) -> dict[str, float]:
    """Count, median, 95th percentile and maximum of `xs`."""
    if len(xs) < 2:
        return {"n": len(xs), "p50": sum(xs), "p95": sum(xs), "max": sum(xs)}
    q = statistics.quantiles(xs, n=100, method="inclusive")
    return {"n": len(xs), "p50": q[49], "p95": q[94], "max": max(xs)}


async def soak(ns: argparse.Namespace, url: str, pid: int) -> dict[str, Any]:
    limits = httpx.Limits(max_connections=4 * ns.clients + 8)
    timeout = httpx.Timeout(60.0, connect=10.0)
    async with httpx.AsyncClient(base_url=url, timeout=timeout, limits=limits) as client:
        tally = Soak(client, ns.seed)
        until = time.monotonic() + ns.warmup + ns.minutes * 60
        rss: list[int] = []

        async def sample() -> None:  # every 10 s after the warm-up
            await asyncio.sleep(ns.warmup)
            while True:
                rss.append(rss_kib(pid))
                await asyncio.sleep(10)

        sampler = asyncio.create_task(sample())
        loops = [tally.client_loop(i, until) for i in range(ns.clients)]
        await asyncio.wait_for(asyncio.gather(*loops), ns.warmup + ns.minutes * 60 + 300)
        sampler.cancel()
        await asyncio.sleep(1.0)  # the last disconnected streams settle
        capacity = (await client.get("/capacity")).json()
    end = rss_kib(pid)
    start = rss[0] if rss else end
    by_outcome: Counter[str] = Counter()
    for (_, outcome), n in tally.outcomes.items():
        by_outcome[outcome] += n
    failed = {h: sum(n for o, n in by_outcome.items() if o.split(":")[0] == h) for h in FAILED}
    mem = dict(start=start, end=end, peak=max([end, *rss]), samples=rss)
    mem["growth_pct"] = 100.0 * (end - start) / start
    return {
        "requests": by_outcome.total(),
        "by_outcome": dict(sorted(by_outcome.items())),
        "by_kind": {f"{k} {o}": n for (k, o), n in sorted(tally.outcomes.items())},
        "lost_or_truncated": failed["lost"] + failed["truncated"],
        "unexpected": failed["unexpected"],
        "5xx": failed["5xx"],
        "cancel_s": spread(tally.cancel_s),
        "token_gap_s": spread(tally.gaps),
        "rss_kib": mem,
        "capacity_after": capacity,
        "failures": tally.failures[:100],
    }


def ms(x: dict[str, float]) -> str:
    return ", ".join(f"{k} {x[k] * 1000:.0f} ms" for k in ("p50", "p95", "max"))


def table(r: dict[str, Any]) -> str:
    c, g, m, cap = r["cancel_s"], r["token_gap_s"], r["rss_kib"], r["capacity_after"]
    return "\n".join([
        f"{r['date']}: {r['requests']} requests, {r['clients']} clients, {r['minutes']} min after "
        f"{r['warmup']} s of warm-up, --parallel {r['parallel']}, {r['model']}",
        "", "| outcome | requests |", "|---|---|",
        *(f"| {o} | {n} |" for o, n in r["by_outcome"].items()), "",
        f"lost or truncated: {r['lost_or_truncated']}; unexpected: {r['unexpected']}; "
        f"5xx: {r['5xx']}",
        f"cancel latency (n={c['n']}): {ms(c)}",
        f"gap between two tokens of an /execute stream: {ms(g)}",
        f"worker RSS: {m['start'] / 1024:.1f} MiB after the warm-up, {m['end'] / 1024:.1f} MiB at "
        f"the end ({m['growth_pct']:+.2f} %), peak {m['peak'] / 1024:.1f} MiB",
        f"/capacity after: slots busy {cap['slots']['busy']}/{cap['slots']['total']}, queue "
        f"{cap['queue']['depth']}, kv cells used {cap['kv']['used']}",
        f"load average (1, 5, 15 min): {r['load_before']} before, {r['load_after']} after",
    ])  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=6)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--model", default=None, help="GGUF (default: the default model)")
    parser.add_argument("--parallel", type=int, default=4, help="the worker's slots")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--warmup", type=float, default=30.0, help="seconds before RSS baseline")
    parser.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()) / "soak.json")
    ns = parser.parse_args()
    path, port = resolve_model(ns.model), free_port()
    logs = Path(tempfile.mkdtemp(prefix="llorch-soak-"))
    cmd = [sys.executable, "-m", "llorch.cli", "serve", "--model", str(path), "--host",
           "127.0.0.1", "--port", str(port), "--parallel", str(ns.parallel)]  # fmt: skip
    worker = start("llorch", cmd, port, "/ready", logs)
    log = next(logs.glob("*.log"))
    loaded = log.stat().st_size  # what the worker logs from here on is the soak's
    load_before = " ".join(f"{x:.2f}" for x in os.getloadavg())
    try:
        date = f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC"
        report = asyncio.run(soak(ns, worker.url, worker.proc.pid))
    finally:
        worker.proc.terminate()
        code = worker.proc.wait(60)
    with log.open("rb") as f:
        f.seek(loaded)
        lines = f.read().decode(errors="replace").splitlines()
    errors = [ln for ln in lines if any(w in ln for w in ("Traceback", "Error", "ERROR"))]
    report |= {"date": date, "command": " ".join(["bench/soak.py", *sys.argv[1:]]),
               "clients": ns.clients, "minutes": ns.minutes, "warmup": ns.warmup,
               "parallel": ns.parallel, "seed": ns.seed, "model": path.name,
               "worker_exit": code, "worker_log_errors": errors[:50], "load_before": load_before,
               "load_after": " ".join(f"{x:.2f}" for x in os.getloadavg())}  # fmt: skip
    ns.out.write_text(json.dumps(report, indent=2) + "\n")
    print(table(report))
    print(f"worker exit status {code}; error lines in its log: {len(errors)} ({log})")
    print(f"JSON: {ns.out}")
    cap = report["capacity_after"]
    met = [
        report["lost_or_truncated"] == report["unexpected"] == report["5xx"] == 0,
        cap["slots"]["busy"] == cap["queue"]["depth"] == 0,
        report["cancel_s"]["p95"] < 0.5 and report["rss_kib"]["growth_pct"] < 5.0,
    ]
    sys.exit(0 if all(met) else 1)


if __name__ == "__main__":
    main()
