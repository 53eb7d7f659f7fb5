"""Gemma 4 text (llama.cpp arch `gemma4`): E2B/E4B, 26B-A4B (MoE) and 31B.

Facts from transformers' modeling_gemma4/configuration_gemma4 and llama.cpp's
conversion/gemma.py (Gemma4Model), src/models/gemma4.cpp and src/llama-model.cpp:
- RMSNorm multiplies by the weight (no Gemma 1-3 `1 + w`): norms are copied as is. The
  weightless V norm, unscaled attention and sqrt(hidden) embedding scale are in the graph.
- Full-attention layers have their own head size and KV heads (`global_head_dim`, and
  `num_global_key_value_heads` with attention_k_eq_v, where V reuses K; or transformers 5's
  `per_layer_config`): key_length vs key_length_swa, KV heads per layer.
- Their "proportional" RoPE rotates the first partial_rotary_factor of the frequencies of
  the whole head: llama.cpp rotates the whole head (NEOX) and divides each frequency by
  `rope_freqs`, 1e30 for the unrotated ones, `factor` for the others. Sliding layers:
  default RoPE with their own base.
- E2B/E4B: per-layer embeddings; the last `num_kv_shared_layers` layers reuse KV (llama.cpp:
  of the two layers before them, sliding then full) with MLPs twice as wide if
  use_double_wide_mlp. 26B-A4B: experts beside the dense MLP; router.scale and
  per_expert_scale become ffn_gate_inp.scale and ffn_down_exps.scale.
Gemma4ForConditionalGeneration converts its language model only (the table's text_part:
vision and audio go to an mmproj file in llama.cpp, which llorch does not write).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from functools import partial
from typing import Any

import gguf
import numpy as np

from llorch.convert.errors import ConfigError, ShapeMismatchError
from llorch.convert.families.base import (
    ModelInput,
    PlannedTensor,
    cfg_float,
    cfg_int,
    constant_tensor,
    map_tensors,
)

_T = gguf.MODEL_TENSOR
SLIDING, FULL = "sliding_attention", "full_attention"
DEFAULT_ROPE = {  # Gemma4TextConfig's
    FULL: {"rope_type": "proportional", "partial_rotary_factor": 0.25, "rope_theta": 1e6},
    SLIDING: {"rope_type": "default", "rope_theta": 1e4},
}


@dataclass(frozen=True)
class Layout:
    n_layer: int
    n_embd: int
    n_head: int
    swa: tuple[bool, ...]
    head_dim: dict[bool, int]  # by is-sliding
    n_kv: tuple[int, ...]  # per layer
    n_ff: tuple[int, ...]  # per layer
    n_shared: int
    n_ple: int  # per-layer embedding width (0: none)
    n_expert: int
    n_ff_exp: int


def _err(model: ModelInput, what: str) -> ConfigError:
    return ConfigError(f"{model.folder / 'config.json'}: {what}")


def _layer_types(model: ModelInput, n_layer: int) -> list[str]:
    """As Gemma4TextConfig.__post_init__: 5 sliding, 1 full by default; the last is full."""
    types = model.config.get("layer_types")
    if not isinstance(types, list) or len(types) != n_layer:
        types = [SLIDING if (i + 1) % 6 else FULL for i in range(n_layer)]
    return [*types[:-1], FULL]


def layout(model: ModelInput) -> Layout:
    cfg = model.config
    n_layer = cfg_int(model, "num_hidden_layers")
    types = _layer_types(model, n_layer)
    kv = cfg_int(model, "num_key_value_heads")
    per_layer = cfg.get("per_layer_config")
    if not isinstance(per_layer, dict):  # released configs: what transformers builds from them
        full: dict[str, Any] = {"head_dim": cfg.get("global_head_dim", 512)}
        if cfg.get("attention_k_eq_v") and cfg.get("num_global_key_value_heads"):
            full["num_key_value_heads"] = cfg["num_global_key_value_heads"]
        per_layer = {str(i): full for i, t in enumerate(types) if t == FULL}
    dims: dict[bool, set[int]] = {True: set(), False: set()}
    n_kv = []
    for i, t in enumerate(types):
        over = per_layer.get(str(i), per_layer.get(i)) or {}
        if set(over) - {"head_dim", "num_key_value_heads"}:
            raise _err(model, f"per_layer_config[{i}] {sorted(over)}: only head sizes may vary")
        dims[t == SLIDING].add(int(over.get("head_dim", cfg_int(model, "head_dim"))))
        n_kv.append(int(over.get("num_key_value_heads", kv)))
    if any(len(d) > 1 for d in dims.values()):  # llama.cpp: one size per layer type
        raise _err(model, f"per_layer_config: head_dim differs within a layer type ({dims})")
    n_shared = int(cfg.get("num_kv_shared_layers") or 0)
    first = n_layer - n_shared
    if n_shared and (first < 2 or (types[first - 2], types[first - 1]) != (SLIDING, FULL)):
        # transformers reuses the last earlier layer of each type, llama.cpp the two layers
        # just before the shared ones
        why = "llama.cpp needs a sliding then a full layer just before the shared ones"
        raise _err(model, f"num_kv_shared_layers={n_shared} with layer_types {types}: {why}")
    n_ff, wide = cfg_int(model, "intermediate_size"), bool(cfg.get("use_double_wide_mlp"))
    moe = bool(cfg.get("enable_moe_block"))
    return Layout(
        n_layer=n_layer,
        n_embd=cfg_int(model, "hidden_size"),
        n_head=cfg_int(model, "num_attention_heads"),
        swa=tuple(t == SLIDING for t in types),
        head_dim={k: next(iter(v)) for k, v in dims.items() if v},
        n_kv=tuple(n_kv),
        n_ff=tuple(n_ff * 2 if wide and i >= first else n_ff for i in range(n_layer)),
        n_shared=n_shared,
        n_ple=int(cfg.get("hidden_size_per_layer_input") or 0),
        n_expert=cfg_int(model, "num_experts") if moe else 0,
        n_ff_exp=cfg_int(model, "moe_intermediate_size", "expert_intermediate_size") if moe else 0,
    )


def _rope(model: ModelInput) -> tuple[dict[str, Any], dict[str, Any]]:
    """(full, sliding) rope_parameters, transformers' defaults where absent."""
    params = model.config.get("rope_parameters") or {}
    return dict(params.get(FULL) or DEFAULT_ROPE[FULL]), dict(
        params.get(SLIDING) or DEFAULT_ROPE[SLIDING]
    )


