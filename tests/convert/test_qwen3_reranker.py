"""Qwen3-Reranker: a Qwen3ForCausalLM scored by its "yes" logit less its "no" at the end of its
instruction template. A tiny random one (with a Qwen2-style byte-level BPE tokenizer that has
"yes" and "no" as tokens, and the model card's title in README.md) converted to F32, served,
and reranked over a real socket; scores compared with transformers' logits on the same
formatted text, tokenized by the checkpoint's tokenizer as the model card's code does."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gguf
import httpx
import numpy as np
import pytest
from support import THREADS, start_worker

from llorch.convert import convert
from llorch.convert.families.qwen3 import INSTRUCTION, TEMPLATE
from llorch.detector import detect

QWEN3 = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 16,
    "max_position_embeddings": 1024,
    "tie_word_embeddings": False,
}
QUERY = "How many people live in Berlin?"
DOCUMENTS = [
    "Berlin has a population of 3,520,031 registered inhabitants.",
    "Berlin is well known for its museums.",
    "The capital of France is Paris. yes or no",
    "中文测试 日本語 emoji 🦙",
    "",
    "a query's {query} slot and a {document} slot, written in a document",
]
LONG = " ".join(["Berlin's districts change every year."] * 60)  # past the served context
CTX = 512
TASK = "Given a question about a city, find the passage that answers it"


def _build(checkpoint: Any, helpers: Any, monkeypatch: pytest.MonkeyPatch, name: str) -> Path:
    # the tokenizer learns "yes" and "no" as tokens of their own, as Qwen's vocabulary has them
    monkeypatch.setattr(helpers, "CORPUS", [*helpers.CORPUS, *["yes no, Yes No"] * 80])
    built = checkpoint("Qwen3ForCausalLM", "Qwen3Config", QWEN3, tokenizer="qwen2")
    (built.folder / "README.md").write_text(f"---\nlicense: apache-2.0\n---\n# {name}\n\nText.\n")
    return built.folder


def _reference(
    folder: Path, query: str, documents: list[str], template: str = TEMPLATE
) -> tuple[np.ndarray, int]:
    """logit(yes) - logit(no) at the last position of each pair's prompt, and its tokens."""
    import torch
    import transformers

    tokenizer = transformers.PreTrainedTokenizerFast(tokenizer_file=str(folder / "tokenizer.json"))
    yes, no = tokenizer.convert_tokens_to_ids(["yes", "no"])
    model = transformers.Qwen3ForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    scores, n_tokens = [], 0
    for document in documents:
        text = template.replace("{query}", query).replace("{document}", document)
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        n_tokens += len(ids)
        with torch.no_grad():
            logits = model(torch.tensor([ids])).logits[0, -1]
        scores.append(float(logits[yes] - logits[no]))
    return np.array(scores), n_tokens


