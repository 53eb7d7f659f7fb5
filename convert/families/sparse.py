"""What the graphs with a sparse MLP in every layer share (Qwen-MoE, OLMoE, GraniteMoE).

The router (and a shared expert's gate) stays F32, as in llama.cpp's converter; the experts
are stacked by moe.py; settings llama.cpp's MoE graphs do not compute are refused by name.
"""

from __future__ import annotations

from collections.abc import Mapping

import gguf

from llorch.convert.errors import ConfigError
from llorch.convert.families import rope
from llorch.convert.families.base import (
    ModelInput,
    PlannedTensor,
    Transform,
    cfg_int,
    map_tensors,
    write_common,
)
from llorch.convert.families.moe import Experts, claimed, expert_plans

_T = gguf.MODEL_TENSOR
ROUTER_F32 = frozenset({_T.FFN_GATE_INP, _T.FFN_GATE_INP_SHEXP})


def check_sparse_layers(model: ModelInput, norm_topk: bool) -> None:
    """Refuse what llama.cpp's MoE graphs do not compute: the other top-k normalisation,
    dense layers between sparse ones, sliding-window attention, RoPE scaling other than linear
    and YaRN."""
    where = model.folder / "config.json"
    # absent: transformers' default, False (released Qwen3-MoE configs say true)
    if bool(model.config.get("norm_topk_prob", False)) != norm_topk:
        raise ConfigError(
            f"{where}: norm_topk_prob={not norm_topk} is not supported: llama.cpp's "
            f"{gguf.MODEL_ARCH_NAMES[model.arch]} graph "
            f"{'always' if norm_topk else 'never'} renormalises the top-k expert weights"
        )
    if model.config.get("mlp_only_layers") or cfg_int(model, "decoder_sparse_step", default=1) != 1:
        raise ConfigError(
            f"{where}: dense layers (mlp_only_layers / decoder_sparse_step) are not supported "
            f"by llama.cpp's {gguf.MODEL_ARCH_NAMES[model.arch]} graph (every layer is sparse)"
        )
    if model.config.get("use_sliding_window"):
        raise ConfigError(f"{where}: use_sliding_window=true is not supported by llama.cpp")
    rope.check_type(model)  # linear or YaRN, written by write_hparams


def write_hparams(model: ModelInput, w: gguf.GGUFWriter, n_expert: int) -> None:
    """The common keys, RoPE scaling and the expert counts (after check_sparse_layers)."""
    write_common(model, w)
    rope.write_scaling(model, w)
    w.add_expert_count(n_expert)
    w.add_expert_used_count(cfg_int(model, "num_experts_per_tok"))


def plan(
    model: ModelInput,
    ex: Experts,
    expected: Mapping[_T, tuple[int, ...]],
    transforms: Mapping[_T, Transform] | None = None,
) -> list[PlannedTensor]:
    """Every tensor under its mapped name, the router's shape checked and kept F32, then the
    stacked experts."""
    stacked = expert_plans(model, ex)
    expected = {**expected, _T.FFN_GATE_INP: (ex.n_expert, ex.n_embd)}
    plans = map_tensors(
        model,
        transforms=transforms,
        expected=expected,
        keep_f32=ROUTER_F32,
        claimed=claimed(stacked),
    )
    return plans + stacked
