"""Qwen3-VL-MoE's language model (llama.cpp arch `qwen3vlmoe`): Qwen3-VL's decoder (interleaved
M-RoPE sections, deepstack inputs: convert/families/qwen3vl.py) whose every MLP is a sparse
mixture of experts, as Qwen3-MoE's.

Facts from transformers' modeling_qwen3_vl_moe and conversion_mapping, llama.cpp's
conversion/qwen3vl.py (`Qwen3VLMoeTextModel`) and src/models/qwen3vlmoe.cpp:
- Experts are stored fused per layer. The released checkpoints (Qwen3-VL-30B-A3B,
  235B-A22B) hold `mlp.experts.gate_up_proj` [E, D, 2F] (gate columns first, then up) and
  `mlp.experts.down_proj` [E, F, D]; transformers 5 transposes them when it loads, and
  saves its own layout, [E, 2F, D] and [E, D, F] (Qwen3-MoE's). Both are read, told apart by
  shape; where the shapes cannot tell (D = 2F or D = F) the released layout is assumed, as
  llama.cpp's converter assumes it always.
- The top-k weights are always renormalised (transformers' router has no `norm_topk_prob`
  switch here; llama.cpp's graph renormalises), the router is kept F32 (sparse.py), and every
  layer is sparse: dense layers (`mlp_only_layers`, `decoder_sparse_step` > 1) are refused.
"""

from __future__ import annotations

import re

import gguf

from llorch.convert.errors import ConfigError, MissingExpertError, ShapeMismatchError
from llorch.convert.families import qwen3vl, rope
from llorch.convert.families.base import (
    ModelInput,
    PlannedTensor,
    cfg_int,
    dims,
    expected_shapes,
    map_tensors,
)
from llorch.convert.families.moe import Experts, expert_plans, transposed_stacker
from llorch.convert.families.sparse import ROUTER_F32

_T = gguf.MODEL_TENSOR
FUSED = re.compile(r"(?:.*\.)?layers\.(\d+)\.mlp\.experts\.(gate_up_proj|down_proj)(?:\.weight)?")


def experts(model: ModelInput) -> Experts:
    d = dims(model)
    return Experts(
        n_layer=d.n_layer,
        n_expert=cfg_int(model, "num_experts", "num_local_experts"),
        n_embd=d.n_embd,
        n_ff=cfg_int(model, "moe_intermediate_size"),
    )


def _check(model: ModelInput) -> None:
    where = model.folder / "config.json"
    if model.config.get("mlp_only_layers") or cfg_int(model, "decoder_sparse_step", default=1) != 1:
        raise ConfigError(
            f"{where}: dense layers (mlp_only_layers / decoder_sparse_step) are not supported "
            "by llama.cpp's qwen3vlmoe graph (every layer is sparse)"
        )
    if model.config.get("use_sliding_window"):
        raise ConfigError(f"{where}: use_sliding_window=true is not supported by llama.cpp")
    rope.check_type(model)


def write_hparams(model: ModelInput, w: gguf.GGUFWriter) -> None:
    _check(model)
    qwen3vl.write_hparams(model, w)
    ex = experts(model)
    w.add_expert_count(ex.n_expert)
    w.add_expert_used_count(cfg_int(model, "num_experts_per_tok"))
    w.add_expert_feed_forward_length(ex.n_ff)


def _released(model: ModelInput, ex: Experts, fused: dict[tuple[int, str], str]) -> bool:
    """Whether the fused experts are in the released layout ([E, D, 2F], [E, F, D]); an error
    naming the tensor when they are in neither."""
    e, d, f = ex.n_expert, ex.n_embd, ex.n_ff
    layouts = {
        True: {"gate_up_proj": (e, d, 2 * f), "down_proj": (e, f, d)},
        False: {"gate_up_proj": (e, 2 * f, d), "down_proj": (e, d, f)},
    }
    found = {released for released, want in layouts.items()
             if all(model.ckpt.shape(n) == want[p] for (_, p), n in fused.items())}  # fmt: skip
    if not found:
        name = next(iter(fused.values()))
        raise ShapeMismatchError(
            f"{model.ckpt.refs[name].file}: experts {name!r} {list(model.ckpt.shape(name))}: "
            f"config.json implies {list(layouts[True]['gate_up_proj'])} / "
            f"{list(layouts[True]['down_proj'])} (released) or "
            f"{list(layouts[False]['gate_up_proj'])} / {list(layouts[False]['down_proj'])}"
        )
    return True in found


def _expert_plans(model: ModelInput, ex: Experts) -> list[PlannedTensor]:
    fused = {(int(m[1]), m[2]): n for n in model.ckpt.names() if (m := FUSED.fullmatch(n))}
    for layer in range(ex.n_layer):
        for proj in ("gate_up_proj", "down_proj"):
            if (layer, proj) not in fused:
                raise MissingExpertError(f"{model.folder}: layer {layer} has no experts.{proj}")
    if not _released(model, ex, fused):
        return expert_plans(model, ex)  # transformers' own layout, as Qwen3-MoE's
    plans = []
    for layer in range(ex.n_layer):
        for kind, proj, rows in (
            (_T.FFN_GATE_EXP, "gate_up_proj", slice(0, ex.n_ff)),
            (_T.FFN_UP_EXP, "gate_up_proj", slice(ex.n_ff, None)),
            (_T.FFN_DOWN_EXP, "down_proj", slice(None)),
        ):
            name = fused[(layer, proj)]
            shape = (ex.n_expert, *ex.shape("down_proj" if kind == _T.FFN_DOWN_EXP else proj))
            load = transposed_stacker(model.ckpt, name, rows, shape)
            out = gguf.TENSOR_NAMES[kind].format(bid=layer) + ".weight"
            plans.append(PlannedTensor(out, shape, load, (name,)))
    return plans


def plan(model: ModelInput) -> list[PlannedTensor]:
    d, ex = dims(model), experts(model)
    qwen3vl.n_deepstack(model)  # refused before anything is written
    stacked = _expert_plans(model, ex)
    expected = expected_shapes(model, d)
    expected.update(
        {
            _T.ATTN_Q_NORM: (d.head_dim,),
            _T.ATTN_K_NORM: (d.head_dim,),
            _T.FFN_GATE_INP: (ex.n_expert, ex.n_embd),
        }
    )
    claimed = frozenset(name for p in stacked for name in p.sources)
    return map_tensors(model, expected=expected, keep_f32=ROUTER_F32, claimed=claimed) + stacked
