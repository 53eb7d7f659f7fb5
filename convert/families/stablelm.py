"""StableLM 2 / StableLM-3B-4E1T (`StableLmForCausalLM`, llama.cpp arch `stablelm`).

Facts from transformers' modeling_stablelm and llama.cpp's src/models/stablelm.cpp:
LayerNorm with bias, SwiGLU MLP, optional q/k/v biases (`use_qkv_bias`), rotate-half RoPE
over `partial_rotary_factor` of each head (NEOX in llama.cpp, no permutation), and an
optional parallel residual (`use_parallel_residual`: llama.cpp takes it when the block has no
ffn_norm). Per-head Q/K LayerNorms (`qk_layernorm`, StableLM 2 12B) are not supported.
Hyperparameters and tensors are written as phi2.py writes Phi-2's (LayerNorm, partial NEOX
RoPE, every tensor under its mapped name), plus the parallel-residual flag.
"""

from __future__ import annotations

import gguf

from llorch.convert.errors import ConfigError
from llorch.convert.families import phi2
from llorch.convert.families.base import ModelInput

plan = phi2.plan


def write_hparams(model: ModelInput, w: gguf.GGUFWriter) -> None:
    if model.config.get("qk_layernorm"):
        raise ConfigError(
            f"{model.folder / 'config.json'}: qk_layernorm=true (StableLM 2 12B) is not "
            "supported yet"
        )
    phi2.write_layernorm_partial_rope(model, w)
    w.add_parallel_residual(bool(model.config.get("use_parallel_residual", False)))
