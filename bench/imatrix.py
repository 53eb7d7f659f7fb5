"""Importance matrix: `llorch imatrix` against llama-imatrix on the same model and text.

    .venv/bin/python bench/imatrix.py [--model PATH] [--text FILE] [--chunk 128] [--chunks 8]
                                      [--threads N] [--rounds 3] [--build-tools]

llama-imatrix (and llama-quantize, llama-perplexity, which the tests use) are built from the
llama.cpp that llama-cpp-python vendors, with bench/serving.py's CMake options, into the same
build folder as its llama-server: only these targets, so the libraries already built there
are reused. --build-tools builds them and exits.

Each round runs both commands as processes, alternating which goes first, and takes the wall
time of each; the report is the median of the rounds and the ratio llorch / llama-imatrix
(target: at most 1.2). The two matrices are also compared (largest relative difference).
Not a test: timings depend on the machine and its load.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchlib import REPO, load

TOOLS = ("llama-imatrix", "llama-quantize", "llama-perplexity")


def tools_dir() -> Path:
    serving = load("bench_serving", REPO / "bench" / "serving.py")
    version = serving.backend.LLAMA_CPP_PYTHON.split("==")[1]
    return Path(serving.backend.cache_dir() / "llama-server" / version / "build")


def build_tools() -> Path:
    """llama-imatrix, llama-quantize and llama-perplexity, compiled once into the cache."""
    serving = load("bench_serving", REPO / "bench" / "serving.py")
    build = tools_dir()
    if not all((build / "bin" / t).exists() for t in TOOLS):
        if not (build / "CMakeCache.txt").exists():
            source = serving.backend.sdist_source(sys.executable) / "vendor" / "llama.cpp"
            cmd = ["cmake", "-S", str(source), "-B", str(build), *serving.SERVER_CMAKE]
            subprocess.run(cmd, check=True)
        jobs = str(os.cpu_count() or 1)
        subprocess.run(
            ["nice", "cmake", "--build", str(build), "--target", *TOOLS, "-j", jobs], check=True
        )
    return build / "bin"


def default_model() -> Path:
    return Path.home() / ".cache" / "llorch" / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"


def timed(cmd: list[str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", type=Path, default=default_model())
    ap.add_argument("--text", type=Path, default=REPO / "README.md")
    ap.add_argument("--chunk", type=int, default=128)
    ap.add_argument("--chunks", type=int, default=8)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--build-tools", action="store_true")
    args = ap.parse_args()
    bins = build_tools()
    if args.build_tools:
        print(bins)
        return 0
    from llorch.convert import imatrix

    work = Path(tempfile.mkdtemp(prefix="bench-imatrix-"))
    ours_out, ref_out = work / "ours.imatrix.gguf", work / "ref.imatrix.gguf"
    n = ["--chunks", str(args.chunks)]
    llorch = str(Path(sys.executable).parent / "llorch")
    ours = [llorch, "imatrix", str(args.model), str(args.text)]
    ours += ["-o", str(ours_out), "--chunk", str(args.chunk), "--threads", str(args.threads)]
    ours += ["--force", *n]
    ref = [str(bins / "llama-imatrix"), "-m", str(args.model), "-f", str(args.text)]
    ref += ["-o", str(ref_out), "-c", str(args.chunk), "-b", str(args.chunk), "--no-ppl"]
    ref += ["-t", str(args.threads), *n]
    times: dict[str, list[float]] = {"llorch": [], "llama-imatrix": []}
    for r in range(args.rounds):
        order = [("llorch", ours), ("llama-imatrix", ref)]
        for name, cmd in order if r % 2 == 0 else order[::-1]:
            times[name].append(timed(cmd))
    a, b = imatrix.load(ours_out), imatrix.load(ref_out)
    worst = 0.0
    for name, e in b.entries.items():
        diff = abs(a.entries[name].sums - e.sums).max() / max(abs(e.sums).max(), 1e-30)
        worst = max(worst, float(diff))
    med = {k: statistics.median(v) for k, v in times.items()}
    load1 = os.getloadavg()[0]
    print(f"model {args.model.name}, text {args.text.name}, {args.chunks} chunks of {args.chunk}")
    print(f"threads {args.threads}, rounds {args.rounds}, load average {load1:.1f}")
    for k, v in times.items():
        print(f"  {k:14s} median {med[k]:.2f}s  ({', '.join(f'{x:.2f}' for x in v)})")
    print(f"  ratio llorch / llama-imatrix: {med['llorch'] / med['llama-imatrix']:.2f}x")
    print(f"  largest relative difference of the sums: {worst:.2e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
