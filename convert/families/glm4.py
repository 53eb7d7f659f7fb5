"""GLM-4-0414 dense (`Glm4ForCausalLM`, llama.cpp arch `glm4`).

Facts from transformers' modeling_glm4 and llama.cpp's src/models/glm4.cpp and its converter
(Glm4Model):
- Sandwich norms: `input_layernorm` before attention, `post_self_attn_layernorm` after it,
  `post_attention_layernorm` before the MLP, `post_mlp_layernorm` after it.
- q/k/v biases; the MLP's `gate_up_proj` is fused [gate; up], which llama.cpp's SwiGLU reads
  as is (first half gated by SiLU).
- RoPE on the first `partial_rotary_factor` (0.5) of each head, interleaved pairs: HF's GLM
  rotate_half pairs adjacent values, llama.cpp runs glm4 with normal (non-NEOX) rope, so Q/K
  need no permutation; the rotated dimension count is written.
"""

from __future__ import annotations

import gguf

from llorch.convert.families import rope
from llorch.convert.families.base import (
    ModelInput,
    PlannedTensor,
    dims,
    expected_shapes,
    map_tensors,
    rotary_dims,
    write_common,
)

_T = gguf.MODEL_TENSOR


def write_hparams(model: ModelInput, w: gguf.GGUFWriter) -> None:
    d = write_common(model, w)
    w.add_rope_dimension_count(rotary_dims(model, d.head_dim))
    rope.write_scaling(model, w)  # YaRN over the rotated dimensions, as transformers


def plan(model: ModelInput) -> list[PlannedTensor]:
    d = dims(model)
    expected = expected_shapes(model, d)
    expected[_T.FFN_UP] = (2 * d.n_ff, d.n_embd)
    for norm in (_T.ATTN_POST_NORM, _T.FFN_POST_NORM):
        expected[norm] = (d.n_embd,)
    return map_tensors(model, expected=expected)
