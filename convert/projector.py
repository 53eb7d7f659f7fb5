"""A multimodal checkpoint's projector file: its vision or audio tower and projector written as
llama.cpp's mtmd reads them (arch `clip`, general.type `mmproj`), beside the text GGUF as
`<text stem>-mmproj-<f16|f32>.gguf`.

The table row's `vision` or `audio` part (a TowerPart) names the projector type and the family
module that maps it (`write_hparams` and `plan`, as the text families), which reads the tower's
section of config.json (`vision_config`, `audio_config`). The projector stays F16 (F32 when the
text part is f32) whatever the text part's type, as llama.cpp recommends: its towers are small
beside the language model, and mtmd's clip graph reads F16 and F32. The file is planned with
the text part (every tensor mapped before anything is written) and written to a temp file by
the text part's writer, renamed beside it on success. A checkpoint with both a vision and an
audio tower (Gemma 4 E2B / E4B) gets one file of both encoders, as llama.cpp writes it: each
tower's keys and tensors, both planned before anything is written, and each tower's
projector type under its own key (`clip.vision.projector_type`, `clip.audio.projector_type`),
which mtmd reads to build one context per tower from the same file.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Protocol, TypeVar, cast

import gguf

from llorch.convert import writer as gw
from llorch.convert.errors import (
    ConfigError,
    MissingTensorError,
    OutputError,
    ShapeMismatchError,
    UnmappedTensorError,
)
from llorch.convert.families.base import PlannedTensor
from llorch.detector import Detection, lookup, read_json, row_for_config, text_config
from llorch.detector.safetensors import Checkpoint
from llorch.detector.table import ArchRow, TowerPart

PROJECTOR_NAME = re.compile(r"-mmproj-(f16|f32)\.gguf$")
MMPROJ = "mmproj"  # the projector among a batch job's outputs (its records' outtype)


@dataclass(frozen=True)
class TowerInput:
    """What a tower's family reads: the checkpoint, config.json and the tower's section of it."""

    folder: Path
    config: Mapping[str, Any]  # config.json as written
    tower: Mapping[str, Any]  # its vision_config or audio_config
    n_embd_text: int  # the language model's hidden size: the projection's output
    preprocessor: Mapping[str, Any]  # preprocessor_config.json, processor_config.json's image part
    ckpt: Checkpoint
    modality: ClassVar[str] = "tower"
    section: ClassVar[str] = "config"  # the tower's section's name in config.json


class VisionInput(TowerInput):
    modality = "vision"
    section = "vision_config"

    @property
    def vision(self) -> Mapping[str, Any]:
        return self.tower


class AudioInput(TowerInput):
    modality = "audio"
    section = "audio_config"

    @property
    def audio(self) -> Mapping[str, Any]:
        return self.tower


INPUTS: Mapping[str, type[TowerInput]] = {"vision": VisionInput, "audio": AudioInput}
# a tower's projector type key in a file of several towers
TYPE_KEYS = {
    "vision": gguf.Keys.ClipVision.PROJECTOR_TYPE,
    "audio": gguf.Keys.ClipAudio.PROJECTOR_TYPE,
}
M = TypeVar("M", bound=TowerInput, contravariant=True)


class TowerFamily(Protocol[M]):
    def write_hparams(self, model: M, writer: gguf.GGUFWriter) -> None: ...

    def plan(self, model: M) -> list[PlannedTensor]: ...


VisionFamily = TowerFamily[VisionInput]
AudioFamily = TowerFamily[AudioInput]


def tower_int(model: TowerInput, key: str, default: int) -> int:
    """An integer of the tower's section of config.json, `default` where it has none."""
    value = model.tower.get(key, default)
    if not isinstance(value, int) or isinstance(value, bool):
        raise ConfigError(
            f"{model.folder / 'config.json'}: {model.section}.{key} is not an integer"
        )
    return value


def vision_int(model: VisionInput, key: str, default: int) -> int:
    return tower_int(model, key, default)


