"""PEFT LoRA adapter -> GGUF LoRA for llama.cpp: convert_lora(adapter_dir, base_dir, dst).

Facts from llama.cpp (src/llama-adapter.cpp, convert_lora_to_gguf.py) and PEFT (tuners/lora):
- The file has `general.type=adapter`, `general.architecture` equal to the base model's,
  `adapter.type=lora` and `adapter.lora.alpha`. Each adapted weight `W` (a base GGUF tensor
  name such as `blk.0.attn_q.weight`) has `<name>.lora_a`, PEFT's lora_A (rank, in), and
  `<name>.lora_b`, PEFT's lora_B (out, rank), in numpy order. llama.cpp adds
  `scale * alpha / rank * B @ A @ x`, the rank read from each lora_b, which is PEFT's
  `lora_alpha / r`.
- rsLoRA scales by alpha / sqrt(r): the written alpha is lora_alpha * sqrt(r). Modules whose
  PEFT scale the one alpha cannot express (rank_pattern, alpha_pattern) get the ratio folded
  into their lora_b, so every module's delta is exact at any adapter scale.
- Names and layout come from the base model's family plan, as the base conversion writes
  them: a target maps to the plan built from that one checkpoint tensor, and the row
  reordering the family applies (Llama's Q/K rotary permutation, Falcon's QKV regrouping) is
  read by running the plan's own loader on a probe of row indices, then applied to lora_b.
Torch-free: safetensors headers and numpy.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import gguf
import numpy as np

from llorch.convert import writer as gw
from llorch.convert.errors import OutputError, OutputExistsError, OutTypeError
from llorch.convert.families import load_family
from llorch.convert.families.base import ModelInput, PlannedTensor
from llorch.convert.peft_adapter import (
    CONFIG_NAME,
    WEIGHTS_NAME,
    AdapterConfig,
    AdapterError,
    AdapterWeights,
    UnsupportedAdapterError,
    lora_pairs,
    read_config,
)
from llorch.detector import detect, lookup, read_json, text_config
from llorch.detector.errors import MissingFileError
from llorch.detector.safetensors import Checkpoint

_T = gguf.MODEL_TENSOR
_NOT_ADAPTABLE = {  # llama.cpp applies no lora_a/lora_b pair to these the way PEFT does
    gguf.TENSOR_NAMES[_T.TOKEN_EMBD] + ".weight": "an embedding",
    gguf.TENSOR_NAMES[_T.OUTPUT] + ".weight": "lm_head (output)",
}


@dataclass(frozen=True)
class LoraReport:
    adapter: str
    base: str
    output: str
    llama_arch: str
    outtype: str
    rank: int  # adapter_config.json `r`
    alpha: float  # adapter.lora.alpha as written
    rslora: bool
    n_modules: int  # adapted weights (one lora_a/lora_b pair each)
    bytes: int
    seconds: float
    notes: tuple[str, ...]

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["notes"] = list(self.notes)
        return out


def _base_model(base: str | os.PathLike[str]) -> ModelInput:
    """The base checkpoint as the converter sees it; weights are not read, nor a tokenizer
    needed (the adapter file has no vocabulary)."""
    det = detect(base)
    if det.format != "hf-safetensors" or det.hf_architecture is None:
        raise AdapterError(f"{det.path}: the base must be the Hugging Face checkpoint folder")
    raw = det.config if det.config is not None else read_json(det.path / "config.json")
    config = text_config(raw)
    ckpt = det.checkpoint if det.checkpoint is not None else Checkpoint(det.path)
    n_vocab = config.get("vocab_size")
    if not isinstance(n_vocab, int):
        raise AdapterError(f"{det.path / 'config.json'}: missing integer vocab_size")
    row = lookup(det.hf_architecture)
    return ModelInput(det.path, det.hf_architecture, row.arch, config, ckpt, n_vocab, row.text_part)


class _RowProbe(Checkpoint):
    """The base checkpoint's headers; loading a (rows, cols) tensor gives a (rows, 2) probe
    whose rows are numbered, so a plan's loader shows how the family reorders rows."""

    def __init__(self, base: Checkpoint) -> None:  # headers only: nothing is read again
        self.folder, self.files, self.refs = base.folder, base.files, base.refs

    def load_f32(self, name: str) -> np.ndarray:
        rows = np.arange(self.shape(name)[0], dtype=np.float32)
        return np.stack([rows, rows + len(rows)], axis=1)


