"""Decode speed on a GPU, side by side in one run, on a random-weight model of a real shape.

    bash bench/gpu.sh [--tokens 256] [--rounds 3] [--streams 8 32]   # sets up, then runs this
    .venv/bin/python bench/gpu.py --cpu --small          # the same run, tiny, on the CPU
    .venv/bin/python bench/gpu.py --doc-from DIR/gpu.md     # that run's tables into the doc

The model is written here, not carried: Llama-3.2-1B's shape (hidden 2048, 16 layers, 32 heads,
8 KV heads, FFN 8192, 128256-entry vocabulary, tied embeddings) with random weights, written
as F16 GGUF with gguf-py and quantized to Q4_K_M by llama.cpp's own quantizer. Its tokenizer
is a byte-level BPE vocabulary of the real size built from random merges: decode speed does not
depend on which tokens it holds, but the 128256 logits per token are what sampling reads.
Control tokens get zero embedding rows, so with tied embeddings their logit is 0 and neither
greedy decoding nor top-k ever picks one: no stream ends early at an end-of-generation token.

Three measurements, in-process (llorch's batch decoder, as the worker drives it, no HTTP):
  single stream   bench/decode.py's low-level loop (batch_get_one + a greedy sampler on the
                  CPU) against llorch's decoder with in-graph sampling on and off, greedy;
                  rounds interleaved, median reported
  8 / 32 streams  aggregate decode tokens/s with in-graph sampling on and off (temperature
                  0.8, top-k 40, top-p 0.95: a chain llama.cpp can sample inside the graph)
  speculation     prompt lookup on and off on bench/tasks.py's grounded task, greedy, with
                  CPU-side sampling (llorch never speculates on sequences sampled in the
                  graph); a random model does not copy its input: what drafts it accepts
                  come from its own loops
Decode speed counts from the first generated token to the last (prompt ingestion left out).
Prints markdown tables; writes gpu.md and gpu.json into --out (default $OUT) and, with --doc,
the section of docs/BENCHMARKS.md between its markers (or later, from gpu.md, --doc-from).
"""

from __future__ import annotations

import argparse
import faulthandler
import json
import os
import platform
import random
import statistics
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import gguf
import numpy as np
from benchlib import REPO, load, write_section
from tasks import TASKS

from llorch.atomic import atomic_output
from llorch.convert import llamacpp
from llorch.cpus import default_threads
from llorch.worker.backend import system
from llorch.worker.backend.llama import LlamaCppBackend
from llorch.worker.backend.protocol import (
    FinishEvent,
    GenerationRequest,
    LoadOptions,
    SamplingParams,
    SequenceFailed,
    SpecOptions,
    StopReason,
    TokenEvent,
)
from llorch.worker.backend.single import generate

BEGIN, END = "<!-- bench/gpu -->", "<!-- end bench/gpu -->"
N_SPECIAL = 256  # Llama 3's control tokens: the last 256 ids (128000 <|begin_of_text|>, ...)
GREEDY = SamplingParams(temperature=0.0)
SAMPLED = SamplingParams(temperature=0.8, top_k=40, top_p=0.95)


@dataclass(frozen=True)
class Shape:
    name: str
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    ffn: int
    vocab: int


# Llama-3.2-1B's config.json (meta-llama/Llama-3.2-1B); "small" only proves the script on a CPU.
SHAPES = {
    "1b": Shape("Llama-3.2-1B shape", 2048, 16, 32, 8, 8192, 128256),
    "small": Shape("small llama shape", 256, 2, 4, 2, 1024, 32000),
}


decode = load("bench_decode", REPO / "bench" / "decode.py")


# -- the model ---------------------------------------------------------------------------------


