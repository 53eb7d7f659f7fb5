"""OLMo 2 and OLMo 3 (`Olmo2ForCausalLM`, `Olmo3ForCausalLM`; llama.cpp arch `olmo2`).

Facts from transformers' modeling_olmo2 and llama.cpp's src/models/olmo2.cpp: norms after
attention and after the MLP instead of before (`post_attention_layernorm` ->
attn_post_norm, `post_feedforward_layernorm` -> ffn_post_norm), RMS norms over the whole Q
(n_embd) and K (kv heads x head_dim) projections before RoPE, rotate-half RoPE (NEOX in
llama.cpp: no Q/K permutation), untied output.
OLMo 3 adds sliding-window attention on the layers `layer_types` names (three of every four
in the released models), written as llama.cpp's sliding window and per-layer pattern, with
the sliding layers' own RoPE base when transformers gives RoPE parameters per layer type.
"""

from __future__ import annotations

from typing import Any

import gguf

from llorch.convert.errors import ConfigError
from llorch.convert.families import rope
from llorch.convert.families.base import (
    ModelInput,
    PlannedTensor,
    dims,
    expected_shapes,
    map_tensors,
    rope_params,
    write_common,
)

_T = gguf.MODEL_TENSOR


def _sliding_rope(model: ModelInput) -> dict[str, Any]:
    params = model.config.get("rope_parameters") or {}
    return dict(params.get("sliding_attention") or rope_params(model))


def write_hparams(model: ModelInput, w: gguf.GGUFWriter) -> None:
    types = model.config.get("layer_types")
    window = int(model.config.get("sliding_window") or 0)
    sliding = window > 0 and isinstance(types, list) and "sliding_attention" in types
    # llama.cpp applies YaRN to every layer; OLMo 3 scales only its full-attention layers
    for params in (rope_params(model), _sliding_rope(model)) if sliding else ():
        kind = params.get("rope_type", "default")
        if kind != "default":
            raise ConfigError(
                f"{model.folder / 'config.json'}: rope_type {kind!r} is not supported for "
                f"{model.hf_architecture} with sliding-window layers (llama.cpp's olmo2 graph "
                "would scale the sliding layers too; supported: default)"
            )
    d = write_common(model, w)
    rope.write_scaling(model, w)
    if sliding and isinstance(types, list):
        if len(types) != d.n_layer:
            raise ConfigError(
                f"{model.folder / 'config.json'}: layer_types has {len(types)} entries for "
                f"{d.n_layer} layers"
            )
        w.add_sliding_window(window)
        w.add_sliding_window_pattern([t == "sliding_attention" for t in types])
        theta = _sliding_rope(model).get("rope_theta")
        if theta is not None:
            w.add_rope_freq_base_swa(float(theta))


def plan(model: ModelInput) -> list[PlannedTensor]:
    d = dims(model)
    expected = expected_shapes(model, d)
    expected[_T.ATTN_Q_NORM] = (d.n_head * d.head_dim,)
    expected[_T.ATTN_K_NORM] = (d.n_head_kv * d.head_dim,)
    expected[_T.ATTN_POST_NORM] = (d.n_embd,)
    expected[_T.FFN_POST_NORM] = (d.n_embd,)
    return map_tensors(model, expected=expected)