GRAPH = (
    "llama.cpp's gemma4 graph has GELU (tanh), no attention biases, causal attention, "
    "proportional or default RoPE on full-attention layers and unscaled default RoPE on "
    "sliding ones"
)


def _check(model: ModelInput) -> None:
    """Settings llama.cpp's gemma4 graph does not compute, refused by name."""
    cfg, (full, sliding) = model.config, _rope(model)
    act = cfg.get("hidden_activation", "gelu_pytorch_tanh")
    for failed, why in (
        (act != "gelu_pytorch_tanh", f"hidden_activation {act!r}"),
        (bool(cfg.get("attention_bias")), "attention_bias true"),
        (cfg.get("use_bidirectional_attention") == "all", "use_bidirectional_attention 'all'"),
        (full.get("rope_type") not in ("proportional", "default"), f"full_attention RoPE {full}"),
        (sliding.get("rope_type", "default") != "default", f"sliding_attention RoPE {sliding}"),
        (sliding.get("factor", 1.0) != 1.0, f"sliding_attention RoPE {sliding}"),
    ):
        if failed:
            raise _err(model, f"{why} is not supported ({GRAPH})")


def write_hparams(model: ModelInput, w: gguf.GGUFWriter) -> None:
    _check(model)
    lay = layout(model)
    full, sliding = _rope(model)
    w.add_context_length(cfg_int(model, "max_position_embeddings"))
    w.add_embedding_length(lay.n_embd)
    w.add_block_count(lay.n_layer)
    w.add_feed_forward_length(list(lay.n_ff) if len(set(lay.n_ff)) > 1 else lay.n_ff[0])
    w.add_head_count(lay.n_head)
    w.add_head_count_kv(list(lay.n_kv) if len(set(lay.n_kv)) > 1 else lay.n_kv[0])
    hd_full = lay.head_dim[False]
    hd_swa = lay.head_dim.get(True, hd_full)
    w.add_key_length(hd_full)
    w.add_value_length(hd_full)
    w.add_key_length_swa(hd_swa)
    w.add_value_length_swa(hd_swa)
    w.add_vocab_size(model.n_vocab)
    w.add_layer_norm_rms_eps(cfg_float(model, "rms_norm_eps", default=1e-6))
    # full layers: the whole head through NEOX rope, `rope_freqs` does the rest (see plan);
    # sliding layers: transformers' default rope ignores partial_rotary_factor
    w.add_rope_dimension_count(hd_full)
    w.add_rope_dimension_count_swa(hd_swa)
    w.add_rope_freq_base(float(full.get("rope_theta", 1e6)))
    w.add_rope_freq_base_swa(float(sliding.get("rope_theta", 1e4)))
    w.add_rope_scaling_type(gguf.RopeScalingType.NONE)  # any scaling is in rope_freqs
    w.add_sliding_window(cfg_int(model, "sliding_window"))
    w.add_sliding_window_pattern(list(lay.swa))
    w.add_shared_kv_layers(lay.n_shared)
    w.add_embedding_length_per_layer_input(lay.n_ple)  # llama.cpp requires it, 0 for none
    softcap = model.config.get("final_logit_softcapping")
    if softcap:
        w.add_final_logit_softcapping(float(softcap))
    if lay.n_expert:
        w.add_expert_count(lay.n_expert)
        w.add_expert_used_count(cfg_int(model, "top_k_experts", "num_experts_per_tok"))
        w.add_expert_feed_forward_length(lay.n_ff_exp)