@dataclass(frozen=True)
class TowerShape:
    """A vision tower's shape as the projector file's first keys give it."""

    image_size: int
    patch_size: int
    width: int
    ffn: int
    blocks: int
    heads: int

    @classmethod
    def vit(cls, get: Callable[[str], int]) -> TowerShape:
        """From a ViT-style vision config's own keys (SigLIP, Pixtral), read by `get`."""
        return cls(
            image_size=get("image_size"),
            patch_size=get("patch_size"),
            width=get("hidden_size"),
            ffn=get("intermediate_size"),
            blocks=get("num_hidden_layers"),
            heads=get("num_attention_heads"),
        )


def write_tower(
    w: gguf.GGUFWriter,
    model: VisionInput,
    kind: str,
    shape: TowerShape,
    *,
    mean: Sequence[float],
    std: Sequence[float],
) -> None:
    """The keys every vision projector file starts with, in the order llama.cpp's converter
    writes them (MmprojModel.set_gguf_parameters, then the projector type): the tower's
    shape, the text model's width it projects to, and the preprocessor's normalisation
    (`mean` / `std` where preprocessor_config.json gives none); `kind` is llama.cpp's
    projector type (gguf.VisionProjectorType)."""
    w.add_clip_has_vision_encoder(True)
    w.add_vision_projection_dim(model.n_embd_text)
    w.add_vision_image_size(shape.image_size)
    w.add_vision_patch_size(shape.patch_size)
    w.add_vision_embedding_length(shape.width)
    w.add_vision_feed_forward_length(shape.ffn)
    w.add_vision_block_count(shape.blocks)
    w.add_vision_head_count(shape.heads)
    w.add_vision_image_mean([float(x) for x in model.preprocessor.get("image_mean", mean)])
    w.add_vision_image_std([float(x) for x in model.preprocessor.get("image_std", std)])
    w.add_clip_projector_type(kind)


@dataclass(frozen=True)
class AudioShape:
    """An audio encoder's shape as the projector file's first audio keys give it."""

    width: int
    ffn: int
    blocks: int
    heads: int

    @classmethod
    def whisper(cls, get: Callable[[str], int]) -> AudioShape:
        """From a Whisper-style encoder config's keys (transformers' names, which its
        attribute_map gives Whisper's d_model, encoder_ffn_dim, ...), read by `get`."""
        return cls(
            width=get("hidden_size"),
            ffn=get("intermediate_size"),
            blocks=get("num_hidden_layers"),
            heads=get("num_attention_heads"),
        )


def write_audio_tower(w: gguf.GGUFWriter, model: AudioInput, kind: str, shape: AudioShape) -> None:
    """The keys every audio projector file starts with, in the order llama.cpp's converter
    writes them (MmprojModel.set_gguf_parameters, then the projector type): the encoder's
    shape and the text model's width it projects to; `kind` is llama.cpp's projector type."""
    w.add_clip_has_audio_encoder(True)
    w.add_audio_projection_dim(model.n_embd_text)
    w.add_audio_embedding_length(shape.width)
    w.add_audio_feed_forward_length(shape.ffn)
    w.add_audio_block_count(shape.blocks)
    w.add_audio_head_count(shape.heads)
    w.add_clip_projector_type(kind)


