"""gpt-oss (`GptOssForCausalLM`, llama.cpp arch `gpt-oss`, its openai-moe graph).

Facts from transformers' modeling_gpt_oss and integrations/mxfp4.py, and llama.cpp's
src/models/openai-moe.cpp and conversion/gpt_oss.py:
- Attention with q/k/v/o biases, grouped-query heads of `head_dim` (not hidden/heads), a
  learned per-head sink logit in every softmax (`self_attn.sinks` -> attn_sinks), rotate-half
  RoPE (NEOX in llama.cpp: no Q/K permutation) with YaRN; layers alternate sliding-window and
  full attention (`layer_types`, written as the per-layer pattern).
- `post_attention_layernorm` is the pre-MoE norm (attn_post_norm for this arch).
- Every layer is sparse: a router with a bias (softmax over the top-k logits), experts with
  biases and a clamped SwiGLU whose alpha 1.702 and limit 7 llama.cpp hard-codes. Gate and up
  are interleaved along the 2F rows of `gate_up_proj` (gate even, up odd).
- Released checkpoints store the expert matrices as MXFP4: `*_blocks` [E, rows, cols/32, 16]
  (two E2M1 codes a byte, low nibble first) and `*_scales` [E, rows, cols/32] (E8M0, 2^(s-127)).
  GGML's MXFP4 block is that exponent byte then 16 bytes holding the block's first 16 codes in
  the low nibbles and the last 16 in the high ones (its value table is doubled and its
  exponent halved, so the byte is copied): the nibbles are reordered and the values kept
  exactly, whatever the outtype. A dequantized checkpoint (transformers' own save:
  gate_up_proj [E, D, 2F], down_proj [E, F, D]) is transposed and written like other weights.
- YaRN `truncate: false` (released configs): llama.cpp always rounds the correction range
  outward (ggml_rope_yarn_corr_dims), as it does for gpt-oss files from its own converter; the
  scaling is written with that rounding (a small difference in a few mid frequencies).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable

import gguf
import numpy as np

from llorch.convert.errors import ConfigError, MissingExpertError, ShapeMismatchError
from llorch.convert.families import rope
from llorch.convert.families.base import (
    ModelInput,
    PlannedTensor,
    cfg_float,
    cfg_int,
    dims,
    expected_shapes,
    map_tensors,
    rope_params,
    write_common,
)
from llorch.convert.families.moe import transposed_stacker
from llorch.detector.safetensors import Checkpoint

_T = gguf.MODEL_TENSOR
_MXFP4 = gguf.GGMLQuantizationType.MXFP4
Loader = Callable[[], np.ndarray]
# llama.cpp's LLM_FFN_SWIGLU_OAI_MOE constants
SWIGLU = {"swiglu_alpha": 1.702, "swiglu_limit": 7.0}
EXPERTS = re.compile(r"(model\.layers\.(\d+)\.mlp\.experts\.)(gate_up_proj|down_proj)(.*)")
OUT = {"gate": _T.FFN_GATE_EXP, "up": _T.FFN_UP_EXP, "down": _T.FFN_DOWN_EXP}


def _check(model: ModelInput) -> None:
    where = model.folder / "config.json"
    for key, value in SWIGLU.items():
        if cfg_float(model, key, default=value) != value:
            raise ConfigError(
                f"{where}: {key}={model.config[key]} is not supported (llama.cpp's gpt-oss graph "
                f"uses {value})"
            )
    quant = model.config.get("quantization_config") or {}
    if quant and quant.get("quant_method") != "mxfp4":
        raise ConfigError(
            f"{where}: quantization {quant.get('quant_method')!r} is not supported for "
            f"{model.hf_architecture} (supported: mxfp4 experts, or unquantized)"
        )


def _rounded_yarn(model: ModelInput) -> ModelInput:
    params = {k: v for k, v in rope_params(model).items() if k != "truncate"}
    config = {**model.config, "rope_scaling": None, "rope_parameters": params}
    return dataclasses.replace(model, config=config)


def write_hparams(model: ModelInput, w: gguf.GGUFWriter) -> None:
    _check(model)
    d = write_common(model, w)
    w.add_rope_dimension_count(d.head_dim)
    rope.write_scaling(_rounded_yarn(model), w)
    w.add_expert_count(cfg_int(model, "num_local_experts", "num_experts"))
    w.add_expert_used_count(cfg_int(model, "num_experts_per_tok"))
    w.add_expert_feed_forward_length(d.n_ff)
    types = model.config.get("layer_types") or []
    if "sliding_attention" in types:
        w.add_sliding_window(cfg_int(model, "sliding_window"))
        w.add_sliding_window_pattern([t == "sliding_attention" for t in types])
    elif model.config.get("sliding_window"):  # transformers' default pattern: even layers
        w.add_sliding_window(cfg_int(model, "sliding_window"))
        w.add_sliding_window_pattern([i % 2 == 0 for i in range(d.n_layer)])


def _name(kind: gguf.MODEL_TENSOR, layer: int, suffix: str) -> str:
    return gguf.TENSOR_NAMES[kind].format(bid=layer) + suffix


def _rows(part: str) -> slice:
    return {"gate": slice(0, None, 2), "up": slice(1, None, 2)}.get(part, slice(None))


def _mxfp4(ckpt: Checkpoint, blocks: str, scales: str, rows: slice) -> Loader:
    """GGML MXFP4 bytes [E, rows, cols/32 * 17], filled one expert at a time."""

    def load() -> np.ndarray:
        b, s = ckpt.raw(blocks), ckpt.raw(scales)
        n_expert, n_rows, n_blocks = b[:, rows].shape[:3]
        out = np.empty((n_expert, n_rows, n_blocks, 17), np.uint8)
        codes = np.empty((n_rows, n_blocks, 32), np.uint8)
        for e in range(n_expert):
            codes[..., 0::2] = b[e, rows] & 0x0F
            codes[..., 1::2] = b[e, rows] >> 4
            out[e, :, :, 0] = s[e, rows]
            out[e, :, :, 1:] = codes[..., :16] | (codes[..., 16:] << 4)
        return out.reshape(n_expert, n_rows, n_blocks * 17)

    return load


def _bias(ckpt: Checkpoint, name: str, rows: slice) -> Loader:
    return lambda: np.ascontiguousarray(ckpt.load_f32(name)[:, rows])


def _expert_plans(model: ModelInput, n_expert: int) -> list[PlannedTensor]:
    """ffn_{gate,up,down}_exps weights and biases of every layer, from either layout."""
    d = dims(model)
    found: dict[tuple[int, str, str], str] = {}
    for name in model.ckpt.names():
        if m := EXPERTS.fullmatch(name):
            found[(int(m[2]), m[3], m[4])] = name
    plans = []
    for layer in range(d.n_layer):
        for part, kind in OUT.items():
            proj = "down_proj" if part == "down" else "gate_up_proj"
            # output [E, rows, cols]; the checkpoint holds gate and up rows interleaved
            n_rows, n_cols = (d.n_embd, d.n_ff) if part == "down" else (d.n_ff, d.n_embd)
            shape, rows = (n_expert, n_rows, n_cols), _rows(part)
            stored = (n_expert, n_rows if part == "down" else 2 * n_rows)
            src = {k: found.get((layer, proj, k)) for k in ("_blocks", "_scales", "", "_bias")}
            weight = _name(kind, layer, ".weight")
            if (blocks := src["_blocks"]) and (scales := src["_scales"]):
                _shape(model, blocks, (*stored, n_cols // 32, 16))
                _shape(model, scales, (*stored, n_cols // 32))
                load = _mxfp4(model.ckpt, blocks, scales, rows)
                plans.append(PlannedTensor(weight, shape, load, (blocks, scales), qtype=_MXFP4))
            elif dense := src[""]:
                _shape(model, dense, (n_expert, n_cols, stored[1]))
                load = transposed_stacker(model.ckpt, dense, rows, shape)
                plans.append(PlannedTensor(weight, shape, load, (dense,)))
            else:
                raise MissingExpertError(f"{model.folder}: layer {layer} has no experts.{proj}")
            if (bias := src["_bias"]) is None:
                raise MissingExpertError(f"{model.folder}: layer {layer} lacks experts.{proj}_bias")
            _shape(model, bias, stored)
            name = _name(kind, layer, ".bias")
            plans.append(
                PlannedTensor(name, shape[:2], _bias(model.ckpt, bias, rows), (bias,), True)
            )
    return plans


def _shape(model: ModelInput, name: str, want: tuple[int, ...]) -> None:
    if model.ckpt.shape(name) != want:
        raise ShapeMismatchError(
            f"{model.ckpt.refs[name].file}: tensor {name!r} has shape "
            f"{list(model.ckpt.shape(name))}, config.json implies {list(want)}"
        )


def _rename(name: str) -> str | None:
    return name + ".weight" if name.endswith(".self_attn.sinks") else name


def plan(model: ModelInput) -> list[PlannedTensor]:
    _check(model)
    d = dims(model)
    n_expert = cfg_int(model, "num_local_experts", "num_experts")
    stacked = _expert_plans(model, n_expert)
    expected = expected_shapes(model, d)
    expected.update(
        {
            _T.ATTN_SINKS: (d.n_head,),
            _T.ATTN_POST_NORM: (d.n_embd,),
            _T.FFN_GATE_INP: (n_expert, d.n_embd),
        }
    )
    plans = map_tensors(
        model,
        expected=expected,
        claimed=frozenset(name for p in stacked for name in p.sources),
        rename=_rename,
    )
    return plans + stacked