def rope_freqs(model: ModelInput, head_dim: int) -> np.ndarray:
    """Frequency divisors for the full-attention layers' proportional RoPE."""
    full, _ = _rope(model)
    proportional = full.get("rope_type") == "proportional"  # "default" ignores both keys
    factor = float(full.get("factor", 1.0)) if proportional else 1.0
    prf = float(full.get("partial_rotary_factor", 1.0)) if proportional else 1.0
    rotated = int(prf * head_dim // 2)  # as transformers' _compute_proportional_rope_parameters
    return np.asarray([factor] * rotated + [1e30] * (head_dim // 2 - rotated), dtype=np.float32)


_ROUTER = re.compile(r"model\.layers\.(\d+)\.router\.(scale|per_expert_scale)")


def _name(kind: _T, bid: int | None = None) -> str:
    return gguf.TENSOR_NAMES[kind].format(bid=bid)


PER_LAYER = (
    *(_T.ATTN_Q, _T.ATTN_K, _T.ATTN_V, _T.ATTN_OUT, _T.ATTN_Q_NORM, _T.ATTN_K_NORM),
    *(_T.FFN_GATE, _T.FFN_UP, _T.FFN_DOWN, _T.PER_LAYER_INP_GATE, _T.PER_LAYER_PROJ),
    *(_T.LAYER_OUT_SCALE, _T.FFN_GATE_INP, _T.FFN_GATE_UP_EXP, _T.FFN_DOWN_EXP),
)


def _expected(model: ModelInput, lay: Layout) -> dict[str, tuple[int, ...]]:
    """Shapes config.json implies (numpy order), by GGUF name."""
    h, p, v, e, fe = lay.n_embd, lay.n_ple, model.n_vocab, lay.n_expert, lay.n_ff_exp
    want = {_name(_T.TOKEN_EMBD): (v, h), _name(_T.OUTPUT): (v, h), _name(_T.OUTPUT_NORM): (h,)}
    want[_name(_T.PER_LAYER_TOKEN_EMBD)] = (v, lay.n_layer * p)
    want[_name(_T.PER_LAYER_MODEL_PROJ)] = (lay.n_layer * p, h)
    want[_name(_T.PER_LAYER_PROJ_NORM)] = (p,)
    for i in range(lay.n_layer):
        hd, kv, ff = lay.head_dim[lay.swa[i]], lay.n_kv[i], lay.n_ff[i]
        q = lay.n_head * hd
        attn = [(q, h), (kv * hd, h), (kv * hd, h), (h, q), (hd,), (hd,)]
        ffn = [(ff, h), (ff, h), (h, ff), (p, h), (h, p), (1,), (e, h), (e, 2 * fe, h), (e, h, fe)]
        want |= {_name(k, i): s for k, s in zip(PER_LAYER, attn + ffn, strict=True)}
    return {name + ".weight": shape for name, shape in want.items()}


def plan(model: ModelInput) -> list[PlannedTensor]:
    lay = layout(model)
    own: list[PlannedTensor] = []
    for ref in model.ckpt:
        name, shape, rows = model.text_name(ref.name), ref.shape, None
        found = _ROUTER.fullmatch(name or "")
        if found:  # router.scale -> ffn_gate_inp.scale, per_expert_scale -> ffn_down_exps.scale
            kind = _T.FFN_GATE_INP if found[2] == "scale" else _T.FFN_DOWN_EXP
            out = _name(kind, int(found[1])) + ".scale"
        elif name == "model.embed_tokens_per_layer.weight":
            # rows past vocab_size are never looked up; llama.cpp wants one row per token
            out, rows = _name(_T.PER_LAYER_TOKEN_EMBD) + ".weight", model.n_vocab
            shape = (min(rows, shape[0]), *shape[1:])
        else:
            continue
        load = partial(_load, model, ref.name, rows)
        own.append(PlannedTensor(out, shape, load, (ref.name,), keep_f32=len(shape) == 1))
    claimed = frozenset(p.sources[0] for p in own)
    plans = map_tensors(model, claimed=claimed)
    # names without a suffix in the checkpoint (layer_scalar, experts.*) are weights in GGUF
    plans = [
        p if p.name.endswith((".weight", ".bias")) else replace(p, name=p.name + ".weight")
        for p in plans
    ] + own
    if model.config.get("tie_word_embeddings", True):  # a stored lm_head copy is redundant
        plans = [p for p in plans if p.name != _name(_T.OUTPUT) + ".weight"]
    # llama.cpp loads one rope_freqs for all full-attention layers
    freqs = rope_freqs(model, lay.head_dim[False])
    plans.append(constant_tensor(_name(_T.ROPE_FREQS) + ".weight", freqs))
    want = _expected(model, lay)
    for p in plans:
        if p.name in want and p.shape != want[p.name]:
            raise ShapeMismatchError(
                f"{model.folder}: tensor {p.sources[0]!r} has shape {list(p.shape)}, "
                f"config.json implies {list(want[p.name])}"
            )
    return plans


def _load(model: ModelInput, name: str, rows: int | None) -> np.ndarray:
    return model.ckpt.load_f32(name)[:rows]
