"""A conversation's next turn after a cut: time to first token, llorch and llama-server with
their context checkpoints, side by side in one run.

    python bench/checkpoints.py [--tokens 4000] [--rounds 3] [--threads N] [--doc]

Two models: the default model (Gemma 3: five of six layers see a 512-token sliding window)
and a random-weight Qwen 3.5 hybrid (Gated DeltaNet layers beside attention, built with
transformers at the size below and converted by llorch; its weights make no sense, its cost
per token is the real architecture's). Per model and server, one slot:
  turn 1   a prompt of ~--tokens tokens, answered with 32 greedy tokens: the slot holds the
           prompt and the answer;
  turn 2   the same prompt and a new question, not the answer (a client that drops or
           re-renders the previous answer): it shares only the prompt with the slot, which
           neither a sliding window nor a recurrent state can be cut back to, so without a
           checkpoint it is read whole again;
  cold     turn 2's prompt on a slot that holds nothing of it (the slot is first given an
           unrelated prompt).
Prompts are token ids (/v1/completions accepts them on both servers), so both read the same
tokens. Time to first token is the first streamed chunk; medians over --rounds; each round
starts both servers' turns afresh. Targets (issue): turn 2 <= 0.2x cold, llorch <= 1.0x
llama-server on turn 2. With --doc, the table goes into docs/BENCHMARKS.md between its markers.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx
import numpy as np
from benchlib import REPO, load, write_section

from llorch.gguf_header import read_header
from llorch.worker.models import resolve_model

BEGIN, END = "<!-- bench/checkpoints.py -->", "<!-- end bench/checkpoints.py -->"
serving = load("bench_serving", REPO / "bench" / "serving.py")
# Qwen 3.5 hybrid at ~60M parameters: 8 layers (every 4th attention, as released), DeltaNet heads
QWEN35 = {
    "hidden_size": 512,
    "intermediate_size": 1536,
    "num_hidden_layers": 8,
    "num_attention_heads": 8,
    "num_key_value_heads": 2,
    "head_dim": 64,
    "linear_num_key_heads": 8,
    "linear_num_value_heads": 16,
    "linear_key_head_dim": 32,
    "linear_value_head_dim": 32,
    "linear_conv_kernel_dim": 4,
    "max_position_embeddings": 16384,
}


def qwen35_hybrid(work: Path) -> Path:
    sys.path.insert(0, str(REPO))
    sys.path.insert(0, str(REPO / "tests"))
    from llorch.convert import convert
    from tests.convert import parity_cases
    from tests.convert.conftest import build_checkpoint

    out = work / "qwen35-hybrid.gguf"
    if out.exists():
        return out
    case = parity_cases.CASES["qwen35-hybrid"]
    config = {**case.config, **QWEN35}
    built = build_checkpoint(
        work / "hf", case.model_cls, case.config_cls, config, tokenizer="qwen2"
    )
    convert(built.folder, out, outtype="f16", verify=False)
    return out


def first_token_seconds(url: str, prompt: list[int], max_tokens: int) -> float:
    body = {"prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "stream": True}
    start = time.perf_counter()
    with httpx.stream("POST", url + "/v1/completions", json=body, timeout=3600) as response:
        response.raise_for_status()
        lines = response.iter_lines()
        for line in lines:
            if line.startswith("data: ") and line != "data: [DONE]":
                first = time.perf_counter() - start
                for _ in lines:  # the rest of the answer
                    pass
                return first
    raise RuntimeError("no streamed chunk")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=4000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--work", type=Path, default=Path("/tmp/llorch-bench-checkpoints"))
    parser.add_argument("--doc", action="store_true", help="write docs/BENCHMARKS.md's section")
    ns = parser.parse_args()
    ns.work.mkdir(parents=True, exist_ok=True)
    started = datetime.now(UTC)
    load_before = " ".join(f"{x:.2f}" for x in os.getloadavg())
    logs = Path(tempfile.mkdtemp(prefix="llorch-checkpoints-"))
    models = {
        "Gemma 3 270M": resolve_model(None),
        "Qwen 3.5 hybrid (random)": qwen35_hybrid(ns.work),
    }
    rng = np.random.default_rng(0)
    ctx = 2 * ns.tokens + 512
    t = str(ns.threads)
    rows = []
    for label, path in models.items():
        # ordinary token ids: past the first 300 (specials, bytes), within the vocabulary
        n_vocab = read_header(path).fields["tokenizer.ggml.tokens"].length
        high = min(20000, n_vocab)
        prompt = [int(x) for x in rng.integers(300, high, ns.tokens)]
        question = [int(x) for x in rng.integers(300, high, 24)]
        other = [int(x) for x in rng.integers(300, high, 64)]
        commands = {
            "llorch": [
                sys.executable, "-m", "llorch.cli", "serve", "--model", str(path),
                "--no-chat-model", "--threads", t, "--parallel", "1", "--ctx-size", str(ctx),
            ],
            "llama-server": [
                str(serving.llama_server_binary()), "-m", str(path), "--host", "127.0.0.1",
                "-t", t, "-tb", t, "-np", "1", "-c", str(ctx),
            ],
        }  # fmt: skip
        times: dict[str, dict[str, list[float]]] = {}
        for name, cmd in commands.items():
            port = serving.decode.free_port()
            probe = "/ready" if name == "llorch" else "/health"
            server = serving.start(name, [*cmd, "--port", str(port)], port, probe, logs)
            got = times.setdefault(name, {"cold": [], "turn 2": []})
            try:
                for r in range(ns.rounds):
                    # a new conversation every round, and the cold prompt its own first token:
                    # nothing of one is cached for another (slot or host-RAM cache)
                    salt, cold = [200 + r], [250 + r]
                    first_token_seconds(server.url, other + salt, 1)
                    got["cold"].append(first_token_seconds(server.url, cold + prompt + question, 1))
                    first_token_seconds(server.url, salt + prompt, 32)
                    got["turn 2"].append(
                        first_token_seconds(server.url, salt + prompt + question, 1)
                    )
            finally:
                server.proc.terminate()
                server.proc.wait(30)
            print(f"[checkpoints] {label} {name}: {got}", flush=True)
        med = {n: {k: statistics.median(v) for k, v in d.items()} for n, d in times.items()}
        rows.append((label, med))
    load_after = " ".join(f"{x:.2f}" for x in os.getloadavg())
    lines = [
        BEGIN,
        "## A next turn after a cut: time to first token (`bench/checkpoints.py`)",
        "",
        f"~{ns.tokens}-token prompt, its 32-token answer in the slot, then the prompt and a new "
        f"question; one slot, {ns.threads} threads, medians of {ns.rounds}; "
        f"{started:%Y-%m-%d %H:%M} UTC, load average {load_before} before, {load_after} after.",
        "",
        "| model | server | cold (s) | turn 2 (s) | turn 2 / cold "
        "| llorch / llama-server (turn 2) |",
        "|---|---|---|---|---|---|",
    ]
    for label, med in rows:
        for name, m in med.items():
            ratio = med["llorch"]["turn 2"] / med["llama-server"]["turn 2"]
            lines.append(
                f"| {label} | {name} | {m['cold']:.2f} | {m['turn 2']:.2f} | "
                f"{m['turn 2'] / m['cold']:.2f}x | {f'{ratio:.2f}x' if name == 'llorch' else ''} |"
            )
    lines.append(END)
    print("\n".join(lines))
    if ns.doc:
        write_section("\n".join(lines), BEGIN, END)


if __name__ == "__main__":
    main()
