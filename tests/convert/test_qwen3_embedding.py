"""Qwen3-Embedding: a bare Qwen3Model with a sentence-transformers config (last-token pooling,
Normalize, an instruction prompt for queries), converted, served, and compared with
sentence-transformers' own encode on the same tiny random checkpoint."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import gguf
import httpx
import numpy as np
import pytest
from support import THREADS, start_worker

from llorch import keys
from llorch.convert import convert
from llorch.detector import detect
from tests.convert.conftest import write_pooling

QWEN3 = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 16,
    "max_position_embeddings": 256,
    "tie_word_embeddings": True,
}
# Qwen3-Embedding's config_sentence_transformers.json
PROMPTS = {
    "query": "Instruct: Given a web search query, retrieve relevant passages that answer the "
    "query\nQuery:",
    "document": "",
}
TEXTS = [
    "hello world this is a test",
    "the quick brown fox jumps over the lazy dog 123",
    "中文测试 日本語 emoji 🦙",
    "I'm sure they've said it's fine; we'll see.",
]


def _as_qwen3_embedding(folder: Path) -> None:
    """The tokenizer appends its end-of-text token (Qwen3-Embedding's tokenizer.json
    post-processor) and adds no BOS; the sentence-transformers modules and prompts."""
    tok = json.loads((folder / "tokenizer.json").read_text())
    eos = next(t for t in tok["added_tokens"] if t["content"] == "<|eos|>")
    tok["post_processor"] = {
        "type": "TemplateProcessing",
        "single": [
            {"Sequence": {"id": "A", "type_id": 0}},
            {"SpecialToken": {"id": "<|eos|>", "type_id": 0}},
        ],
        "pair": [{"Sequence": {"id": "A", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}}],
        "special_tokens": {"<|eos|>": {"id": "<|eos|>", "ids": [eos["id"]], "tokens": ["<|eos|>"]}},
    }
    (folder / "tokenizer.json").write_text(json.dumps(tok))
    config = json.loads((folder / "tokenizer_config.json").read_text())
    config["add_bos_token"] = False
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    write_pooling(folder, "lasttoken", dimension=QWEN3["hidden_size"], normalize=True)
    st_config = {"prompts": PROMPTS, "default_prompt_name": None}
    (folder / "config_sentence_transformers.json").write_text(json.dumps(st_config))


@pytest.mark.e2e
def test_served_embeddings_match_sentence_transformers(
    checkpoint: Any, helpers: Any, tmp_path: Path
) -> None:
    from sentence_transformers import SentenceTransformer

    built = checkpoint("Qwen3Model", "Qwen3Config", QWEN3, tokenizer="qwen2")
    _as_qwen3_embedding(built.folder)
    assert detect(built.folder).llama_arch == "qwen3"
    out = tmp_path / "qwen3-embedding.gguf"
    report = convert(built.folder, out, outtype="f32")
    assert report.verified
    fields = {name: f.contents() for name, f in gguf.GGUFReader(out).fields.items()}
    assert fields[gguf.Keys.LLM.POOLING_TYPE.format(arch="qwen3")] == gguf.PoolingType.LAST
    assert fields[keys.EMBEDDING_NORMALIZE] is True
    assert json.loads(fields[keys.EMBEDDING_PROMPTS]) == PROMPTS
    assert keys.EMBEDDING_DEFAULT_PROMPT not in fields
    assert fields[gguf.Keys.Tokenizer.ADD_EOS] is True

    reference = SentenceTransformer(str(built.folder), device="cpu")
    want_query = reference.encode(TEXTS, prompt_name="query")
    want_plain = reference.encode(TEXTS)
    assert helpers.cosines(want_query, want_plain).max() < 0.999  # the prompt matters
    worker = start_worker(
        tmp_path, "--model", str(out), "--threads", str(THREADS), "--parallel", "1"
    )
    try:
        url = f"{worker.url}/v1/embeddings"
        query = httpx.post(url, json={"input": TEXTS, "prompt_name": "query"}, timeout=60)
        plain = httpx.post(url, json={"input": TEXTS}, timeout=60)
        bad = httpx.post(url, json={"input": TEXTS, "prompt_name": "passage"}, timeout=60)
        body = {"input": TEXTS, "prompt_name": "query", "dimensions": 16}
        short = httpx.post(url, json=body, timeout=60)
        too_many = httpx.post(url, json={**body, "dimensions": 65}, timeout=60)
    finally:
        assert worker.stop() == 0
    for reply, want in ((query, want_query), (plain, want_plain)):
        assert reply.status_code == 200, reply.text
        got = np.array([d["embedding"] for d in reply.json()["data"]])
        cosines = helpers.cosines(got, want)
        print("Qwen3-Embedding cosine per text:", np.round(cosines, 7))
        assert cosines.min() >= 0.9999
        assert np.allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    assert bad.status_code == 400
    # Matryoshka: the leading 16 dimensions, normalised again (sentence-transformers'
    # truncate_dim, then normalize)
    assert fields[keys.EMBEDDING_MATRYOSHKA] is True
    assert short.status_code == 200, short.text
    got = np.array([d["embedding"] for d in short.json()["data"]])
    assert got.shape == (len(TEXTS), 16)
    assert helpers.cosines(got, want_query[:, :16]).min() >= 0.9999
    assert np.allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    assert too_many.status_code == 400 and too_many.json()["error"]["param"] == "dimensions"
    error = bad.json()["error"]
    assert error["param"] == "prompt_name" and "document, query" in error["message"]
