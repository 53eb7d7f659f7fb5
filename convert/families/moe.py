"""Mixture-of-experts layers: each layer's experts stacked into 3-D GGUF tensors.

Checkpoints store experts in one of two layouts (facts from transformers' modeling_qwen2_moe,
modeling_qwen3_moe, modeling_olmoe, modeling_mixtral and llama.cpp's convert_hf_to_gguf.py
Qwen2MoeModel):
- one matrix per expert and projection, `<layer>.mlp.experts.<e>.{gate,up,down}_proj.weight`
  (every released Qwen-MoE and OLMoE checkpoint), or Mixtral's
  `<layer>.block_sparse_moe.experts.<e>.{w1,w3,w2}.weight` (gate, up, down);
- transformers 5's fused parameters, `<layer>.mlp.experts.gate_up_proj` [E, 2F, D] (gate rows
  first, then up) and `<layer>.mlp.experts.down_proj` [E, D, F]; GraniteMoE stores the same
  layout as `<layer>.block_sparse_moe.input_linear.weight` / `output_linear.weight`.
Both become ffn_gate_exps / ffn_up_exps [E, F, D] and ffn_down_exps [E, D, F]. A stacked tensor
is allocated once and filled one expert at a time from the memory-mapped file, so a layer's
experts are never held twice (the output plus at most one expert's matrix).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

import gguf
import numpy as np

from llorch.convert.errors import ConfigError, MissingExpertError, ShapeMismatchError
from llorch.convert.families.base import ModelInput, PlannedTensor
from llorch.detector.safetensors import Checkpoint

_T = gguf.MODEL_TENSOR
PER_EXPERT = re.compile(
    r"(?:.*\.)?layers\.(\d+)\.(?:mlp|block_sparse_moe)\.experts\.(\d+)\."
    r"(gate_proj|up_proj|down_proj|w1|w3|w2)\.weight"
)
MIXTRAL_NAMES = {"w1": "gate_proj", "w3": "up_proj", "w2": "down_proj"}
FUSED = re.compile(
    r"(?:.*\.)?layers\.(\d+)\.(?:mlp\.experts|block_sparse_moe)\."
    r"(gate_up_proj|down_proj|input_linear|output_linear)(?:\.weight)?"
)
# GraniteMoE (JetMoE's parallel experts) names the same fused layout differently
FUSED_ALIASES = {"input_linear": "gate_up_proj", "output_linear": "down_proj"}
KIND = {"gate_proj": _T.FFN_GATE_EXP, "up_proj": _T.FFN_UP_EXP, "down_proj": _T.FFN_DOWN_EXP}


@dataclass(frozen=True)
class Experts:
    n_layer: int
    n_expert: int
    n_embd: int
    n_ff: int  # per expert
    first: int = 0  # leading dense layers (DeepSeek's first_k_dense_replace) have no experts

    def shape(self, proj: str) -> tuple[int, int]:
        return (self.n_embd, self.n_ff) if proj == "down_proj" else (self.n_ff, self.n_embd)


def _f32(data: np.ndarray, dtype: str) -> np.ndarray:
    if dtype == "BF16":
        return (data.astype(np.uint32) << 16).view(np.float32)
    return np.asarray(data, dtype=np.float32)


def _stacker(
    ckpt: Checkpoint, parts: list[tuple[str, slice]], shape: tuple[int, ...]
) -> Callable[[], np.ndarray]:
    """Fill [E, *shape] one expert at a time; each part is (tensor, rows of it), where a 3-D
    fused tensor is read expert by expert."""

    def load() -> np.ndarray:
        out = np.empty((len(parts), *shape), dtype=np.float32)
        for e, (name, rows) in enumerate(parts):
            raw = ckpt.raw(name)
            dtype = ckpt.refs[name].dtype
            out[e] = _f32(raw[e, rows] if raw.ndim == 3 else raw[rows], dtype)
            del raw
        return out

    return load


def transposed_stacker(
    ckpt: Checkpoint, name: str, rows: slice, shape: tuple[int, ...]
) -> Callable[[], np.ndarray]:
    """Experts stored transposed, [E, cols, all rows] (gpt-oss's and Llama 4's gate_up_proj
    [E, D, 2F] and down_proj [E, F, D]) -> [E, rows, cols], one expert at a time."""

    def load() -> np.ndarray:
        raw, dtype = ckpt.raw(name), ckpt.refs[name].dtype
        out = np.empty(shape, np.float32)
        for e in range(shape[0]):
            out[e] = _f32(np.asarray(raw[e]), dtype)[:, rows].T
        return out

    return load


def _out_name(kind: gguf.MODEL_TENSOR, layer: int) -> str:
    return gguf.TENSOR_NAMES[kind].format(bid=layer) + ".weight"


def _check_shape(model: ModelInput, name: str, want: tuple[int, ...]) -> None:
    if model.ckpt.shape(name) != want:
        raise ShapeMismatchError(
            f"{model.ckpt.refs[name].file}: tensor {name!r} has shape "
            f"{list(model.ckpt.shape(name))}, config.json implies {list(want)}"
        )


def expert_plans(model: ModelInput, ex: Experts) -> list[PlannedTensor]:
    """ffn_{gate,up,down}_exps of every layer, from either layout; [] when there are none."""
    per: dict[tuple[int, str], dict[int, str]] = {}
    fused: dict[tuple[int, str], str] = {}
    spelled: dict[str, str] = {}  # projection -> the checkpoint's name for it, for errors
    for name in model.ckpt.names():
        if m := PER_EXPERT.fullmatch(name):
            proj = MIXTRAL_NAMES.get(m[3], m[3])
            spelled[proj] = m[3]
            per.setdefault((int(m[1]), proj), {})[int(m[2])] = name
        elif m := FUSED.fullmatch(name):
            fused[(int(m[1]), FUSED_ALIASES.get(m[2], m[2]))] = name
    if not per and not fused:
        return []
    if ex.n_expert < 1:
        raise ConfigError(
            f"{model.folder / 'config.json'}: the checkpoint has experts but no expert count"
        )
    plans: list[PlannedTensor] = []
    for layer in range(ex.first, ex.n_layer):
        for proj, kind in KIND.items():
            shape = ex.shape(proj)
            fused_name = fused.get((layer, "down_proj" if proj == "down_proj" else "gate_up_proj"))
            if fused_name is not None:
                rows = slice(None)
                if proj != "down_proj":
                    _check_shape(model, fused_name, (ex.n_expert, 2 * ex.n_ff, ex.n_embd))
                    rows = slice(0, ex.n_ff) if proj == "gate_proj" else slice(ex.n_ff, None)
                else:
                    _check_shape(model, fused_name, (ex.n_expert, *shape))
                parts = [(fused_name, rows)] * ex.n_expert
                srcs: tuple[str, ...] = (fused_name,)
            else:
                names = per.get((layer, proj), {})
                missing = [e for e in range(ex.n_expert) if e not in names]
                if missing:
                    raise MissingExpertError(
                        f"{model.folder}: layer {layer} lacks {spelled.get(proj, proj)} of "
                        f"experts {missing} "
                        f"(config.json has {ex.n_expert} experts)"
                    )
                for e in range(ex.n_expert):
                    _check_shape(model, names[e], shape)
                parts = [(names[e], slice(None)) for e in range(ex.n_expert)]
                srcs = tuple(names[e] for e in range(ex.n_expert))
            plans.append(
                PlannedTensor(
                    _out_name(kind, layer),
                    (ex.n_expert, *shape),
                    _stacker(model.ckpt, parts, shape),
                    srcs,
                )
            )
    return plans


def claimed(plans: list[PlannedTensor]) -> frozenset[str]:
    return frozenset(name for p in plans for name in p.sources)


_LAYER = re.compile(r"(?:.*\.)?layers\.(\d+)\.")


def trunk_rename(n_layer: int) -> Callable[[str], str | None]:
    """Leave out layers past num_hidden_layers (the multi-token-prediction layer of DeepSeek-V3
    and GLM-4.5, which llama.cpp's graphs here do not run), and name the router's score
    correction bias as gguf's map expects (`e_score_correction` + `.bias`)."""

    def rename(name: str) -> str | None:
        m = _LAYER.match(name)
        if m and int(m[1]) >= n_layer:
            return None
        if name.endswith(".e_score_correction_bias"):
            return name.removesuffix("_bias") + ".bias"
        return name

    return rename