def byte_chars() -> list[str]:
    """GPT-2's byte-to-character table (its bytes_to_unicode): a byte-level BPE vocabulary
    spells every token in these 256 characters, and llama.cpp maps them back to bytes."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1)]
    keep += range(ord("®"), ord("ÿ") + 1)
    chars, extra = {}, 0
    for b in range(256):
        if b in keep:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + extra)
            extra += 1
    return [chars[b] for b in range(256)]


def bpe_vocab(n_vocab: int, seed: int) -> tuple[list[str], list[int], list[str]]:
    """Tokens, token types and merges: the 256 byte tokens, random merges of printable ASCII
    tokens up to n_vocab - 256, then 256 control tokens named as Llama 3 names them. Merged
    tokens are printable so that the random model's output is valid UTF-8 text."""
    rng = random.Random(seed)
    chars = byte_chars()
    tokens = list(chars)
    seen = set(tokens)
    pool = [chars[b] for b in range(0x20, 0x7F)] + [chars[0x0A]]  # printable, space, newline
    merges: list[str] = []
    while len(tokens) < n_vocab - N_SPECIAL:
        left, right = rng.choice(pool), rng.choice(pool)
        merged = left + right
        if merged in seen or len(merged) > 12:
            continue
        seen.add(merged)
        tokens.append(merged)
        pool.append(merged)
        merges.append(f"{left} {right}")
    names = ["<|begin_of_text|>", "<|end_of_text|>"]
    names += [f"<|reserved_special_token_{i}|>" for i in range(N_SPECIAL - 2)]
    types = [gguf.TokenType.NORMAL] * len(tokens) + [gguf.TokenType.CONTROL] * N_SPECIAL
    return tokens + names, [int(t) for t in types], merges


def tensor_specs(shape: Shape) -> list[tuple[str, tuple[int, ...]]]:
    """(GGUF name, numpy shape) of every tensor of a llama with tied embeddings, in the
    order llama.cpp's own converter writes them. Llama 3.2's rope_freqs (long-context RoPE
    scaling) is left out: it changes positions' angles, not the work of a decode step."""
    names = gguf.TENSOR_NAMES
    mt = gguf.MODEL_TENSOR
    head_dim = shape.hidden // shape.heads
    kv = shape.kv_heads * head_dim
    specs = [(names[mt.TOKEN_EMBD], (shape.vocab, shape.hidden))]
    for i in range(shape.layers):
        block = [
            (mt.ATTN_NORM, (shape.hidden,)),
            (mt.ATTN_Q, (shape.hidden, shape.hidden)),
            (mt.ATTN_K, (kv, shape.hidden)),
            (mt.ATTN_V, (kv, shape.hidden)),
            (mt.ATTN_OUT, (shape.hidden, shape.hidden)),
            (mt.FFN_NORM, (shape.hidden,)),
            (mt.FFN_GATE, (shape.ffn, shape.hidden)),
            (mt.FFN_UP, (shape.ffn, shape.hidden)),
            (mt.FFN_DOWN, (shape.hidden, shape.ffn)),
        ]
        specs += [(names[t].format(bid=i), dims) for t, dims in block]
    specs.append((names[mt.OUTPUT_NORM], (shape.hidden,)))
    return [(f"{name}.weight", dims) for name, dims in specs]


