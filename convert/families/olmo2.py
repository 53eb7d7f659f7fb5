"""OLMo 2 (`Olmo2ForCausalLM`, llama.cpp arch `olmo2`).

Facts from transformers' modeling_olmo2 and llama.cpp's src/models/olmo2.cpp: norms after
attention and after the MLP instead of before (`post_attention_layernorm` ->
attn_post_norm, `post_feedforward_layernorm` -> ffn_post_norm), RMS norms over the whole Q
(n_embd) and K (kv heads x head_dim) projections before RoPE, rotate-half RoPE (NEOX in
llama.cpp: no Q/K permutation), untied output.
"""

from __future__ import annotations

import gguf

from llorch.convert.errors import ConfigError
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


def write_hparams(model: ModelInput, w: gguf.GGUFWriter) -> None:
    kind = rope_params(model).get("rope_type", "default")
    if kind != "default":
        raise ConfigError(
            f"{model.folder / 'config.json'}: rope_type {kind!r} is not supported for "
            f"{model.hf_architecture} (supported: default)"
        )
    write_common(model, w)


def plan(model: ModelInput) -> list[PlannedTensor]:
    d = dims(model)
    expected = expected_shapes(model, d)
    expected[_T.ATTN_Q_NORM] = (d.n_head * d.head_dim,)
    expected[_T.ATTN_K_NORM] = (d.n_head_kv * d.head_dim,)
    expected[_T.ATTN_POST_NORM] = (d.n_embd,)
    expected[_T.FFN_POST_NORM] = (d.n_embd,)
    return map_tensors(model, expected=expected)
