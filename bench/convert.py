"""Conversion benchmark: llorch against llama.cpp's own converter on the same checkpoints.

    .venv/bin/python bench/convert.py --anchor DIR [--work DIR] [--batch-sources 3] [--out FILE]

DIR is llama.cpp's source tree as the llama-cpp-python sdist ships it (`pip download --no-deps
--no-binary :all: llama-cpp-python==0.3.36`, unpacked: `<sdist>/vendor/llama.cpp`); its
`convert_hf_to_gguf.py` runs with this interpreter (torch needed) and its own gguf-py.

1. One model: a random-weight Llama of a real shape (0.49B parameters, BF16, 3 shards, built
   here with numpy and a hand-written safetensors header), converted to F16 and Q8_0 by
   `llorch convert` (with its tokenizer verification, and with --no-verify) and by
   `convert_hf_to_gguf.py`. Wall time and peak RSS of each process (its own and its children's,
   from wait4).
2. A batch: N smaller sources x (f16, q8_0, q4_k_m): `llorch convert-batch DIR --jobs 1`
   against a shell loop of the anchor's convert to F16 plus llama.cpp's quantizer for the two
   others. No llama-quantize binary ships with llama-cpp-python, so the anchor's quantizer is
   the same library call, `llama_cpp.llama_model_quantize`, run from Python per file.

Prints a Markdown table, writes the figures as JSON to --out, and with --doc puts the table
into docs/BENCHMARKS.md as its "Conversion" section (between markers, replacing the previous
one; bench/serving.py keeps the section when it rewrites the file). Not a test: timings depend
on the machine and its load.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from benchlib import write_section

# The test tree's tokenizer builders, as `tests.convert.conftest` from the repository root.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

MODEL = {  # a 0.49B Llama: 32000 x 2048 embeddings, 7 layers
    "hidden_size": 2048,
    "intermediate_size": 5632,
    "num_hidden_layers": 7,
    "num_attention_heads": 16,
    "num_key_value_heads": 16,
    "vocab_size": 32000,
}
SMALL = {**MODEL, "hidden_size": 1024, "intermediate_size": 2816, "num_hidden_layers": 6}
QUANTIZE = (
    "import sys, llama_cpp\n"
    "p = llama_cpp.llama_model_quantize_default_params()\n"
    "p.ftype = getattr(llama_cpp, 'LLAMA_FTYPE_MOSTLY_' + sys.argv[3].upper())\n"
    "sys.exit(llama_cpp.llama_model_quantize(sys.argv[1].encode(), sys.argv[2].encode(), p))\n"
)


def _bf16(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """Random BF16 values as uint16 (the upper half of float32, rounded to nearest)."""
    f = (rng.standard_normal(shape, dtype=np.float32) * 0.02).view(np.uint32)
    return ((f + 0x7FFF + ((f >> 16) & 1)) >> 16).astype(np.uint16)


def _write_safetensors(path: Path, tensors: dict[str, np.ndarray]) -> None:
    header: dict[str, Any] = {}
    offset = 0
    for name, data in tensors.items():
        header[name] = {
            "dtype": "BF16",
            "shape": list(data.shape),
            "data_offsets": [offset, offset + data.nbytes],
        }
        offset += data.nbytes
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    with path.open("wb") as f:
        f.write(len(raw).to_bytes(8, "little"))
        f.write(raw)
        for data in tensors.values():
            data.tofile(f)


def build(folder: Path, cfg: dict[str, int], shards: int, seed: int) -> Path:
    """A Llama checkpoint with random BF16 weights, `shards` files and an index."""
    from tests.convert.conftest import make_spm

    if (folder / "config.json").is_file():
        return folder
    folder.mkdir(parents=True)
    make_spm(folder)
    rng = np.random.default_rng(seed)
    h, ff, n_vocab = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"]
    kv = h // cfg["num_attention_heads"] * cfg["num_key_value_heads"]
    shapes: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (n_vocab, h)}
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        shapes |= {
            p + "input_layernorm.weight": (h,),
            p + "self_attn.q_proj.weight": (h, h),
            p + "self_attn.k_proj.weight": (kv, h),
            p + "self_attn.v_proj.weight": (kv, h),
            p + "self_attn.o_proj.weight": (h, h),
            p + "post_attention_layernorm.weight": (h,),
            p + "mlp.gate_proj.weight": (ff, h),
            p + "mlp.up_proj.weight": (ff, h),
            p + "mlp.down_proj.weight": (h, ff),
        }
    shapes |= {"model.norm.weight": (h,), "lm_head.weight": (n_vocab, h)}
    names = list(shapes)
    per = -(-len(names) // shards)
    index: dict[str, str] = {}
    for s in range(shards):
        file = f"model-{s + 1:05d}-of-{shards:05d}.safetensors"
        part = {n: _bf16(rng, shapes[n]) for n in names[s * per : (s + 1) * per]}
        _write_safetensors(folder / file, part)
        index |= {n: file for n in part}
    total = sum(2 * int(np.prod(s)) for s in shapes.values())
    (folder / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": index})
    )
    config = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        **cfg,
        "max_position_embeddings": 2048,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "tie_word_embeddings": False,
        "torch_dtype": "bfloat16",
        "bos_token_id": 1,
        "eos_token_id": 2,
    }
    (folder / "config.json").write_text(json.dumps(config))
    return folder


# Run by a fresh interpreter that imports nothing else: Linux carries a process's peak RSS
# across fork and exec into what wait4 reports, so the command must not be forked from this
# process, which holds the checkpoint it built.
_LAUNCHER = (
    "import json, os, subprocess, sys, time\n"
    "t0 = time.monotonic()\n"
    "proc = subprocess.Popen(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)\n"
    "err = proc.stderr.read()\n"
    "_, status, usage = os.wait4(proc.pid, 0)\n"
    "print(json.dumps({'seconds': time.monotonic() - t0, 'kib': usage.ru_maxrss,\n"
    "                  'rc': os.waitstatus_to_exitcode(status), 'err': err.decode()[-2000:]}))\n"
)


def measure(cmd: list[str], env: dict[str, str] | None = None) -> dict[str, float]:
    """Wall seconds and peak RSS (MiB) of a command and every process it waited for."""
    out = subprocess.run(
        [sys.executable, "-c", _LAUNCHER, *cmd], env=env, capture_output=True, check=True
    )
    result = json.loads(out.stdout)
    if result["rc"] != 0:
        raise RuntimeError(f"{cmd[:4]} failed ({result['rc']}): {result['err']}")
    return {"seconds": round(result["seconds"], 2), "peak_mib": round(result["kib"] / 1024, 1)}


def single(args: argparse.Namespace, work: Path) -> list[dict[str, Any]]:
    src = build(work / "llama-0.5b", MODEL, shards=3, seed=0)
    llorch = [sys.executable, "-m", "llorch.cli", "convert", str(src), "--force"]
    anchor = [sys.executable, str(args.anchor / "convert_hf_to_gguf.py"), str(src)]
    rows = []
    for outtype in ("f16", "q8_0"):
        out = work / f"out-{outtype}.gguf"
        runs = [
            ("llorch", [*llorch, "-o", str(out), "--outtype", outtype]),
            ("llorch --no-verify", [*llorch, "-o", str(out), "--outtype", outtype, "--no-verify"]),
            ("convert_hf_to_gguf.py", [*anchor, "--outfile", str(out), "--outtype", outtype]),
        ]
        for name, cmd in runs:
            result = measure(cmd)
            rows.append({"case": f"0.49B BF16 -> {outtype.upper()}", "tool": name, **result})
            print(rows[-1], flush=True)
            out.unlink()
    return rows


def batch(args: argparse.Namespace, work: Path) -> list[dict[str, Any]]:
    n = args.batch_sources
    sources = work / "batch-src"
    for i in range(n):
        build(sources / f"llama-small-{i}", SMALL, shards=1, seed=10 + i)
    types = ("f16", "q8_0", "q4_k_m")
    out = work / "batch-llorch"
    shutil.rmtree(out, ignore_errors=True)
    llorch = [sys.executable, "-m", "llorch.cli", "convert-batch", str(sources), "--out", str(out)]
    llorch += ["--outtypes", ",".join(types), "--jobs", "1", "--json"]
    rows = [{"case": f"batch {n} x 3", "tool": "llorch convert-batch", **measure(llorch)}]
    print(rows[-1], flush=True)
    anchor_out = work / "batch-anchor"
    shutil.rmtree(anchor_out, ignore_errors=True)
    anchor_out.mkdir()
    script = args.anchor / "convert_hf_to_gguf.py"
    loop = (
        f'for src in {sources}/*/; do name=$(basename "$src"); '
        f'"{sys.executable}" "{script}" "$src" --outfile "{anchor_out}/$name-f16.gguf" '
        "--outtype f16 || exit 1; "
        f'for t in {" ".join(types[1:])}; do "{sys.executable}" -c "$QUANTIZE" '
        f'"{anchor_out}/$name-f16.gguf" "{anchor_out}/$name-$t.gguf" "$t" || exit 1; done; done'
    )
    env = {**os.environ, "QUANTIZE": QUANTIZE}
    rows.append(
        {"case": f"batch {n} x 3", "tool": "anchor loop", **measure(["bash", "-c", loop], env)}
    )
    print(rows[-1], flush=True)
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    lines = ["| case | tool | wall (s) | peak RSS (MiB) | wall / anchor | RSS / anchor |"]
    lines.append("|---|---|---|---|---|---|")
    anchors = {r["case"]: r for r in rows if r["tool"] in ("convert_hf_to_gguf.py", "anchor loop")}
    for r in rows:
        a = anchors[r["case"]]
        lines.append(
            f"| {r['case']} | {r['tool']} | {r['seconds']:.1f} | {r['peak_mib']:.0f} | "
            f"{r['seconds'] / a['seconds']:.2f} | {r['peak_mib'] / a['peak_mib']:.2f} |"
        )
    return "\n".join(lines)


BEGIN, END = "<!-- bench/convert.py -->", "<!-- end bench/convert.py -->"


def section(rows: list[dict[str, Any]], n: int, started: str, load: tuple[str, str]) -> str:
    return "\n".join(
        [
            BEGIN,
            "## Conversion",
            "",
            f"Generated by `.venv/bin/python bench/convert.py --anchor <sdist>/vendor/llama.cpp "
            f"--doc` on {started}; llama-cpp-python 0.3.36's llama.cpp "
            "(`convert_hf_to_gguf.py` with torch, its own gguf-py). Machine: "
            f"{os.cpu_count()} cores, shared; load average before {load[0]}, after {load[1]}.",
            "",
            table(rows),
            "",
            "- 0.49B: random BF16 Llama (32000 x 2048 embeddings, 7 layers), 3 shards. `llorch` "
            "includes its tokenizer verification (llama.cpp loads the vocabulary and tokenizes "
            "the corpus) and llama.cpp's metadata load check; `--no-verify` leaves out the first.",
            f"- batch: {n} sources (a 0.14B Llama each: hidden 1024, 6 layers) x f16, q8_0, "
            "q4_k_m. llorch: `convert-batch --jobs 1` (F16 written once, the others quantized "
            "from it, each output checked and its tokenizer verified). Anchor: a bash loop of "
            "`convert_hf_to_gguf.py --outtype f16` and, for q8_0 and q4_k_m, "
            "`llama_cpp.llama_model_quantize` from Python (llama-cpp-python ships no "
            "llama-quantize binary; the call is what llama-quantize runs).",
            "- llorch writes each tensor in blocks of 256 Ki values, converted by a pool of "
            "threads (one per core, at most 4) while the main thread writes; a tensor no "
            "family transform touches is read block by block from the checkpoint. Its peak RSS "
            "is mostly fixed costs (interpreter, numpy, gguf-py, tokenizer and llama.cpp "
            "libraries) plus the float32 copies of transformed tensors (Llama's Q and K).",
            "- Peak RSS: the largest process of the run (wait4's ru_maxrss, children included).",
            "- One run per row on a shared, loaded machine: differences under ~20% are noise.",
            targets(rows),
            END,
        ]
    )


def targets(rows: list[dict[str, Any]]) -> str:
    """The issue's per-model targets against the worst llorch (verified) row."""
    anchors = {r["case"]: r for r in rows if r["tool"] == "convert_hf_to_gguf.py"}
    ours = [r for r in rows if r["tool"] == "llorch" and r["case"] in anchors]
    if not ours:
        return ""
    wall = max(r["seconds"] / anchors[r["case"]]["seconds"] for r in ours)
    rss = max(r["peak_mib"] / anchors[r["case"]]["peak_mib"] for r in ours)
    verdict = {True: "met", False: "not met"}
    return (
        f"- Targets per model (#8): wall <= 0.5x the anchor's: worst {wall:.2f}x, "
        f"{verdict[wall <= 0.5]}; peak RSS <= 0.35x: worst {rss:.2f}x, {verdict[rss <= 0.35]}."
    )


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--anchor", type=Path, required=True, help="llama.cpp source tree")
    p.add_argument("--work", type=Path, default=Path("/tmp/llorch-bench-convert"))
    p.add_argument("--batch-sources", type=int, default=3)
    p.add_argument("--skip-single", action="store_true")
    p.add_argument("--skip-batch", action="store_true")
    p.add_argument("--out", type=Path)
    p.add_argument("--doc", action="store_true", help="write the table into docs/BENCHMARKS.md")
    args = p.parse_args()
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    load_before = " ".join(f"{x:.2f}" for x in os.getloadavg())
    args.work.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    rows = [] if args.skip_single else single(args, args.work)
    if not args.skip_batch:
        rows += batch(args, args.work)
    print(table(rows))
    if args.doc:
        load_after = " ".join(f"{x:.2f}" for x in os.getloadavg())
        write_section(
            section(rows, args.batch_sources, started, (load_before, load_after)), BEGIN, END
        )
    if args.out:
        args.out.write_text(json.dumps({"date": time.strftime("%Y-%m-%d"), "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
