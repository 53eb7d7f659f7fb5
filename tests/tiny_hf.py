"""Tiny Llama checkpoints written with numpy and tokenizers (no torch): fast to build, for
tests that need many sources rather than a reference model (batch conversion).

`hf_cache_repo` lays a folder out as huggingface_hub's cache does (blobs named by content,
snapshots/<commit> of links, refs/<branch>), so `hf:org/name` sources resolve offline.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np

CORPUS = [
    "hello world this is a test of the tokenizer, with code: def f(x): return x + 1",
    "the quick brown fox jumps over the lazy dog 123 4567 3.14",
    "I'm sure they've said it's fine; we'll see. {\"json\": [1, 2]}",
] * 20


def _tokenizer(folder: Path) -> int:
    from tokenizers import Tokenizer, decoders, models, trainers
    from tokenizers import pre_tokenizers as pt

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pt.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=["<|bos|>", "<|eos|>"],
        initial_alphabet=pt.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS, trainer)
    tok.save(str(folder / "tokenizer.json"))
    config = {"bos_token": "<|bos|>", "eos_token": "<|eos|>", "add_bos_token": False}
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    return int(tok.get_vocab_size())


def tiny_llama(folder: Path, *, hidden: int = 64, seed: int = 0, name: str | None = None) -> Path:
    """A one-layer LlamaForCausalLM with random F32 weights, config and tokenizer."""
    from safetensors.numpy import save_file

    folder.mkdir(parents=True, exist_ok=True)
    n_vocab = _tokenizer(folder)
    inter = 2 * hidden
    config = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": hidden,
        "intermediate_size": inter,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "num_key_value_heads": 2,
        "vocab_size": n_vocab,
        "max_position_embeddings": 128,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "tie_word_embeddings": True,
        "bos_token_id": 0,
        "eos_token_id": 1,
        "torch_dtype": "float32",
    }
    if name is not None:
        config["_name_or_path"] = name
    (folder / "config.json").write_text(json.dumps(config))
    rng = np.random.default_rng(seed)
    shapes = {
        "model.embed_tokens.weight": (n_vocab, hidden),
        "model.norm.weight": (hidden,),
        "model.layers.0.input_layernorm.weight": (hidden,),
        "model.layers.0.post_attention_layernorm.weight": (hidden,),
        "model.layers.0.self_attn.q_proj.weight": (hidden, hidden),
        "model.layers.0.self_attn.k_proj.weight": (hidden, hidden),
        "model.layers.0.self_attn.v_proj.weight": (hidden, hidden),
        "model.layers.0.self_attn.o_proj.weight": (hidden, hidden),
        "model.layers.0.mlp.gate_proj.weight": (inter, hidden),
        "model.layers.0.mlp.up_proj.weight": (inter, hidden),
        "model.layers.0.mlp.down_proj.weight": (hidden, inter),
    }
    tensors = {k: rng.normal(0, 0.08, s).astype(np.float32) for k, s in shapes.items()}
    save_file(tensors, str(folder / "model.safetensors"))
    return folder


def hf_cache_repo(cache: Path, repo_id: str, files_from: Path, commit: str = "a" * 40) -> Path:
    """Put `files_from`'s files into an HF hub cache at `cache` as repo_id's `main` snapshot."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / commit
    (repo / "blobs").mkdir(parents=True, exist_ok=True)
    snapshot.mkdir(parents=True, exist_ok=True)
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text(commit)
    for f in sorted(files_from.iterdir()):
        data = f.read_bytes()
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        os.symlink(os.path.relpath(blob, snapshot), snapshot / f.name)
    return snapshot
