"""EmbeddingGemma: a bidirectional Gemma3TextModel with sentence-transformers' mean pooling,
two Dense projections, Normalize and prompts, converted, served, and compared with
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

GEMMA3 = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 16,
    "query_pre_attn_scalar": 16,
    "max_position_embeddings": 256,
    # wider than any text here, however transformers rescales it for bidirectional attention:
    # the window's edge (symmetric in llama.cpp) is not what this test is about
    "sliding_window": 1024,
    "layer_types": ["sliding_attention", "full_attention"],
    "use_bidirectional_attention": True,
    "rope_parameters": {
        "full_attention": {"rope_theta": 1e6, "rope_type": "default"},
        "sliding_attention": {"rope_theta": 10000.0, "rope_type": "default"},
    },
}
DENSE_WIDTH = 96
# EmbeddingGemma-300m's config_sentence_transformers.json (two of its prompts)
PROMPTS = {"query": "task: search result | query: ", "document": "title: none | text: "}
TEXTS = [
    "hello world this is a test",
    "the quick brown fox jumps over the lazy dog 123",
    "中文测试 日本語 emoji 🦙",
    "I'm sure they've said it's fine; we'll see.",
]


def _as_embedding_gemma(folder: Path) -> None:
    import torch
    from safetensors.torch import save_file

    # HF's GemmaTokenizer reads the test's tokenizer.model with Gemma's own settings (no
    # dummy prefix, extra tokens); this SentencePiece model is Llama-style, as llama.cpp reads it
    config = json.loads((folder / "tokenizer_config.json").read_text())
    config |= {"tokenizer_class": "LlamaTokenizer", "add_bos_token": True, "pad_token": "<unk>"}
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    kind = "sentence_transformers.models."
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": kind + "Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": kind + "Pooling"},
        {"idx": 2, "name": "2", "path": "2_Dense", "type": kind + "Dense"},
        {"idx": 3, "name": "3", "path": "3_Dense", "type": kind + "Dense"},
        {"idx": 4, "name": "4", "path": "4_Normalize", "type": kind + "Normalize"},
    ]
    (folder / "modules.json").write_text(json.dumps(modules))
    (folder / "1_Pooling").mkdir()
    pooling = {"word_embedding_dimension": GEMMA3["hidden_size"], "pooling_mode_mean_tokens": True}
    (folder / "1_Pooling" / "config.json").write_text(json.dumps(pooling))
    torch.manual_seed(1)
    width = GEMMA3["hidden_size"]
    for path, (n_in, n_out) in (
        ("2_Dense", (width, DENSE_WIDTH)),
        ("3_Dense", (DENSE_WIDTH, width)),
    ):
        (folder / path).mkdir()
        config = {
            "in_features": n_in,
            "out_features": n_out,
            "bias": False,
            "activation_function": "torch.nn.modules.linear.Identity",
        }
        (folder / path / "config.json").write_text(json.dumps(config))
        weight = torch.randn(n_out, n_in) * 0.2
        save_file({"linear.weight": weight}, str(folder / path / "model.safetensors"))
    (folder / "4_Normalize").mkdir()
    st_config = {"prompts": PROMPTS, "default_prompt_name": None}
    (folder / "config_sentence_transformers.json").write_text(json.dumps(st_config))


@pytest.mark.e2e
def test_served_embeddings_match_sentence_transformers(
    checkpoint: Any, helpers: Any, tmp_path: Path
) -> None:
    from sentence_transformers import SentenceTransformer

    built = checkpoint("Gemma3TextModel", "Gemma3TextConfig", GEMMA3, tokenizer="spm")
    _as_embedding_gemma(built.folder)
    assert detect(built.folder).llama_arch == "gemma-embedding"
    out = tmp_path / "embedding-gemma.gguf"
    report = convert(built.folder, out, outtype="f32")
    assert report.verified
    reader = gguf.GGUFReader(out)
    fields = {name: f.contents() for name, f in reader.fields.items()}
    arch = "gemma-embedding"
    assert fields[gguf.Keys.LLM.POOLING_TYPE.format(arch=arch)] == gguf.PoolingType.MEAN
    assert fields[gguf.Keys.Attention.CAUSAL.format(arch=arch)] is False
    assert fields[keys.EMBEDDING_MATRYOSHKA] is True
    shapes = {t.name: list(t.shape) for t in reader.tensors}
    assert shapes["dense_2.weight"] == [GEMMA3["hidden_size"], DENSE_WIDTH]
    assert shapes["dense_3.weight"] == [DENSE_WIDTH, GEMMA3["hidden_size"]]

    reference = SentenceTransformer(str(built.folder), device="cpu")
    want = reference.encode(TEXTS, prompt_name="query")
    worker = start_worker(
        tmp_path, "--model", str(out), "--threads", str(THREADS), "--parallel", "1"
    )
    try:
        reply = httpx.post(
            f"{worker.url}/v1/embeddings", json={"input": TEXTS, "prompt_name": "query"}, timeout=60
        )
    finally:
        assert worker.stop() == 0
    assert reply.status_code == 200, reply.text
    got = np.array([d["embedding"] for d in reply.json()["data"]])
    cosines = helpers.cosines(got, want)
    print("EmbeddingGemma cosine per text:", np.round(cosines, 7))
    assert cosines.min() >= 0.9999
    assert np.allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