def write_f16(path: Path, shape: Shape, seed: int, threads: int) -> None:
    """A random-weight F16 GGUF, streamed tensor by tensor (gguf-py's writer states: header,
    KV, tensor infos, then data), through a temporary renamed on success."""
    tokens, types, merges = bpe_vocab(shape.vocab, seed)
    specs = tensor_specs(shape)
    with atomic_output(path) as tmp:
        writer = gguf.GGUFWriter(tmp, gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.LLAMA])
        writer.add_name(f"random {shape.name}")
        writer.add_context_length(131072)
        writer.add_embedding_length(shape.hidden)
        writer.add_block_count(shape.layers)
        writer.add_feed_forward_length(shape.ffn)
        writer.add_head_count(shape.heads)
        writer.add_head_count_kv(shape.kv_heads)
        writer.add_rope_dimension_count(shape.hidden // shape.heads)
        writer.add_rope_freq_base(500000.0)
        writer.add_layer_norm_rms_eps(1e-5)
        writer.add_vocab_size(shape.vocab)
        writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16)
        writer.add_tokenizer_model("gpt2")
        writer.add_tokenizer_pre("llama-bpe")  # Llama 3's pre-tokenizer regex
        writer.add_token_list(tokens)
        writer.add_token_types(types)
        writer.add_token_merges(merges)
        writer.add_bos_token_id(shape.vocab - N_SPECIAL)
        writer.add_eos_token_id(shape.vocab - N_SPECIAL + 1)
        writer.add_add_bos_token(True)
        for name, dims in specs:
            dtype = np.float16 if len(dims) == 2 else np.float32  # norms stay F32
            writer.add_tensor_info(
                name, dims, np.dtype(dtype), np.dtype(dtype).itemsize * int(np.prod(dims))
            )
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        seeds = np.random.SeedSequence(seed).spawn(len(specs))

        def make(item: tuple[tuple[str, tuple[int, ...]], np.random.SeedSequence]) -> np.ndarray:
            (name, dims), ss = item
            if len(dims) == 1:
                return np.ones(dims, dtype=np.float32)
            # numpy's generators release the GIL while filling: tensors are drawn in threads.
            values = np.random.default_rng(ss).standard_normal(dims, dtype=np.float32)
            values *= 0.02
            if name.startswith(gguf.TENSOR_NAMES[gguf.MODEL_TENSOR.TOKEN_EMBD]):
                values[shape.vocab - N_SPECIAL :] = 0.0  # see the module docstring
            return values.astype(np.float16)

        # map() keeps the order the tensor infos promised; the model's F16 weights (2.5 GB at
        # the 1B shape) may all be held at once, which a GPU machine's memory allows.
        with ThreadPoolExecutor(max(1, threads)) as pool:
            for array in pool.map(make, zip(specs, seeds, strict=True)):
                writer.write_tensor_data(array)
        writer.close()


def make_model(work: Path, shape: Shape, seed: int, threads: int) -> tuple[Path, float]:
    """The Q4_K_M model (made once per work folder) and the seconds it took to make."""
    work.mkdir(parents=True, exist_ok=True)
    key = "small" if shape is SHAPES["small"] else "1b"
    q4 = work / f"random-llama-{key}-seed{seed}-q4_k_m.gguf"
    if q4.is_file():
        return q4, 0.0
    t0 = time.perf_counter()
    f16 = work / f"random-llama-{key}-seed{seed}-f16.gguf"
    write_f16(f16, shape, seed, threads)
    size = f16.stat().st_size / 2**20
    print(f"wrote {f16.name} ({size:.0f} MiB) in {time.perf_counter() - t0:.1f} s")
    with atomic_output(q4) as tmp:
        llamacpp.quantize(f16, tmp, llamacpp.ftype_constants()["q4_k_m"], n_threads=threads)
    f16.unlink()
    seconds = time.perf_counter() - t0
    print(f"quantized to {q4.name} ({q4.stat().st_size / 2**20:.0f} MiB), {seconds:.1f} s in all")
    return q4, seconds


# -- measurements ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Run:
    tokens: int
    seconds: float  # from the first generated token to the last
    ttft: float  # from the request to its first token
    drafted: int = 0
    accepted: int = 0
    ended: str = StopReason.MAX_TOKENS.value

    @property
    def rate(self) -> float:
        return (self.tokens - 1) / self.seconds if self.seconds > 0 else float("nan")


def load(path: Path, ns: argparse.Namespace, parallel: int, ctx: int, in_graph: bool) -> Any:
    backend = LlamaCppBackend()
    options = LoadOptions(
        ctx_size=ctx,
        parallel=parallel,
        n_gpu_layers=ns.n_gpu_layers,
        threads=ns.threads,
        backend_sampling=in_graph,
        speculative=SpecOptions(),  # prompt lookup for the requests that ask for it
    )
    backend.load(path, options)
    return backend


