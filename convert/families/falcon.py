"""Falcon 7B/40B/180B (`FalconForCausalLM`, llama.cpp arch `falcon`).

Facts from transformers' modeling_falcon (FalconAttention._split_heads) and llama.cpp's
src/models/falcon.cpp and convert_hf_to_gguf.py (FalconModel):
- The fused query_key_value weight is grouped per KV head in the "new decoder architecture"
  (40B/180B): for each of the n_head_kv groups, n_head/n_head_kv query heads, then one key and
  one value head. llama.cpp wants all Q rows, then all K, then all V, so the rows are regrouped.
  Multi-query 7B stores [Q heads, K, V] already, which the same regrouping leaves unchanged.
- llama.cpp's graph always runs attention and MLP in parallel from the same input, with one
  LayerNorm (7B) or two (ln_attn, ln_mlp -> attn_norm, attn_norm_2), no linear biases, RoPE
  (NEOX). Configs outside that (bias, alibi, sequential blocks, per-head interleaved QKV of
  falcon-rw) are refused by name.
"""

from __future__ import annotations

import gguf
import numpy as np

from llorch.convert.errors import ConfigError
from llorch.convert.families import rope
from llorch.convert.families.base import (
    ModelInput,
    PlannedTensor,
    dims,
    expected_shapes,
    map_tensors,
    write_common,
)

_T = gguf.MODEL_TENSOR


def _check(model: ModelInput) -> None:
    where = model.folder / "config.json"
    if not (model.config.get("new_decoder_architecture") or model.config.get("multi_query")):
        raise ConfigError(
            f"{where}: Falcon without multi_query or new_decoder_architecture (per-head "
            "interleaved QKV, falcon-rw) is not supported by llama.cpp"
        )
    for key, bad in (("bias", True), ("alibi", True), ("parallel_attn", False)):
        if bool(model.config.get(key, not bad)) == bad:
            raise ConfigError(
                f"{where}: Falcon with {key}={str(bad).lower()} is not supported (llama.cpp's "
                "falcon graph has parallel attention/MLP, RoPE and no linear biases)"
            )


def write_hparams(model: ModelInput, w: gguf.GGUFWriter) -> None:
    _check(model)
    write_common(model, w, rms=False)
    rope.write_scaling(model, w)
    w.add_tensor_data_layout("jploski")  # llama.cpp's name for the regrouped QKV


def regroup_qkv(w: np.ndarray, n_head: int, n_kv: int) -> np.ndarray:
    head_dim = w.shape[0] // (n_head + 2 * n_kv)
    grouped = w.reshape(n_kv, n_head // n_kv + 2, head_dim, w.shape[1])
    q = grouped[:, :-2].reshape(n_head * head_dim, w.shape[1])
    k = grouped[:, -2].reshape(n_kv * head_dim, w.shape[1])
    v = grouped[:, -1].reshape(n_kv * head_dim, w.shape[1])
    return np.concatenate([q, k, v], axis=0)


def plan(model: ModelInput) -> list[PlannedTensor]:
    _check(model)
    d = dims(model)
    kv = d.n_head_kv
    expected = expected_shapes(model, d)
    expected[_T.ATTN_QKV] = ((d.n_head + 2 * kv) * d.head_dim, d.n_embd)
    expected[_T.ATTN_NORM_2] = (d.n_embd,)
    transforms = {_T.ATTN_QKV: lambda name, w: regroup_qkv(w, d.n_head, kv)}
    return map_tensors(model, transforms=transforms, expected=expected)