def plan_tower(
    model: TowerInput,
    projector: str,
    n_block: int,
    source_name: Callable[[str], str | None],
    expected: Mapping[gguf.MODEL_TENSOR, tuple[int, ...]],
    required: Sequence[gguf.MODEL_TENSOR],
    planned: Callable[
        [str, str, gguf.MODEL_TENSOR, tuple[int, ...]], PlannedTensor | Sequence[PlannedTensor]
    ],
    by_name: Mapping[str, tuple[int, ...]] | None = None,
) -> list[PlannedTensor]:
    """Every tensor of the tower's part of the checkpoint mapped to its GGUF name by gguf's
    MMPROJ map, or an error naming the first that has none; shapes checked against `expected`
    (weights only; `by_name` first, by GGUF name, where a kind has tensors of several shapes,
    e.g. "a.conv1d.1.weight"), and the `required` kinds present. `source_name` gives
    a checkpoint tensor's name as the map knows it (None: not the tower's part, or left out);
    `planned` makes the tensor's plan (its type, any transform) from (source, GGUF name, kind,
    shape), or the plans of the tensors it is split into."""
    tmap = gguf.get_tensor_name_map(gguf.MODEL_ARCH.MMPROJ, n_block)
    plans: list[PlannedTensor] = []
    found_kinds: set[gguf.MODEL_TENSOR] = set()
    for ref in model.ckpt:
        name = source_name(ref.name)
        if name is None:
            continue
        found = tmap.get_type_and_name(name, try_suffixes=(".weight", ".bias"))
        if found is None:
            raise UnmappedTensorError(
                f"{ref.file}: tensor {ref.name!r} {list(ref.shape)} has no GGUF name for "
                f"llama.cpp's clip {projector} projector"
            )
        kind, gguf_name = found
        want = (by_name or {}).get(gguf_name, expected.get(kind))
        if want is not None and not ref.name.endswith(".bias") and ref.shape != want:
            raise ShapeMismatchError(
                f"{ref.file}: tensor {ref.name!r} has shape {list(ref.shape)}, config.json "
                f"implies {list(want)}"
            )
        found_kinds.add(kind)
        made = planned(ref.name, gguf_name, kind, ref.shape)
        plans.extend([made] if isinstance(made, PlannedTensor) else made)
    missing = [gguf.TENSOR_NAMES[k] for k in required if k not in found_kinds]
    if missing:
        raise MissingTensorError(
            f"{model.folder}: the {model.modality} part lacks {', '.join(missing)} (llama.cpp's "
            f"{projector} projector needs them)"
        )
    return plans


def projector_type(outtype: str) -> str:
    """The projector's type for a text part's outtype."""
    return "f32" if outtype == "f32" else "f16"


def projector_path(text_out: Path, outtype: str) -> Path:
    return text_out.with_name(
        f"{text_out.name.removesuffix('.gguf')}-mmproj-{projector_type(outtype)}.gguf"
    )


def is_projector(path: Path) -> bool:
    return PROJECTOR_NAME.search(path.name) is not None


def _preprocessor(folder: Path) -> dict[str, Any]:
    """As llama.cpp's MmprojModel reads it: preprocessor_config.json, then processor_config.json
    with its `image_processor` lifted to the top."""
    merged: dict[str, Any] = {}
    for name, nested in (
        ("preprocessor_config.json", None),
        ("processor_config.json", "image_processor"),
    ):
        path = folder / name
        if path.is_file():
            cfg = read_json(path)
            if nested is not None and isinstance(cfg.get(nested), dict):
                cfg = {**cfg, **cfg[nested]}
            merged.update(cfg)
    return merged


@dataclass(frozen=True)
class Tower:
    """One encoder of a projector file, planned: its input, family, type and tensors."""

    model: TowerInput
    family: TowerFamily[Any]
    projector: str  # llama.cpp's clip projector type
    plans: list[PlannedTensor]


@dataclass(frozen=True)
class ProjectorJob:
    """A planned projector file: where it goes, its type, its towers (vision first)."""

    towers: tuple[Tower, ...]
    out: Path
    outtype: str  # f16 or f32

    @property
    def projector(self) -> str:
        """The towers' projector types, as `llorch detect` names them."""
        return ", ".join(t.projector for t in self.towers)

    @property
    def plans(self) -> list[PlannedTensor]:
        return [p for t in self.towers for p in t.plans]

    @property
    def parameters(self) -> int:
        total = 0
        for p in self.plans:
            n = 1
            for d in p.shape:
                n *= d
            total += n
        return total


def _towers(row: ArchRow | None, config: Mapping[str, Any]) -> list[TowerPart]:
    """The row's towers whose section config.json has."""
    towers = row.towers if row is not None else ()
    return [part for part in towers if isinstance(config.get(part.config_key), dict)]


def has_projector(folder: Path) -> bool:
    """Whether a checkpoint folder's architecture has a vision or audio part llorch writes."""
    config = read_json(folder / "config.json")
    return bool(_towers(row_for_config(config), config))