@pytest.mark.e2e
def test_served_scores_match_transformers(
    checkpoint: Any, helpers: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    folder = _build(checkpoint, helpers, monkeypatch, "Qwen3-Reranker-0.6B")
    assert detect(folder).llama_arch == "qwen3"
    out = tmp_path / "qwen3-reranker.gguf"
    report = convert(folder, out, outtype="f32")
    assert report.verified
    reader = gguf.GGUFReader(out)
    fields = {name: f.contents() for name, f in reader.fields.items()}
    assert fields[gguf.Keys.LLM.POOLING_TYPE.format(arch="qwen3")] == gguf.PoolingType.RANK
    assert fields[gguf.Keys.Classifier.OUTPUT_LABELS.format(arch="qwen3")] == ["yes", "no"]
    assert fields[gguf.Keys.Tokenizer.CHAT_TEMPLATE_N.format(name="rerank")] == TEMPLATE
    tensors = {t.name: t for t in reader.tensors}
    assert list(tensors["cls.output.weight"].shape) == [QWEN3["hidden_size"], 2]
    assert "output.weight" in tensors  # still the Qwen3 it was: the lm_head stays

    documents = [*DOCUMENTS, LONG]
    want, _ = _reference(folder, QUERY, DOCUMENTS)
    order = sorted(range(len(DOCUMENTS)), key=lambda i: -want[i])
    assert np.ptp(want) > 0.1  # the scores differ enough for the order to mean something
    worker = start_worker(
        tmp_path,
        "--model",
        str(out),
        "--threads",
        str(THREADS),
        "--parallel",
        "1",
        "--ctx-size",
        str(CTX),
    )
    try:
        url = f"{worker.url}/v1/rerank"
        body = {"model": "m", "query": QUERY, "documents": DOCUMENTS, "return_documents": True}
        raw = httpx.post(url, json=body, timeout=120)
        normalized = httpx.post(url, json={**body, "normalize": True, "top_n": 3}, timeout=120)
        tei = httpx.post(
            f"{worker.url}/rerank", json={"query": QUERY, "texts": DOCUMENTS}, timeout=120
        )
        cut = httpx.post(url, json={"query": QUERY, "documents": documents}, timeout=120)
        refused = httpx.post(
            url, json={"query": QUERY, "documents": documents, "truncate": False}, timeout=120
        )
        embeddings = httpx.post(f"{worker.url}/v1/embeddings", json={"input": "x"}, timeout=60)
        instructed = httpx.post(url, json={**body, "instruction": TASK}, timeout=120)
    finally:
        assert worker.stop() == 0

    assert raw.status_code == 200, raw.text
    results = raw.json()["results"]
    got = np.array([r["relevance_score"] for r in sorted(results, key=lambda r: r["index"])])
    print("transformers logit(yes) - logit(no):", np.round(want, 5))
    print("served |score - reference| per document:", np.abs(got - want))
    assert [r["index"] for r in results] == order
    assert np.abs(got - want).max() <= 1e-3
    assert [r["document"]["text"] for r in results] == [DOCUMENTS[i] for i in order]
    _, n_tokens = _reference(folder, QUERY, DOCUMENTS)
    assert raw.json()["usage"]["prompt_tokens"] == n_tokens  # the same tokens as the reference

    # normalize: the model card's score, p(yes) of the softmax over "no" and "yes"
    assert normalized.status_code == 200, normalized.text
    p_yes = 1 / (1 + np.exp(-want))
    top = normalized.json()["results"]
    assert [r["index"] for r in top] == order[:3]
    for r in top:
        assert r["relevance_score"] == pytest.approx(p_yes[r["index"]], abs=1e-4)
    assert tei.status_code == 200, tei.text
    assert [r["index"] for r in tei.json()] == order
    assert [r["score"] for r in tei.json()] == pytest.approx([p_yes[i] for i in order], abs=1e-4)

    # a prompt past the served context: cut (the document loses its end) or a 400 naming it
    assert cut.status_code == 200, cut.text
    assert CTX - 8 <= cut.json()["usage"]["prompt_tokens"] - n_tokens <= CTX
    scores = {r["index"]: r["relevance_score"] for r in cut.json()["results"]}
    assert [scores[i] for i in range(len(DOCUMENTS))] == pytest.approx(list(want), abs=1e-3)
    assert refused.status_code == 400, refused.text
    assert f"documents[{len(DOCUMENTS)}]" in refused.text
    assert embeddings.status_code == 400 and "reranker" in embeddings.text

    # a task instruction of the request's in place of the template's (the model card's
    # format_instruction)
    assert instructed.status_code == 200, instructed.text
    want_task, _ = _reference(folder, QUERY, DOCUMENTS, TEMPLATE.replace(INSTRUCTION, TASK))
    assert np.abs(want_task - want).max() > 1e-3  # the instruction matters
    got_task = {r["index"]: r["relevance_score"] for r in instructed.json()["results"]}
    assert max(abs(got_task[i] - want_task[i]) for i in range(len(DOCUMENTS))) <= 1e-3


def _prompt_eval_tokens(ctx: Any) -> int:
    import llama_cpp as ll

    return int(ll.llama_perf_context(ctx).n_p_eval)


def test_the_pairs_read_their_shared_prefix_once(
    checkpoint: Any, helpers: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Every pair of a request fills the template alike up to its document: that prefix is
    decoded once and its cells shared by the pairs, and kept for the next request about the
    same query (llama.cpp's own count of tokens decoded); the scores stay transformers'."""
    import llama_cpp as ll
    import transformers

    from llorch.worker.backend.embed import LlamaEmbedder
    from llorch.worker.backend.protocol import RankInput

    folder = _build(checkpoint, helpers, monkeypatch, "Qwen3-Reranker-0.6B")
    out = tmp_path / "qwen3-reranker.gguf"
    convert(folder, out, outtype="f32", verify=False)
    tokenizer = transformers.PreTrainedTokenizerFast(tokenizer_file=str(folder / "tokenizer.json"))
    texts = [TEMPLATE.replace("{query}", QUERY).replace("{document}", d) for d in DOCUMENTS]
    pairs = [tuple(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts]
    shared = next(i for i in range(len(pairs[0])) if len({p[i] for p in pairs}) > 1)
    assert shared > 20  # the template's system and instruction lines, and the query
    own = sum(len(p) - shared for p in pairs)
    want, _ = _reference(folder, QUERY, DOCUMENTS)

    ll.llama_backend_init()
    model = ll.llama_model_load_from_file(str(out).encode(), ll.llama_model_default_params())
    embedder = LlamaEmbedder(model, n_ctx=CTX, threads=THREADS, pooling=None)
    try:
        inputs = [RankInput(p, len(p)) for p in pairs]
        got = embedder.rank(inputs)
        first = _prompt_eval_tokens(embedder._ctx)
        again = embedder.rank(inputs)
        second = _prompt_eval_tokens(embedder._ctx)
        alone = embedder.rank(inputs[:1])  # one pair: nothing to share, read whole
        third = _prompt_eval_tokens(embedder._ctx)
    finally:
        embedder.close()
        ll.llama_model_free(model)
    assert first == shared + own  # a new context: counted from 0
    assert second - first == own
    assert third - second == len(pairs[0])
    assert np.abs(np.array(got) - want).max() <= 1e-3
    assert again == got
    assert alone[0] == pytest.approx(want[0], abs=1e-3)


def test_without_its_name_it_is_a_plain_qwen3(
    checkpoint: Any, helpers: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Recognised by its own name only: a folder inside one named after the reranker is a
    plain Qwen3; a Hub cache's snapshot of Qwen/Qwen3-Reranker-0.6B is the reranker."""
    nested = tmp_path / "qwen3-reranker-runs" / "Qwen3-0.6B"
    cached = tmp_path / "models--Qwen--Qwen3-Reranker-0.6B" / "snapshots" / ("a" * 40)
    nested.parent.mkdir()
    _build(checkpoint, helpers, monkeypatch, "Qwen3-0.6B").rename(nested)
    for folder, reranker in ((nested, False), (cached, True)):
        if folder == cached:
            cached.parent.mkdir(parents=True)
            nested.rename(cached)
        out = tmp_path / f"{folder.name}.gguf"
        convert(folder, out, outtype="f32", verify=False)
        reader = gguf.GGUFReader(out)
        assert ("cls.output.weight" in {t.name for t in reader.tensors}) is reranker
        pooling = gguf.Keys.LLM.POOLING_TYPE.format(arch="qwen3")
        assert (pooling in reader.fields) is reranker


@pytest.mark.e2e
def test_llama_server_scores_the_gguf_alike(
    checkpoint: Any, helpers: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The GGUF is what llama.cpp's reranker path reads: llama-server --rerank (built from the
    vendored llama.cpp) fills its rerank template and gives p(yes), the model card's score."""
    import subprocess
    import time

    from llama_tools import tool
    from support import free_port

    binary = tool("llama-server")
    folder = _build(checkpoint, helpers, monkeypatch, "Qwen3-Reranker-0.6B")
    out = tmp_path / "qwen3-reranker.gguf"
    convert(folder, out, outtype="f32", verify=False)
    want, _ = _reference(folder, QUERY, DOCUMENTS)
    port = free_port()
    cmd = [
        str(binary),
        "-m",
        str(out),
        "--port",
        str(port),
        "--rerank",
        "-c",
        "2048",
        "-t",
        str(THREADS),
    ]
    with (tmp_path / "llama-server.log").open("wb") as log:
        server = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(240):
            try:
                if httpx.get(f"{url}/health", timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert server.poll() is None, (tmp_path / "llama-server.log").read_text()
            time.sleep(0.25)
        body = {"query": QUERY, "documents": DOCUMENTS}
        reply = httpx.post(f"{url}/v1/rerank", json=body, timeout=120)
    finally:
        server.terminate()
        server.wait(timeout=30)
    assert reply.status_code == 200, reply.text
    got = {r["index"]: r["relevance_score"] for r in reply.json()["results"]}
    p_yes = 1 / (1 + np.exp(-want))
    print("llama-server |p(yes) - reference|:", [abs(got[i] - p_yes[i]) for i in got])
    assert max(abs(got[i] - p_yes[i]) for i in range(len(DOCUMENTS))) <= 1e-4