def one(backend: Any, prompt: str, n: int, sampling: SamplingParams, spec: bool = False) -> Run:
    request = GenerationRequest(tuple(backend.tokenize(prompt)), n, sampling, speculative=spec)
    t0 = time.perf_counter()
    first = end = 0.0
    count = 0
    done: FinishEvent | None = None
    for event in generate(backend.decoder(), request):
        if isinstance(event, TokenEvent):
            count += 1
            end = time.perf_counter()
            if count == 1:
                first = end
        elif isinstance(event, FinishEvent):
            done = event
    assert done is not None  # generate() always ends with a FinishEvent
    return Run(count, end - first, first - t0, done.drafted, done.accepted, done.stop_reason)


def many(backend: Any, prompts: list[str], n: int) -> dict[str, float]:
    """All prompts at once through one decoder. Aggregate decode tokens/s over the steps
    after every stream has its first token (prompts are ingested in chunks over the first
    steps), and end to end (tokens over the whole time, prompts included)."""
    decoder = backend.decoder()
    t0 = time.perf_counter()
    for i, text in enumerate(prompts):
        sampling = SamplingParams(**{**asdict(SAMPLED), "seed": i})
        decoder.add(i, GenerationRequest(tuple(backend.tokenize(text)), n, sampling))
    first: dict[object, float] = {}
    steps: list[tuple[float, int]] = []  # (end of the step, tokens it produced)
    ended: dict[object, str] = {}
    total = 0
    while len(ended) < len(prompts):
        events = decoder.step()
        now = time.perf_counter()
        produced = 0
        for key, event in events:
            if isinstance(event, SequenceFailed):
                raise event.error
            if isinstance(event, TokenEvent):
                produced += 1
                first.setdefault(key, now)
            elif isinstance(event, FinishEvent):
                ended[key] = event.stop_reason
        steps.append((now, produced))
        total += produced
    start, end = max(first.values()), steps[-1][0]
    after = sum(count for at, count in steps if at > start)
    early = sorted({str(r) for r in ended.values()} - {StopReason.MAX_TOKENS.value})
    return {
        "decode_tok_s": after / (end - start) if end > start else float("nan"),
        "e2e_tok_s": total / (end - t0),
        "tokens": total,
        "ended_early": len([r for r in ended.values() if r != StopReason.MAX_TOKENS]),
        "early_reasons": ", ".join(early),
    }