def prepare(det: Detection, out: Path, outtype: str) -> ProjectorJob | None:
    """The projector (to be written at `out`) of a detected checkpoint whose row has a vision
    or audio part, planned; None for a text-only one."""
    if det.hf_architecture is None or det.checkpoint is None or det.config is None:
        return None
    towers = _towers(lookup(det.hf_architecture), det.config)
    if not towers:
        return None
    from llorch.convert.families import load_family

    n_embd = text_config(det.config).get("hidden_size")
    if not isinstance(n_embd, int):
        raise ConfigError(f"{det.path / 'config.json'}: missing integer text hidden_size")
    preprocessor = _preprocessor(det.path)
    planned: list[Tower] = []
    for part in towers:
        family = cast(TowerFamily[Any], load_family(part.family))
        model = INPUTS[part.modality](
            folder=det.path,
            config=det.config,
            tower=det.config[part.config_key],
            n_embd_text=n_embd,
            preprocessor=preprocessor,
            ckpt=det.checkpoint,
        )
        planned.append(Tower(model, family, part.projector_type, family.plan(model)))
    job = ProjectorJob(tuple(planned), out, projector_type(outtype))
    seen: set[str] = set()
    for plan in job.plans:
        if plan.name in seen:
            raise ConfigError(
                f"{det.path}: two towers write the tensor {plan.name!r} ({job.projector})"
            )
        seen.add(plan.name)
    return job


@contextlib.contextmanager
def temp(job: ProjectorJob | None) -> Iterator[Path | None]:
    if job is None:
        yield None
        return
    with gw.temp_path(job.out) as tmp:
        yield tmp


def write(
    job: ProjectorJob, path: Path, name: str, metadata: Mapping[str, Any] | None = None
) -> int:
    """The projector file at `path` (a temp file); the number of tensors."""
    w = gguf.GGUFWriter(None, gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.MMPROJ])
    w.add_type(gguf.GGUFType.MMPROJ)
    w.add_name(name)
    w.add_size_label(gguf.size_label(job.parameters, 0, 0, 0))
    w.add_file_type(gw.DIRECT[job.outtype][1])
    for tower in job.towers:
        tower.family.write_hparams(tower.model, w)
        # a file of several towers names each one's type under its own key, as mtmd reads
        # it there; a tower written alone keeps the key its family wrote
        one = w.kv_data[0].get(gguf.Keys.Clip.PROJECTOR_TYPE)
        if one is not None and len(job.towers) > 1:
            del w.kv_data[0][gguf.Keys.Clip.PROJECTOR_TYPE]
            w.add_string(TYPE_KEYS[tower.model.modality], one.value)
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)
    for key, value in (metadata or {}).items():
        w.kv_data[0].pop(key, None)
        if isinstance(value, str):
            w.add_string(key, value)
        else:
            w.add_array(key, list(value))
    return gw.write_gguf(path, w, job.plans, job.outtype).n_tensors


def place(job: ProjectorJob, tmp: Path) -> None:
    try:
        os.replace(tmp, job.out)
    except OSError as exc:
        raise OutputError(f"{job.out}: cannot move the finished file here ({exc})") from exc


def convert_projector(
    det: Detection, out: Path, outtype: str, name: str, metadata: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """The projector alone, written at `out` (temp file, renamed on success): a batch's,
    beside outputs it makes on its own."""
    job = prepare(det, out, outtype)
    if job is None:
        raise ConfigError(f"{det.path}: {det.hf_architecture} has no projector llorch writes")
    with temp(job) as tmp:
        assert tmp is not None
        n_tensors = write(job, tmp, name, metadata)
        place(job, tmp)
    return report(job, n_tensors)


def report(job: ProjectorJob, n_tensors: int) -> dict[str, Any]:
    return {
        "output": str(job.out),
        "projector_type": job.projector,
        "outtype": job.outtype,
        "n_tensors": n_tensors,
        "parameters": job.parameters,
        "bytes": job.out.stat().st_size,
    }
