"""A publisher's batch: llorch convert-batch against the chain of llama.cpp's tools.

    .venv/bin/python bench/publish.py [--anchor DIR] [--work DIR] [--chunk 128] [--threads N]
                                      [--rounds N]

One source (a random-weight Llama built by bench/convert.py's `build`, SMALL below) made into
f16, q8_0, q4_k_m, iq4_xs and iq2_xxs with an importance matrix from a calibration text and
the quality of every quantized type measured on an evaluation text:
  llorch  `llorch convert-batch SRC --outtypes ... --imatrix CALIB --quality EVAL` (one
          process tree);
  anchor  `convert_hf_to_gguf.py` to F16, `llama-imatrix` on it, `llama-quantize --imatrix`
          per type, `llama-perplexity --kl-divergence-base` on the F16 and `--kl-divergence`
          per quantized type, run one after the other.
The tools are built by bench/imatrix.py (--build-tools); DIR is llama.cpp's source tree as the
llama-cpp-python sdist ships it (default: the one bench/serving.py unpacks). Wall time of each
side, and the ratio (target: llorch <= 0.8x the anchor); with --rounds N the two sides alternate
which goes first, every round is printed, and the medians are compared. Not a test: timings
depend on the machine and its load.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from benchlib import REPO, load

SMALL = {
    "hidden_size": 512,
    "intermediate_size": 1536,
    "num_hidden_layers": 4,
    "num_attention_heads": 8,
    "num_key_value_heads": 8,
    "vocab_size": 32000,
}
TYPES = ["f16", "q8_0", "q4_k_m", "iq4_xs", "iq2_xxs"]


def run(cmd: list[str]) -> None:
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def anchor_chain(args: argparse.Namespace, bins: Path, src: Path, out: Path, texts: Path) -> None:
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    f16 = out / "m-f16.gguf"
    script = args.anchor / "convert_hf_to_gguf.py"
    run([sys.executable, str(script), str(src), "--outfile", str(f16), "--outtype", "f16"])
    t, c = ["-t", str(args.threads)], ["-c", str(args.chunk), "-b", str(args.chunk)]
    imatrix = out / "m.imatrix.gguf"
    calib = ["-f", str(texts / "calib.txt"), "-o", str(imatrix), "--no-ppl"]
    run([str(bins / "llama-imatrix"), "-m", str(f16), *calib, *c, *t])
    base = out / "base.kld"
    evaluate = [str(bins / "llama-perplexity"), "-f", str(texts / "eval.txt"), *c, *t]
    run([*evaluate, "-m", str(f16), "--kl-divergence-base", str(base)])
    for q in TYPES[1:]:
        dst = out / f"m-{q}.gguf"
        quantize = [str(bins / "llama-quantize"), "--imatrix", str(imatrix)]
        run([*quantize, str(f16), str(dst), q, str(args.threads)])
        run([*evaluate, "-m", str(dst), "--kl-divergence-base", str(base), "--kl-divergence"])


def llorch_batch(args: argparse.Namespace, src: Path, out: Path, texts: Path) -> None:
    shutil.rmtree(out, ignore_errors=True)
    llorch = str(Path(sys.executable).parent / "llorch")
    chunk = str(args.chunk)
    imatrix = ["--imatrix", str(texts / "calib.txt"), "--imatrix-chunk", chunk]
    quality = ["--quality", str(texts / "eval.txt"), "--quality-chunk", chunk]
    types = ["--outtypes", ",".join(TYPES)]
    run([llorch, "convert-batch", str(src), "--out", str(out), *types, *imatrix, *quality])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--anchor", type=Path)
    ap.add_argument("--work", type=Path, default=Path("/tmp/llorch-bench-publish"))
    ap.add_argument("--chunk", type=int, default=128)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--text-bytes", type=int, default=12000, help="bytes of README per text")
    ap.add_argument("--hidden", type=int, default=SMALL["hidden_size"], help="model width")
    ap.add_argument("--layers", type=int, default=SMALL["num_hidden_layers"])
    ap.add_argument("--rounds", type=int, default=1, help="runs of each side, alternating")
    args = ap.parse_args()
    imatrix_bench = load("bench_imatrix", REPO / "bench" / "imatrix.py")
    convert_bench = load("bench_convert", REPO / "bench" / "convert.py")
    bins = imatrix_bench.build_tools()
    if args.anchor is None:
        serving = load("bench_serving", REPO / "bench" / "serving.py")
        args.anchor = serving.backend.sdist_source(sys.executable) / "vendor" / "llama.cpp"
    args.work.mkdir(parents=True, exist_ok=True)
    cfg = {
        **SMALL,
        "hidden_size": args.hidden,
        "intermediate_size": 3 * args.hidden,
        "num_hidden_layers": args.layers,
    }
    shutil.rmtree(args.work / "src", ignore_errors=True)
    src = convert_bench.build(args.work / "src" / "m", cfg, shards=1, seed=0)
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    texts = args.work / "texts"
    texts.mkdir(exist_ok=True)
    (texts / "calib.txt").write_text(readme[: args.text_bytes], encoding="utf-8")
    (texts / "eval.txt").write_text(readme[args.text_bytes : 2 * args.text_bytes], "utf-8")
    env_src = args.work / "src"
    sides = {
        "anchor": lambda: anchor_chain(args, bins, src, args.work / "anchor", texts),
        "llorch": lambda: llorch_batch(args, env_src, args.work / "llorch", texts),
    }
    times: dict[str, list[float]] = {name: [] for name in sides}
    load0 = os.getloadavg()
    for r in range(args.rounds):
        for name in sorted(sides, reverse=r % 2 == 1):  # anchor first in even rounds
            t0 = time.perf_counter()
            sides[name]()
            times[name].append(time.perf_counter() - t0)
        if args.rounds > 1:
            print(f"round {r + 1}: " + ", ".join(f"{k} {v[-1]:.1f}s" for k, v in times.items()))
    load1 = os.getloadavg()
    print(f"1 source ({cfg}) x {', '.join(TYPES)}; imatrix and quality chunks of {args.chunk}")
    loads = " ".join(f"{x:.2f}" for x in load0), " ".join(f"{x:.2f}" for x in load1)
    print(f"threads {args.threads}, load average {loads[0]} before, {loads[1]} at the end")
    median = {k: statistics.median(v) for k, v in times.items()}
    for k, v in median.items():
        spread = f" [{min(times[k]):.1f}, {max(times[k]):.1f}]" if args.rounds > 1 else ""
        print(f"  {k:7s} {v:.1f}s{spread}")
    print(f"  ratio llorch / anchor chain: {median['llorch'] / median['anchor']:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
