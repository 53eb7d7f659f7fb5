"""Llama 1/2/3/3.1/3.2, Yi and Mistral (llama.cpp arch `llama`).

Transforms (facts from llama.cpp convert_hf_to_gguf.py LlamaModel and transformers'
modeling_llama): HF stores Q and K with the rotary halves split across the head dimension
("rotate_half"), llama.cpp's rope pairs adjacent values, so Q and K rows are permuted per head.
Llama 3.1+ `rope_type: llama3` adds a `rope_freqs` tensor of frequency divisors. Tied
embeddings: the checkpoint has no lm_head and llama.cpp falls back to token_embd.
Mixtral (llama.cpp runs it as `llama` with experts): the per-expert w1/w3/w2 matrices of
`block_sparse_moe.experts.E` are stacked into ffn_gate_exps/ffn_up_exps/ffn_down_exps
(expert-major), and `block_sparse_moe.gate` is the router (ffn_gate_inp).
"""

from __future__ import annotations

import re
from collections.abc import Callable

import gguf
import numpy as np

from llorch.convert.errors import MissingExpertError, ShapeMismatchError
from llorch.convert.families import rope
from llorch.convert.families.base import (
    ModelInput,
    PlannedTensor,
    cfg_int,
    constant_tensor,
    dims,
    expected_shapes,
    map_tensors,
    write_common,
)

_T = gguf.MODEL_TENSOR


def permute_rope(w: np.ndarray, n_head: int) -> np.ndarray:
    """HF rotate-half layout -> llama.cpp interleaved layout, per head (weights and biases)."""
    return (
        w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
        .swapaxes(1, 2)
        .reshape(w.shape)
    )


EXPERT = re.compile(r"model\.layers\.(\d+)\.block_sparse_moe\.experts\.(\d+)\.(w[123])\.weight")
EXPERT_KIND = {"w1": _T.FFN_GATE_EXP, "w2": _T.FFN_DOWN_EXP, "w3": _T.FFN_UP_EXP}


def write_hparams(model: ModelInput, w: gguf.GGUFWriter) -> None:
    d = write_common(model, w)
    n_expert = model.config.get("num_local_experts")
    if n_expert:
        w.add_expert_count(int(n_expert))
        w.add_expert_used_count(cfg_int(model, "num_experts_per_tok"))
    w.add_rope_dimension_count(d.head_dim)
    rope.write_scaling(model, w, own=("llama3",))  # llama3: the rope_freqs tensor (plan)


def plan(model: ModelInput) -> list[PlannedTensor]:
    d = dims(model)
    transforms = {
        _T.ATTN_Q: lambda name, w: permute_rope(w, d.n_head),
        _T.ATTN_K: lambda name, w: permute_rope(w, d.n_head_kv),
    }
    experts = _expert_plans(model, d.n_layer, d.n_embd, d.n_ff)
    claimed = frozenset(name for p in experts for name in p.sources)
    plans = map_tensors(
        model,
        transforms=transforms,
        expected=expected_shapes(model, d),
        claimed=claimed,
    )
    plans.extend(experts)
    factors = rope.llama3_rope_factors(model, d.head_dim)
    if factors is not None:
        plans.append(constant_tensor(gguf.TENSOR_NAMES[_T.ROPE_FREQS] + ".weight", factors))
    return plans


def _expert_plans(model: ModelInput, n_layer: int, n_embd: int, n_ff: int) -> list[PlannedTensor]:
    """Stack each layer's experts into one 3-D tensor per projection."""
    found: dict[tuple[int, str], dict[int, str]] = {}
    for name in model.ckpt.names():
        m = EXPERT.fullmatch(name)
        if m:
            found.setdefault((int(m[1]), m[3]), {})[int(m[2])] = name
    if not found:
        return []
    n_expert = cfg_int(model, "num_local_experts")
    plans = []
    for layer in range(n_layer):
        for proj, kind in EXPERT_KIND.items():
            names = found.get((layer, proj), {})
            missing = [e for e in range(n_expert) if e not in names]
            if missing:
                raise MissingExpertError(
                    f"{model.folder}: layer {layer} lacks {proj} of experts {missing} "
                    f"(config.json num_local_experts={n_expert})"
                )
            shape = (n_embd, n_ff) if proj == "w2" else (n_ff, n_embd)
            srcs = tuple(names[e] for e in range(n_expert))
            for src in srcs:
                if model.ckpt.shape(src) != shape:
                    raise ShapeMismatchError(
                        f"{model.ckpt.refs[src].file}: tensor {src!r} has shape "
                        f"{list(model.ckpt.shape(src))}, config.json implies {list(shape)}"
                    )
            out = gguf.TENSOR_NAMES[kind].format(bid=layer) + ".weight"
            plans.append(PlannedTensor(out, (n_expert, *shape), _stacker(model, srcs, shape), srcs))
    return plans


def _stacker(
    model: ModelInput, srcs: tuple[str, ...], shape: tuple[int, ...]
) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        out = np.empty((len(srcs), *shape), dtype=np.float32)
        for i, src in enumerate(srcs):
            out[i] = model.ckpt.load_f32(src)
        return out

    return load