def _row_order(plan: PlannedTensor, rows: int) -> np.ndarray | None:
    """Source row of each output row (None: unchanged); refuses any other transform."""
    out: np.ndarray | None = None
    # a transform that fails on the probe needs the real columns: no row reordering
    with contextlib.suppress(Exception):
        out = plan.load()
    if out is not None and out.shape == (rows, 2):
        order = out[:, 0].astype(np.int64)
        if (
            np.array_equal(np.sort(order), np.arange(rows))
            and np.array_equal(out[:, 0], order)
            and np.array_equal(out[:, 1], out[:, 0] + rows)
        ):
            return None if np.array_equal(order, np.arange(rows)) else order
    raise UnsupportedAdapterError(
        f"{plan.sources[0]}: the base conversion transforms this weight ({plan.name}) in a way "
        "a LoRA pair cannot follow (not a row reordering)"
    )


@dataclass(frozen=True)
class _Target:
    name: str  # base GGUF tensor name
    shape: tuple[int, int]  # the base weight's (out, in)
    order: np.ndarray | None  # row reordering the base conversion applies


def _targets(model: ModelInput, wanted: set[str]) -> dict[str, _Target]:
    """GGUF name and row order of each wanted checkpoint weight, from the family's plan."""
    family = load_family(lookup(model.hf_architecture).family)
    probe = dataclasses.replace(model, ckpt=_RowProbe(model.ckpt))
    by_source: dict[str, list[PlannedTensor]] = {}
    for p in family.plan(probe):
        for src in p.sources:
            by_source.setdefault(src, []).append(p)
    out: dict[str, _Target] = {}
    for src in sorted(wanted):
        plans = by_source.get(src, [])
        if not plans:
            raise UnsupportedAdapterError(
                f"{src.removesuffix('.weight')}: the base checkpoint has no weight {src!r} that "
                f"converts for {model.hf_architecture}"
            )
        if len(plans) > 1 or len(plans[0].sources) > 1:
            names = ", ".join(sorted(p.name for p in plans))
            raise UnsupportedAdapterError(
                f"{src.removesuffix('.weight')}: the base conversion splits or stacks this "
                f"weight ({names}); a LoRA on it cannot be converted"
            )
        plan = plans[0]
        if plan.name in _NOT_ADAPTABLE or len(plan.shape) != 2:
            what = _NOT_ADAPTABLE.get(plan.name, f"a {len(plan.shape)}-D tensor")
            raise UnsupportedAdapterError(
                f"{src.removesuffix('.weight')}: a LoRA on {what} is not supported"
            )
        rows, cols = plan.shape
        out[src] = _Target(plan.name, (rows, cols), _row_order(plan, rows))
    return out


def _loader(
    ckpt: Checkpoint, name: str, factor: float = 1.0, order: np.ndarray | None = None
) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        data = ckpt.load_f32(name)
        if order is not None:
            data = data[order]
        return data * np.float32(factor) if factor != 1.0 else data

    return load


def _plan_pairs(
    ckpt: Checkpoint, file: Path, cfg: AdapterConfig, model: ModelInput
) -> tuple[list[PlannedTensor], list[str]]:
    pairs = lora_pairs(ckpt, file)
    targets = _targets(model, {m + ".weight" for m in pairs})
    plans: list[PlannedTensor] = []
    folded: list[str] = []
    for module in sorted(pairs, key=lambda m: targets[m + ".weight"].name):
        a_name, b_name = pairs[module]
        t = targets[module + ".weight"]
        (rank, n_in), (n_out, rank_b) = ckpt.shape(a_name), ckpt.shape(b_name)
        if rank != rank_b or (n_out, n_in) != t.shape:
            raise AdapterError(
                f"{file}: {module}: lora_A {list(ckpt.shape(a_name))} and lora_B "
                f"{list(ckpt.shape(b_name))} do not fit the base weight {list(t.shape)} "
                "(wrong base model?)"
            )
        r, _ = cfg.declared(module)
        if r != rank:
            raise AdapterError(f"{file}: {module} has rank {rank}, {CONFIG_NAME} says {r}")
        factor = cfg.scaling(module, rank) / (cfg.written_alpha() / rank)  # llama.cpp: alpha/rank
        if not math.isclose(factor, 1.0, rel_tol=1e-9):
            folded.append(module)
        plans.append(
            PlannedTensor(t.name + ".lora_a", (rank, n_in), _loader(ckpt, a_name), (a_name,))
        )
        plans.append(
            PlannedTensor(
                t.name + ".lora_b", (n_out, rank), _loader(ckpt, b_name, factor, t.order), (b_name,)
            )
        )
    return plans, folded