def ctx_for(backend_tokens: int, n: int) -> int:
    # Room for the prompt (at most a token per byte, plus BOS), the tokens and a draft of 16.
    return 256 * -(-(backend_tokens + n + 32) // 256)


def single_stream(path: Path, ns: argparse.Namespace) -> dict[str, Any]:
    """decode.py's low-level loop against llorch's decoder (in-graph sampling on, off)."""
    ctx = ctx_for(len(decode.PROMPT.encode()), ns.tokens)
    arms: dict[str, list[tuple[float, float]]] = {"direct": [], "in-graph": [], "cpu": []}
    backends = {arm: load(path, ns, 1, ctx, arm == "in-graph") for arm in ("in-graph", "cpu")}
    try:
        for backend in backends.values():
            one(backend, decode.PROMPT, 8, GREEDY)  # warm-up
        for _ in range(ns.rounds):
            # decode.direct() loads the model with llama.cpp's defaults (every layer on the GPU).
            arms["direct"].append(decode.direct(path, ns.threads, ns.tokens, ctx))
            for arm, backend in backends.items():
                run = one(backend, decode.PROMPT, ns.tokens, GREEDY)
                arms[arm].append((run.ttft, run.rate))
    finally:
        for backend in backends.values():
            backend.close()
    return {
        arm: {
            "decode_tok_s": statistics.median(r[1] for r in runs),
            "ttft_ms": statistics.median(r[0] for r in runs) * 1000,
        }
        for arm, runs in arms.items()
    }


def concurrent(path: Path, ns: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {}
    # Distinct prompts: llorch reads a prompt shared by several requests only once.
    prompts = [f"Story {i}. {decode.PROMPT}" for i in range(max(ns.streams))]
    ctx = ctx_for(len(prompts[-1].encode()), ns.tokens)
    for n in ns.streams:
        for in_graph in (True, False):
            backend = load(path, ns, n, ctx, in_graph)
            try:
                many(backend, prompts[:n], 8)  # warm-up
                runs = [many(backend, prompts[:n], ns.tokens) for _ in range(ns.rounds)]
            finally:
                backend.close()
            best = sorted(runs, key=lambda r: r["decode_tok_s"])[len(runs) // 2]  # median
            out[f"{n} {'in-graph' if in_graph else 'cpu'}"] = best
            print(f"  {n} streams, in-graph {in_graph}: {best['decode_tok_s']:.0f} tokens/s")
    return out


def speculation(path: Path, ns: argparse.Namespace) -> dict[str, Any]:
    prompt = TASKS["grounded"]
    ctx = ctx_for(len(prompt.encode()), ns.tokens)
    backend = load(path, ns, 1, ctx, in_graph=False)
    runs: dict[bool, list[Run]] = {True: [], False: []}
    try:
        one(backend, prompt, 8, GREEDY)  # warm-up
        for i in range(ns.rounds):
            for spec in (i % 2 == 0, i % 2 != 0):  # alternate which arm goes first
                runs[spec].append(one(backend, prompt, ns.tokens, GREEDY, spec))
        prompt_tokens = len(backend.tokenize(prompt))
    finally:
        backend.close()
    out: dict[str, Any] = {"prompt_tokens": prompt_tokens}
    for spec, arm in runs.items():
        drafted, accepted = sum(r.drafted for r in arm), sum(r.accepted for r in arm)
        out["on" if spec else "off"] = {
            "decode_tok_s": statistics.median(r.rate for r in arm),
            "drafted": drafted,
            "accepted": accepted,
            "tokens": sum(r.tokens for r in arm),
        }
    return out


# -- report ------------------------------------------------------------------------------------


def report(res: dict[str, Any]) -> str:
    meta = res["meta"]
    lines = [
        BEGIN,
        "## GPU decode: single stream, 8 and 32 streams, in-graph sampling, speculation",
        "",
        f"`bash bench/gpu.sh` ({meta['date']}): {meta['model']}, on {meta['device']}, "
        f"n_gpu_layers {meta['n_gpu_layers']}, {meta['threads']} threads, llama.cpp via "
        f"llama-cpp-python {meta['llama_cpp']}; {meta['tokens']} tokens per stream, median of "
        f"{meta['rounds']} rounds; model made in {meta['model_seconds']:.0f} s, whole run "
        f"{meta['run_seconds']:.0f} s.",
    ]
    for name, table in (
        ("single", single_table),
        ("concurrent", concurrent_table),
        ("speculation", speculation_table),
    ):
        lines.append("")
        section = res.get(name, {"error": "not run"})
        if "error" in section:
            lines.append(f"{name}: failed ({section['error']})")
        else:
            lines += table(section, meta)
    lines += ["", "| target (#10) | measured | met |", "|---|---|---|"]
    for name, value, bound, unit in targets(res):
        if value is None:
            lines.append(f"| {name} | not measured | - |")
            continue
        met = ("yes" if value >= bound else "no") if meta["target_run"] else "-"
        lines.append(f"| {name} | {value:.2f}{unit} | {met} |")
    if not meta["target_run"]:
        lines.append("\nA small model on the CPU: the targets are for the 1B shape on a GPU.")
    return "\n".join([*lines, END])


def single_table(one_: dict[str, Any], meta: dict[str, Any]) -> list[str]:
    lines = [
        "Single stream, greedy (the worker's default here: "
        f"{'in-graph' if meta['default_in_graph'] else 'CPU-side'} sampling):",
        "",
        "| path | decode tokens/s | vs direct |",
        "|---|---|---|",
    ]
    names = {
        "direct": "low-level loop (bench/decode.py `direct`)",
        "in-graph": "llorch decoder, in-graph sampling",
        "cpu": "llorch decoder, CPU-side sampling",
    }
    base = one_["direct"]["decode_tok_s"]
    for arm, row in one_.items():
        # Time to first token stays in gpu.json only: the decoder's slot keeps the prompt
        # from the round before, so llorch's rows would skip its ingestion.
        rate = row["decode_tok_s"]
        lines.append(f"| {names[arm]} | {rate:.1f} | {rate / base:.3f}x |")
    return lines


def concurrent_table(conc: dict[str, Any], meta: dict[str, Any]) -> list[str]:
    lines = [
        "Concurrent streams (temperature 0.8, top-k 40, top-p 0.95), aggregate decode tokens/s "
        "once every stream has its first token; end to end counts prompt ingestion too:",
        "",
        "| streams | sampling | decode tokens/s | per stream | end to end | in-graph vs CPU-side |",
        "|---|---|---|---|---|---|",
    ]
    for n in meta["streams"]:
        cpu = conc[f"{n} cpu"]["decode_tok_s"]
        for arm in ("in-graph", "cpu"):
            row = conc[f"{n} {arm}"]
            ratio = f"{row['decode_tok_s'] / cpu:.2f}x" if arm == "in-graph" else ""
            lines.append(
                f"| {n} | {'in-graph' if arm == 'in-graph' else 'CPU-side'} "
                f"| {row['decode_tok_s']:.0f} | {row['decode_tok_s'] / n:.1f} "
                f"| {row['e2e_tok_s']:.0f} | {ratio} |"
            )
    early = sum(row["ended_early"] for row in conc.values())
    if early:
        lines.append(f"\n{early} stream(s) ended before their last token.")
    return lines


def speculation_table(spec: dict[str, Any], meta: dict[str, Any]) -> list[str]:
    off = spec["off"]["decode_tok_s"]
    lines = [
        f"Speculation (prompt lookup), bench/tasks.py's grounded task ({spec['prompt_tokens']} "
        "prompt tokens), greedy, CPU-side sampling (llorch does not speculate on sequences "
        "sampled in the graph). The weights are random: the output does not copy the input, "
        "and the drafts that are accepted come from the model repeating its own output "
        "(greedy decoding of random weights falls into loops), so the ratio says what drafting "
        "costs or gains on this output, not what it gains on the task:",
        "",
        "| speculation | decode tokens/s | vs off | drafts accepted |",
        "|---|---|---|---|",
    ]
    for arm in ("off", "on"):
        row = spec[arm]
        share = f"{row['accepted']} / {row['drafted']}" if row["drafted"] else "-"
        rate = row["decode_tok_s"]
        lines.append(f"| {arm} | {rate:.1f} | {rate / off:.3f}x | {share} |")
    return lines


def targets(res: dict[str, Any]) -> list[tuple[str, float | None, float, str]]:
    top = max(res["meta"]["streams"])
    graph = ratio = served = None
    conc, one_ = res.get("concurrent", {}), res.get("single", {})
    if "error" not in conc and conc:
        graph = conc[f"{top} in-graph"]["decode_tok_s"]
        ratio = graph / conc[f"{top} cpu"]["decode_tok_s"]
    if "error" not in one_ and one_:
        arm = "in-graph" if res["meta"]["default_in_graph"] else "cpu"
        served = one_[arm]["decode_tok_s"] / one_["direct"]["decode_tok_s"]
    return [
        (f"{top} streams, in-graph sampling ≥ 6,000 tokens/s", graph, 6000.0, ""),
        (f"{top} streams, in-graph ≥ 2.5x CPU-side sampling", ratio, 2.5, "x"),
        ("single stream ≥ 0.95x the low-level loop", served, 0.95, "x"),
    ]


def device_name(n_gpu_layers: int) -> str:
    gpus = [d.description or d.name for d in system.devices() if d.kind in ("gpu", "igpu")]
    if gpus and n_gpu_layers != 0:
        return ", ".join(gpus)
    return f"the CPU ({platform.machine()}, {os.cpu_count()} cores)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cpu", action="store_true", help="no GPU: n_gpu_layers 0")
    parser.add_argument("--small", action="store_true", help="a tiny shape, fewer tokens")
    parser.add_argument("--tokens", type=int, default=None, help="per stream (256; small 32)")
    parser.add_argument("--rounds", type=int, default=None, help="3; small 2")
    parser.add_argument("--streams", type=int, nargs="+", default=[8, 32])
    parser.add_argument("--threads", type=int, default=default_threads())
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", type=Path, default=Path("/tmp/llorch-bench-gpu"))
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT") or "build/out"))
    parser.add_argument("--doc", action="store_true", help="write docs/BENCHMARKS.md's section")
    parser.add_argument(
        "--doc-from",
        type=Path,
        help="write docs/BENCHMARKS.md's section from a gpu.md made elsewhere, measure nothing",
    )
    parser.add_argument(
        "--budget", type=float, default=420.0, help="seconds; later sections are skipped"
    )
    ns = parser.parse_args()
    if ns.doc_from:
        # A GPU machine's copy of the checkout does not come back: its gpu.md does.
        write_section(ns.doc_from.read_text(encoding="utf-8").strip(), BEGIN, END)
        return
    ns.tokens = ns.tokens or (32 if ns.small else 256)
    ns.rounds = ns.rounds or (2 if ns.small else 3)
    ns.n_gpu_layers = 0 if ns.cpu else -1
    if not ns.cpu and not system.has_gpu():
        raise SystemExit(
            "llama.cpp sees no GPU (is the CUDA build of llama_cpp first on the path?)"
        )
    faulthandler.enable()  # a crash inside llama.cpp still shows where, in gpu.log
    t0 = time.perf_counter()
    shape = SHAPES["small" if ns.small else "1b"]
    path, model_seconds = make_model(ns.work, shape, ns.seed, os.cpu_count() or 1)
    import llama_cpp

    res: dict[str, Any] = {
        "meta": {
            "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
            "model": f"random-weight {shape.name}, Q4_K_M ({path.stat().st_size / 2**20:.0f} MiB)",
            "shape": asdict(shape),
            "device": device_name(ns.n_gpu_layers),
            "n_gpu_layers": ns.n_gpu_layers,
            "threads": ns.threads,
            "llama_cpp": llama_cpp.__version__,
            "tokens": ns.tokens,
            "rounds": ns.rounds,
            "streams": ns.streams,
            "default_in_graph": system.has_gpu() and ns.n_gpu_layers != 0,
            "target_run": not ns.small and not ns.cpu,
            "model_seconds": model_seconds,
        },
    }
    ns.out.mkdir(parents=True, exist_ok=True)
    # One run on a GPU machine has to bring back every number it can: a section that fails
    # is recorded and the next one runs; the JSON is rewritten after each section.
    for name, section in (
        ("single", single_stream),
        ("concurrent", concurrent),
        ("speculation", speculation),
    ):
        print(f"{name} ...")
        started = time.perf_counter()
        try:
            if started - t0 > ns.budget:
                raise TimeoutError(f"skipped, the run passed its budget of {ns.budget:.0f} s")
            res[name] = section(path, ns)
        except Exception as exc:
            traceback.print_exc()
            res[name] = {"error": f"{type(exc).__name__}: {exc}"}
        print(f"{name}: {time.perf_counter() - started:.1f} s")
        res["meta"]["run_seconds"] = time.perf_counter() - t0
        (ns.out / "gpu.json").write_text(json.dumps(res, indent=2, default=str) + "\n")
    text = report(res)
    print(text)
    (ns.out / "gpu.md").write_text(text + "\n", encoding="utf-8")
    if ns.doc:
        write_section(text, BEGIN, END)
    if any("error" in res[name] for name in ("single", "concurrent", "speculation")):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
