"""Gemma, Gemma 2 and Gemma 3 text (llama.cpp arches `gemma`, `gemma2`, `gemma3`).

Facts from transformers' modeling_gemma*/configuration_gemma* and llama.cpp's
src/models/gemma*.cpp:
- Every RMSNorm computes x * (1 + w); llama.cpp multiplies by the stored weight, so all norm
  weights (including Gemma 3's per-head q/k norms) are written as w + 1.
- Embeddings are scaled by sqrt(hidden_size) inside llama.cpp's graph; lm_head is always tied.
- RoPE is rotate-half (NEOX in llama.cpp): no Q/K permutation.
- llama.cpp scales queries by 1/sqrt(head_dim), except for the 27B models (detected by layer
  count) where it uses 1/sqrt(hidden/heads). `query_pre_attn_scalar` must match that.
- Gemma 2: attention and final logit soft-capping; sliding window on alternate layers.
- Gemma 3: sliding layers use their own RoPE base (rope_local_base_freq, or
  rope_parameters.sliding_attention) without the global layers' linear scaling.
The per-layer sliding pattern is written as a bool array from config `layer_types`.
Gemma3ForConditionalGeneration (Gemma 3 4B/12B/27B) converts its language model only
(the table's text_part: `vision_tower.*` and `multi_modal_projector.*` are left out).
"""

from __future__ import annotations

import gguf
import numpy as np

from llorch.convert.errors import ConfigError
from llorch.convert.families.base import (
    ModelInput,
    PlannedTensor,
    cfg_float,
    dims,
    expected_shapes,
    map_tensors,
    rope_params,
    write_common,
)

_T = gguf.MODEL_TENSOR
_A = gguf.MODEL_ARCH
NORMS = frozenset(
    {
        _T.ATTN_NORM,
        _T.FFN_NORM,
        _T.FFN_PRE_NORM,
        _T.OUTPUT_NORM,
        _T.ATTN_POST_NORM,
        _T.FFN_POST_NORM,
        _T.ATTN_Q_NORM,
        _T.ATTN_K_NORM,
    }
)
# llama.cpp's 27B special case: layer count -> arch (src/models/gemma2.cpp, gemma3.cpp)
LAYERS_27B = {_A.GEMMA2: 46, _A.GEMMA3: 62}


def _rope(model: ModelInput) -> tuple[dict, dict]:
    """(global, local) RoPE parameter dicts from either config generation."""
    params = model.config.get("rope_parameters") or {}
    if "full_attention" in params:
        return dict(params["full_attention"]), dict(params.get("sliding_attention") or {})
    glob = dict(model.config.get("rope_scaling") or {})
    glob.update(params)
    glob.setdefault("rope_theta", model.config.get("rope_theta", 10000.0))
    local = {"rope_theta": model.config.get("rope_local_base_freq", glob["rope_theta"])}
    return glob, local


def _check_query_scale(model: ModelInput) -> None:
    d = dims(model)
    scalar = model.config.get("query_pre_attn_scalar")
    if scalar is None or model.arch == _A.GEMMA:
        return
    is_27b = d.n_layer == LAYERS_27B.get(model.arch)
    llama_cpp_scalar = d.n_embd // d.n_head if is_27b else d.head_dim
    if int(scalar) != llama_cpp_scalar:
        raise ConfigError(
            f"{model.folder / 'config.json'}: query_pre_attn_scalar={scalar} but llama.cpp "
            f"scales queries by 1/sqrt({llama_cpp_scalar}) for this model; it would compute "
            "different attention"
        )


def write_hparams(model: ModelInput, w: gguf.GGUFWriter) -> None:
    _check_query_scale(model)
    d = write_common(model, w)
    glob, local = _rope(model)
    if "rope_theta" not in rope_params(model):  # else write_common wrote the same value
        w.add_rope_freq_base(float(glob.get("rope_theta", 10000.0)))
    kind = glob.get("rope_type", glob.get("type", "default"))
    if kind == "linear":
        w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        w.add_rope_scaling_factor(float(glob["factor"]))
    elif kind != "default":
        raise ConfigError(
            f"{model.folder / 'config.json'}: rope_type {kind!r} is not supported for "
            f"{model.hf_architecture} (supported: default, linear)"
        )
    if model.arch == _A.GEMMA:
        return
    window = model.config.get("sliding_window")
    if window:
        w.add_sliding_window(int(window))
        types = model.config.get("layer_types")
        if isinstance(types, list) and len(types) == d.n_layer:
            w.add_sliding_window_pattern([t == "sliding_attention" for t in types])
    if model.arch in (_A.GEMMA3, _A.GEMMA_EMBEDDING) and window:
        w.add_rope_freq_base_swa(float(local.get("rope_theta", 10000.0)))
    for key, setter in (
        ("attn_logit_softcapping", w.add_attn_logit_softcapping),
        ("final_logit_softcapping", w.add_final_logit_softcapping),
    ):
        value = model.config.get(key)
        if value is not None:
            setter(cfg_float(model, key))


def _plus_one(name: str, w: np.ndarray) -> np.ndarray:
    del name
    return w + np.float32(1.0)


def plan(model: ModelInput) -> list[PlannedTensor]:
    d = dims(model)
    expected = expected_shapes(model, d)
    expected.update(
        {
            _T.ATTN_POST_NORM: (d.n_embd,),
            _T.FFN_POST_NORM: (d.n_embd,),
            _T.FFN_PRE_NORM: (d.n_embd,),
            _T.ATTN_Q_NORM: (d.head_dim,),
            _T.ATTN_K_NORM: (d.head_dim,),
        }
    )
    plans = map_tensors(model, transforms=dict.fromkeys(NORMS, _plus_one), expected=expected)
    # lm_head is tied to the embeddings in every Gemma; a stored copy is redundant.
    return [p for p in plans if p.name != gguf.TENSOR_NAMES[_T.OUTPUT] + ".weight"]