def convert_lora(
    adapter_dir: str | os.PathLike[str],
    base_dir: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    *,
    outtype: str = "f16",
    overwrite: bool = False,
) -> LoraReport:
    """Convert a PEFT LoRA adapter (adapter_config.json, adapter_model.safetensors) trained on
    the Hugging Face checkpoint `base_dir` to a GGUF LoRA for the GGUF converted from it.

    `dst` is the output file, or an existing folder for `<adapter>-<TYPE>-LoRA.gguf`. The file
    appears only once complete; an existing one raises OutputExistsError unless `overwrite`.
    Unsupported PEFT features (DoRA, modules_to_save, biases, embedding or lm_head targets, a
    target the base conversion splits or stacks) raise UnsupportedAdapterError naming it.
    """
    start = time.monotonic()
    if outtype.lower() not in gw.DIRECT:
        raise OutTypeError(f"unknown LoRA outtype {outtype!r}; valid: {', '.join(gw.DIRECT)}")
    outtype = outtype.lower()
    folder = Path(adapter_dir)
    cfg = read_config(folder)
    file = folder / WEIGHTS_NAME
    if not file.is_file():
        raise MissingFileError(f"{file}: not found (only SafeTensors adapters are converted)")
    ckpt = AdapterWeights(file)
    model = _base_model(base_dir)
    if cfg.base_class is not None and cfg.base_class != model.hf_architecture:
        raise AdapterError(
            f"{folder / CONFIG_NAME}: trained on a {cfg.base_class}, the base is a "
            f"{model.hf_architecture} ({model.folder})"
        )
    out = Path(dst)
    name = folder.resolve().name or "adapter"
    if out.is_dir():
        out = out / f"{gguf.naming_convention(name, None, None, None, None, outtype, 'LoRA')}.gguf"
    if not out.parent.is_dir():
        raise OutputError(f"{out.parent}: output folder does not exist")
    if out.exists() and not overwrite:
        raise OutputExistsError(out)
    plans, folded = _plan_pairs(ckpt, file, cfg, model)
    arch = gguf.MODEL_ARCH_NAMES[model.arch]
    with gw.temp_path(out) as tmp:
        w = gguf.GGUFWriter(None, arch)
        w.add_type(gguf.GGUFType.ADAPTER)
        w.add_name(name)
        w.add_string(gguf.Keys.Adapter.TYPE, "lora")
        w.add_float32(gguf.Keys.Adapter.LORA_ALPHA, cfg.written_alpha())
        w.add_file_type(gw.DIRECT[outtype][1])
        w.add_quantization_version(gguf.GGML_QUANT_VERSION)
        gw.write_gguf(tmp, w, plans, outtype)
        if out.exists() and not overwrite:
            raise OutputExistsError(out)  # it appeared while this conversion ran
        try:
            os.replace(tmp, out)
        except OSError as exc:
            raise OutputError(f"{out}: cannot move the finished file here ({exc})") from exc
    notes = []
    if folded:  # llama.cpp has one alpha per file; the others' PEFT scale lives in lora_b
        notes.append(
            f"{len(folded)} module(s) with their own rank or alpha (rank_pattern, "
            f"alpha_pattern): PEFT's scale folded into lora_b, e.g. {folded[0]}"
        )
    return LoraReport(
        adapter=str(folder),
        base=str(model.folder),
        output=str(out),
        llama_arch=arch,
        outtype=outtype,
        rank=cfg.r,
        alpha=cfg.written_alpha(),
        rslora=cfg.rslora,
        n_modules=len(plans) // 2,
        bytes=out.stat().st_size,
        seconds=round(time.monotonic() - start, 3),
        notes=tuple(notes),
    )
