"""StarCoder 1 / SantaCoder (`GPTBigCodeForCausalLM`, llama.cpp arch `starcoder`).

Facts from transformers' modeling_gpt_bigcode and llama.cpp's src/models/starcoder.cpp:
GPT-2-style blocks (LayerNorm with biases, learned absolute positions `wpe` of n_positions
rows, tanh-GELU MLP, biases everywhere, tied lm_head) with multi-query attention: the fused
`c_attn` is [all query heads; one key head; one value head], the order llama.cpp's fused QKV
wants, so it is written as is. Without multi_query, GPTBigCode interleaves q/k/v per head,
which llama.cpp's graph does not read; such checkpoints are refused.
"""

from __future__ import annotations

import gguf

from llorch.convert.errors import ConfigError
from llorch.convert.families.base import (
    ModelInput,
    PlannedTensor,
    cfg_int,
    dims,
    expected_shapes,
    map_tensors,
    write_common,
)

_T = gguf.MODEL_TENSOR
GELU = ("gelu_pytorch_tanh", "gelu_new", "gelu_fast", "gelu")


def _check(model: ModelInput) -> None:
    where = model.folder / "config.json"
    if not model.config.get("multi_query", True):
        raise ConfigError(
            f"{where}: GPTBigCode with multi_query=false is not supported (per-head "
            "interleaved q/k/v, which llama.cpp's starcoder graph does not read)"
        )
    act = model.config.get("activation_function", "gelu_pytorch_tanh")
    if act not in GELU:
        raise ConfigError(f"{where}: activation_function {act!r} is not supported (GELU only)")
    if model.config.get("scale_attn_weights") is False:
        raise ConfigError(f"{where}: scale_attn_weights=false is not supported by llama.cpp")


def write_hparams(model: ModelInput, w: gguf.GGUFWriter) -> None:
    _check(model)
    write_common(model, w, rms=False)


def plan(model: ModelInput) -> list[PlannedTensor]:
    _check(model)
    d = dims(model)
    expected = expected_shapes(model, d)
    expected[_T.POS_EMBD] = (cfg_int(model, "n_positions", "max_position_embeddings"), d.n_embd)
    expected[_T.ATTN_QKV] = ((d.n_head + 2 * d.n_head_kv) * d.head_dim, d.n_embd)
    return map_tensors(model, expected=expected, keep_f32=frozenset({_T.POS_EMBD}))
