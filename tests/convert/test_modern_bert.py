"""ModernBERT encoders: the GGUF layout from a released-style config, the 128-token sliding
window at work, and the worker serving one as an embedding model.

Per-token parity at the sample length is in test_parity.py (cases modern-bert-*). Here the
tiny checkpoint's config.json is rewritten the way the released checkpoints ship it
(`global_attn_every_n_layers`, `global_rope_theta`, `local_rope_theta`; no `layer_types` or
`rope_parameters`, which transformers 5 derives from them).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import gguf
import numpy as np
import openai
import pytest
from support import THREADS, start_worker

from llorch.convert import convert, llamacpp
from llorch.convert.families import modern_bert
from llorch.detector import detect
from tests.convert.parity_cases import CASES

CONFIG = CASES["modern-bert-mean-pooling"].config  # ModernBERT-base ratios
TEXTS = [
    "A man is eating food.",
    "A man is eating a piece of bread.",
    "The girl is carrying a baby.",
    "Two men pushed carts through the woods.",
    "def f(x): return x + 1  # 3.14159 and 42",
]


def _released(checkpoint: Any, helpers: Any) -> Path:
    """A tiny ModernBERT with mean pooling and Normalize, config.json as released."""
    built = checkpoint("ModernBertModel", "ModernBertConfig", CONFIG, tokenizer="modernbert")
    path = built.folder / "config.json"
    config = json.loads(path.read_text())
    for key in ("layer_types", "rope_parameters"):
        config.pop(key)
    config.update({k: CONFIG[k] for k in ("global_rope_theta", "local_rope_theta")})
    path.write_text(json.dumps(config))
    helpers.write_pooling(built.folder, "mean_tokens")
    pooling = built.folder / "1_Pooling" / "config.json"  # sentence-transformers needs the width
    flags = json.loads(pooling.read_text())
    pooling.write_text(json.dumps({**flags, "word_embedding_dimension": CONFIG["hidden_size"]}))
    modules = json.loads((built.folder / "modules.json").read_text())
    kind = "sentence_transformers.models.Normalize"
    modules.append({"idx": 2, "name": "2", "path": "2_Normalize", "type": kind})
    (built.folder / "modules.json").write_text(json.dumps(modules))
    (built.folder / "2_Normalize").mkdir()
    return built.folder


def test_gguf_layout_from_released_config(checkpoint: Any, helpers: Any, tmp_path: Path) -> None:
    folder = _released(checkpoint, helpers)
    assert detect(folder).llama_arch == "modern-bert"
    out = tmp_path / "mb.gguf"
    report = convert(folder, out, outtype="f32")
    assert (report.llama_arch, report.tokenizer, report.verified) == ("modern-bert", "bpe", True)
    reader = gguf.GGUFReader(out)
    fields = {name: f.contents() for name, f in reader.fields.items()}
    arch = "modern-bert"
    want = {
        gguf.Keys.Attention.CAUSAL: False,
        gguf.Keys.Attention.SLIDING_WINDOW: 128,
        gguf.Keys.Attention.SLIDING_WINDOW_PATTERN: [False, True, True, False],
        gguf.Keys.Rope.FREQ_BASE: 160000.0,
        gguf.Keys.Rope.FREQ_BASE_SWA: 10000.0,
        gguf.Keys.LLM.POOLING_TYPE: gguf.PoolingType.MEAN,
        modern_bert.HIDDEN_ACT_KEY: "gelu",
    }
    assert {k: fields[k.format(arch=arch)] for k in want} == want
    assert fields[gguf.Keys.Tokenizer.MODEL] == "gpt2"
    # [CLS] text [SEP], as the tokenizer's TemplateProcessing adds them
    assert fields[gguf.Keys.Tokenizer.BOS_ID] == 1 and fields[gguf.Keys.Tokenizer.EOS_ID] == 2
    assert fields[gguf.Keys.Tokenizer.ADD_BOS] and fields[gguf.Keys.Tokenizer.ADD_EOS]
    shapes = {t.name: tuple(int(x) for x in t.shape) for t in reader.tensors}  # ggml order
    assert "blk.0.attn_norm.weight" not in shapes and "blk.1.attn_norm.weight" in shapes
    assert shapes["blk.0.attn_qkv.weight"] == (128, 3 * 128)
    assert shapes["blk.0.ffn_up.weight"] == (128, 2 * 192)


@pytest.mark.slow
def test_window_128_over_200_tokens(checkpoint: Any, helpers: Any, tmp_path: Path) -> None:
    """200 tokens: the sliding layers see 64 tokens either side, as transformers masks them;
    the same model without the window is far from llama.cpp's output."""
    import torch
    import transformers

    folder = _released(checkpoint, helpers)
    out = tmp_path / "mb.gguf"
    convert(folder, out, outtype="f32")
    tokens = helpers.sample_tokens(400, n=200)
    ref = helpers.reference_hidden(folder, tokens)
    (got,) = llamacpp.embeddings(out, [tokens], per_token=True)
    cos, rel = helpers.cosines(got, ref).min(), np.abs(got - ref).max() / np.abs(ref).max()
    unwindowed = transformers.AutoModel.from_pretrained(folder, local_attention=1024).eval()
    with torch.no_grad():
        full = unwindowed(torch.tensor([tokens])).last_hidden_state[0].numpy()
    off = np.abs(got - full).max() / np.abs(ref).max()
    print(
        f"PARITY modern-bert-window128-200-tokens f32: cos_min={cos:.7f} rel={rel:.3g} "
        f"(without the window: rel={off:.3g})"
    )
    assert cos >= 0.9999 and rel <= 1e-3
    assert off > 20 * rel


@pytest.mark.slow
@pytest.mark.e2e
def test_served_as_embedding_model(
    checkpoint: Any, helpers: Any, tmp_path: Path, monkeypatch: Any
) -> None:
    """`llorch serve --model` the HF folder: /v1/embeddings gives sentence-transformers'
    vectors (mean pooled, normalised) for the same texts, and generation is refused."""
    from sentence_transformers import SentenceTransformer

    folder = _released(checkpoint, helpers)
    monkeypatch.setenv("LLORCH_CACHE", str(tmp_path / "cache"))
    worker = start_worker(
        tmp_path, "--model", str(folder), "--threads", str(THREADS), "--parallel", "1"
    )
    try:
        client = openai.OpenAI(base_url=f"{worker.url}/v1", api_key="x", max_retries=0)
        result = client.embeddings.create(model="mb", input=TEXTS)
        with pytest.raises(openai.BadRequestError):  # an encoder does not generate
            client.completions.create(model="mb", prompt="Hi", max_tokens=2)
    finally:
        assert worker.stop() == 0
    got = np.array([d.embedding for d in result.data])
    reference = SentenceTransformer(str(folder), device="cpu")
    want = reference.encode(TEXTS, convert_to_numpy=True)
    ids = [reference.tokenizer(text)["input_ids"] for text in TEXTS]
    assert all(i[0] == 1 and i[-1] == 2 for i in ids)  # [CLS] ... [SEP]
    assert result.usage.prompt_tokens == sum(len(i) for i in ids)
    cos = helpers.cosines(got, want)
    print("SERVED modern-bert /v1/embeddings cosine per text:", np.round(cos, 7))
    assert cos.min() >= 0.9999
    assert np.allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
