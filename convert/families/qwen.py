"""Qwen2 (1.5/2/2.5) and Qwen3 (llama.cpp arches `qwen2`, `qwen3`).

Facts from transformers' modeling_qwen2/modeling_qwen3 and llama.cpp's qwen2/qwen3 graphs:
both use HF's rotate-half RoPE, which llama.cpp runs as NEOX rope for these arches, so Q/K
need no permutation. Qwen2 has q/k/v biases; Qwen3 has none but RMS-normalises Q and K per
head (q_norm/k_norm of size head_dim) and sets head_dim explicitly. Tied embeddings (0.5B-3B
sizes) leave out lm_head and llama.cpp reuses token_embd.
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
    write_common,
)

_T = gguf.MODEL_TENSOR


def write_hparams(model: ModelInput, w: gguf.GGUFWriter) -> None:
    write_common(model, w)
    rope.write_scaling(model, w)


def plan(model: ModelInput) -> list[PlannedTensor]:
    d = dims(model)
    expected = expected_shapes(model, d)
    expected[_T.ATTN_Q_NORM] = (d.head_dim,)
    expected[_T.ATTN_K_NORM] = (d.head_dim,)
    return map_tensors(model, expected=expected)
