"""StarCoder2 (`Starcoder2ForCausalLM`, llama.cpp arch `starcoder2`).

Facts from transformers' modeling_starcoder2 and llama.cpp's src/models/starcoder2.cpp:
LayerNorm with bias (`norm_epsilon`), biases on all projections (`use_bias`), GELU (tanh)
MLP c_fc/c_proj, rotate-half RoPE (NEOX, no permutation), embeddings tied by default (no
lm_head stored; llama.cpp reuses token_embd). llama.cpp has no sliding window for this arch;
HF applies `sliding_window` (4096 in the released configs) only to longer sequences.
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


def write_hparams(model: ModelInput, w: gguf.GGUFWriter) -> None:
    write_common(model, w, rms=False)
    rope.write_scaling(model, w)


def plan(model: ModelInput) -> list[PlannedTensor]:
    return map_tensors(model, expected=expected_shapes(model, dims(model)))
