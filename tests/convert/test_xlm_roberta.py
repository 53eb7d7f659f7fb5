"""XLM-RoBERTa cross-encoders (bge-reranker-v2-m3's architecture): a tiny random
XLMRobertaForSequenceClassification with a SentencePiece Unigram tokenizer (trained here, made
into tokenizer.json by transformers as XLM-R's is), converted, served, and reranking over a real
socket; scores compared with transformers' logits on the tokenizer's own pairs
(`<s> query </s></s> document </s>`, truncation included).

The hidden states and the rank head are in test_parity.py (cases xlm-roberta-*)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import gguf
import httpx
import numpy as np
import pytest
from support import THREADS, start_worker

from llorch.convert import convert
from llorch.detector import detect
from tests.convert.parity_cases import XLM_ROBERTA

QUERY = "hello world, is this a test?"
DOCUMENTS = [
    "hello world this is a test of the tokenizer",
    "the quick brown fox jumps over the lazy dog 123",
    "中文测试 日本語 emoji 🦙",
    "I'm sure they've said it's fine; we'll see.",
    " ".join(["the quick brown fox jumps over the lazy dog"] * 12),  # past the 64 positions
    "",
]
N_CTX = XLM_ROBERTA["max_position_embeddings"] - 2  # RoBERTa's positions start at pad + 1


def _reference(folder: Path) -> tuple[np.ndarray, int]:
    import torch
    import transformers

    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    model = transformers.XLMRobertaForSequenceClassification.from_pretrained(folder).eval()
    pairs = tokenizer(
        [QUERY] * len(DOCUMENTS),
        DOCUMENTS,
        truncation=True,
        max_length=N_CTX,
        padding=True,
        return_tensors="pt",
    )
    with torch.no_grad():
        logits = model(**pairs).logits[:, 0].numpy()
    return logits, int(pairs["attention_mask"].sum())


@pytest.mark.e2e
def test_served_scores_match_transformers(checkpoint: Any, tmp_path: Path) -> None:
    built = checkpoint(
        "XLMRobertaForSequenceClassification",
        "XLMRobertaConfig",
        {**XLM_ROBERTA, "num_labels": 1},
        tokenizer="unigram",
    )
    assert detect(built.folder).llama_arch == "bert"
    out = tmp_path / "xlmr-reranker.gguf"
    report = convert(built.folder, out, outtype="f32")
    assert report.verified and report.tokenizer == "unigram"
    reader = gguf.GGUFReader(out)
    fields = {k: f.contents() for k, f in reader.fields.items()}
    assert fields[gguf.Keys.Tokenizer.MODEL] == "t5"
    assert fields[gguf.Keys.Tokenizer.ADD_SEP] is True  # `</s></s>` between query and document
    assert fields[gguf.Keys.LLM.CONTEXT_LENGTH.format(arch="bert")] == N_CTX
    shapes = {t.name: list(t.shape) for t in reader.tensors}
    assert shapes["position_embd.weight"] == [XLM_ROBERTA["hidden_size"], N_CTX]
    assert "cls.weight" in shapes and shapes["cls.output.weight"] == [64, 1]

    want, n_tokens = _reference(built.folder)
    order = sorted(range(len(DOCUMENTS)), key=lambda i: -want[i])
    worker = start_worker(tmp_path, "--model", str(out), "--threads", str(THREADS))
    try:
        body = {"query": QUERY, "documents": DOCUMENTS}
        reply = httpx.post(f"{worker.url}/v1/rerank", json=body, timeout=60)
        instructed = httpx.post(
            f"{worker.url}/v1/rerank", json={**body, "instruction": "Find it"}, timeout=60
        )
    finally:
        assert worker.stop() == 0
    assert reply.status_code == 200, reply.text
    results = reply.json()["results"]
    got = np.array([r["relevance_score"] for r in sorted(results, key=lambda r: r["index"])])
    print("transformers logits:", np.round(want, 5), "|served - reference|:", np.abs(got - want))
    assert [r["index"] for r in results] == order
    assert np.abs(got - want).max() <= 1e-3
    assert reply.json()["usage"]["prompt_tokens"] == n_tokens  # the same pairs, cut alike
    assert instructed.status_code == 400 and "instruction" in instructed.text  # not an LLM
    assert json.loads((built.folder / "config.json").read_text())["pad_token_id"] == 1


def test_older_tokenizer_json_converts_and_verifies(checkpoint: Any, tmp_path: Path) -> None:
    """tokenizer.json as the Hub's XLM-R repos have it (transformers 4's conversion): runs of
    spaces collapsed by a Replace normalizer after the precompiled map, Metaspace alone;
    llama.cpp's tokenization of the corpus must equal it (the converter's verification)."""
    built = checkpoint("XLMRobertaModel", "XLMRobertaConfig", XLM_ROBERTA, tokenizer="unigram")
    path = built.folder / "tokenizer.json"
    tok = json.loads(path.read_text())
    tok["normalizer"] = {
        "type": "Sequence",
        "normalizers": [
            tok["normalizer"],
            {"type": "Replace", "pattern": {"Regex": " {2,}"}, "content": " "},
        ],
    }
    tok["pre_tokenizer"] = {
        "type": "Metaspace",
        "replacement": "\u2581",
        "prepend_scheme": "always",
        "split": True,
    }
    path.write_text(json.dumps(tok))
    report = convert(built.folder, tmp_path / "older.gguf", outtype="f32")
    assert report.verified and report.verify_strings > 10
    assert any(note.startswith("Unigram") for note in report.notes)


@pytest.mark.e2e
def test_served_embeddings_match_sentence_transformers(
    checkpoint: Any, helpers: Any, tmp_path: Path
) -> None:
    """bge-m3's modules: CLS pooling, then Normalize."""
    from sentence_transformers import SentenceTransformer

    built = checkpoint("XLMRobertaModel", "XLMRobertaConfig", XLM_ROBERTA, tokenizer="unigram")
    helpers.write_pooling(
        built.folder, "cls_token", dimension=XLM_ROBERTA["hidden_size"], normalize=True
    )
    out = tmp_path / "xlmr.gguf"
    assert convert(built.folder, out, outtype="f32").verified
    texts = [*DOCUMENTS[:4], "a  run of  spaces and\nnewlines"]
    want = SentenceTransformer(str(built.folder), device="cpu").encode(texts)
    worker = start_worker(tmp_path, "--model", str(out), "--threads", str(THREADS))
    try:
        reply = httpx.post(f"{worker.url}/v1/embeddings", json={"input": texts}, timeout=60)
    finally:
        assert worker.stop() == 0
    assert reply.status_code == 200, reply.text
    got = np.array([d["embedding"] for d in reply.json()["data"]])
    cosines = helpers.cosines(got, want)
    print("XLM-RoBERTa cosine per text:", np.round(cosines, 7))
    assert cosines.min() >= 0.9999
