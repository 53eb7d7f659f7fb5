"""Tell what a model source is: an HF SafeTensors folder, a GGUF file, or a cached HF repo id.

Shared by the converter (which needs the architecture row to pick a family module) and the
worker (which needs to know whether a source must be converted before serving).

Architecture support is the SUPPORTED table below: one row per accepted Hugging Face
`architectures` name, alias rows spelled out. A row is added only together with a logits
parity test in tests/convert (tests/llorch/test_detector.py checks that every row has one).
"""

from __future__ import annotations

import json
import math
import mmap
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gguf

from llorch.detector.errors import (
    DetectionError,
    InvalidFileError,
    MissingFileError,
    SourceNotFoundError,
    UnsupportedArchitectureError,
)
from llorch.detector.safetensors import Checkpoint
from llorch.detector.table import (
    SUPPORTED,
    ArchRow,
    lookup,
    row_for_config,
    supported_names,
)
from llorch.gguf_header import GGUFHeaderError, read_header


@dataclass(frozen=True)
class Detection:
    source: str  # what the caller passed
    path: Path  # resolved folder or file
    format: str  # "hf-safetensors" or "gguf"
    hf_architecture: str | None
    model_type: str | None
    llama_arch: str | None
    family: str | None
    parameters: int | None
    dtype: str | None  # dominant tensor dtype: F32, F16, BF16 (GGUF: file type name)
    tokenizer: str | None  # "sentencepiece", "bpe", "wordpiece", or None when absent
    supported: bool
    reason: str | None  # why not supported; None when supported
    # What detection already read, for the converter to reuse instead of reading it again:
    # config.json as written, and the checkpoint's headers (None when they could not be read).
    config: Mapping[str, Any] | None = field(default=None, repr=False, compare=False)
    checkpoint: Checkpoint | None = field(default=None, repr=False, compare=False)
    # GGUF only: where the file came from (PROVENANCE_PREFIXES keys), when it says so
    provenance: Mapping[str, Any] | None = field(default=None, compare=False)
    # the multimodal projector (llama.cpp's clip projector type): the one an HF checkpoint's
    # vision or audio part converts to, or the one a projector GGUF (llama_arch "clip") holds
    projector: str | None = None

    def to_json(self) -> dict[str, Any]:
        extra = {"provenance": dict(self.provenance)} if self.provenance is not None else {}
        return {
            "source": self.source,
            "path": str(self.path),
            "format": self.format,
            "hf_architecture": self.hf_architecture,
            "model_type": self.model_type,
            "llama_arch": self.llama_arch,
            "family": self.family,
            "parameters": self.parameters,
            "dtype": self.dtype,
            "tokenizer": self.tokenizer,
            "supported": self.supported,
            "reason": self.reason,
            "projector": self.projector,
            **extra,
        }


def resolve_source(source: str | os.PathLike[str]) -> Path:
    """A local path as is; otherwise a repo id looked up offline in the HF cache."""
    path = Path(source).expanduser()
    if path.exists():
        return path.absolute()
    text = os.fspath(source)
    if text.count("/") == 1 and not text.startswith((".", "/", "~")):
        from huggingface_hub import snapshot_download

        try:
            return Path(snapshot_download(repo_id=text, local_files_only=True))
        except Exception as exc:  # the hub raises several offline/not-found types
            raise SourceNotFoundError(
                f"{text!r} is neither a local path nor a repo id in the local Hugging Face "
                f"cache ({type(exc).__name__})"
            ) from exc
    raise SourceNotFoundError(f"{text!r} does not exist")


def read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise MissingFileError(f"{path}: file not found") from exc
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidFileError(f"{path}: not valid JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise InvalidFileError(f"{path}: expected a JSON object")
    return data


def text_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """The language-model part of a config: nested `text_config` for multimodal wrappers."""
    nested = config.get("text_config")
    merged = dict(config)
    if isinstance(nested, dict):
        merged.update(nested)
    return merged


# tokenizers writes the model last, its "type" first; a vocabulary maps strings to numbers, so
# this cannot match inside one. Searched in the mapped file rather than parsing it all.
_WORDPIECE = re.compile(rb'"model"\s*:\s*\{\s*"type"\s*:\s*"WordPiece"')


GGUF_TOKENIZERS = {"llama": "sentencepiece", "gpt2": "bpe", "bert": "wordpiece"}


def tokenizer_kind(folder: Path) -> str | None:
    if (folder / "tokenizer.model").is_file():
        return "sentencepiece"
    path = folder / "tokenizer.json"
    if path.is_file():
        try:
            with path.open("rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as m:
                return "wordpiece" if _WORDPIECE.search(m) else "bpe"
        except (OSError, ValueError):  # empty or unreadable: the converter reports it
            return "bpe"
    if (folder / "sentencepiece.bpe.model").is_file():  # XLM-RoBERTa's (fairseq's) file
        return "unigram"
    return None


def detect(source: str | os.PathLike[str]) -> Detection:
    path = resolve_source(source)
    if path.is_file():
        with path.open("rb") as fh:
            magic = fh.read(4)
        if path.suffix == ".gguf" or magic == b"GGUF":
            return _detect_gguf(os.fspath(source), path)
        raise InvalidFileError(f"{path}: not a GGUF file and not a folder")
    return _detect_hf(os.fspath(source), path)


def _detect_hf(source: str, folder: Path) -> Detection:
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise MissingFileError(f"{config_path}: config.json not found; not a Hugging Face folder")
    config = read_json(config_path)
    archs = config.get("architectures") or []
    hf_arch = archs[0] if isinstance(archs, list) and archs else None
    model_type = config.get("model_type")
    row = row_for_config(config)
    if hf_arch is None and row is not None:
        hf_arch = row.hf_name  # older configs carry only model_type
    params: int | None = None
    dtype: str | None = None
    weights_problem: str | None = None
    ckpt: Checkpoint | None = None
    try:
        ckpt = Checkpoint(folder)
        params, dtype = ckpt.n_parameters(), ckpt.dominant_dtype()
    except DetectionError as exc:
        weights_problem = str(exc)
    tok = tokenizer_kind(folder)
    reason: str | None = None
    if weights_problem is not None:
        reason = weights_problem
    elif hf_arch is None:
        reason = f"config.json has no 'architectures' (model_type={model_type!r})"
    elif row is None:
        reason = f"unsupported architecture {hf_arch!r}; supported: {', '.join(supported_names())}"
    elif unread := [why for key, why in row.unread_layouts if key in config]:
        reason = unread[0]
    elif tok is None:
        reason = "no tokenizer.model, tokenizer.json or sentencepiece.bpe.model in the folder"
    return Detection(
        source=source,
        path=folder,
        format="hf-safetensors",
        hf_architecture=hf_arch,
        model_type=model_type if isinstance(model_type, str) else None,
        llama_arch=row.llama_arch if row else None,
        family=row.family if row else None,
        parameters=params,
        dtype=dtype,
        tokenizer=tok,
        supported=reason is None,
        reason=reason,
        config=config,
        checkpoint=ckpt,
        projector=_checkpoint_projector(row, config),
    )


# GGUF keys that say where a file came from: GGUF's own source and base-model keys, who
# quantized it, the importance matrix llama-quantize records, and llorch's (source revision and
# file digests, converter and llama.cpp versions, quality; see convert/batch/provenance.py).
PROVENANCE_PREFIXES = (
    "general.source.",
    "general.base_model.",
    "general.quantized_by",
    "quantize.imatrix.",
    "llorch.",
)


def gguf_provenance(fields: dict[str, Any]) -> dict[str, Any] | None:
    found = {
        name: list(value) if isinstance(value, tuple) else value
        for name, value in fields.items()
        if name.startswith(PROVENANCE_PREFIXES)
    }
    return found or None


def _detect_gguf(source: str, path: Path) -> Detection:
    try:
        header = read_header(path, strings=lambda key: key.startswith(PROVENANCE_PREFIXES))
    except GGUFHeaderError as exc:
        raise InvalidFileError(f"{path}: not a readable GGUF file ({exc})") from exc
    value_of = header.fields.get
    arch = value_of(gguf.Keys.General.ARCHITECTURE)
    ftype = value_of(gguf.Keys.General.FILE_TYPE)
    params = sum(math.prod(t.shape) for t in header.tensors)
    tok_model: Any = value_of(gguf.Keys.Tokenizer.MODEL)
    dtype = gguf.LlamaFileType(ftype).name if isinstance(ftype, int) else None
    return Detection(
        source=source,
        path=path,
        format="gguf",
        hf_architecture=None,
        model_type=None,
        llama_arch=arch,
        family=None,
        parameters=params,
        dtype=dtype,
        tokenizer=GGUF_TOKENIZERS.get(tok_model, tok_model),
        supported=True,  # llama.cpp decides at load time; it knows more arches than we convert
        reason=None,
        provenance=gguf_provenance(header.fields),
        projector=_projector_types(value_of),
    )


def _checkpoint_projector(row: ArchRow | None, config: Mapping[str, Any]) -> str | None:
    """The projector types of the towers a checkpoint has (its config.json's vision_config,
    audio_config), joined: Gemma 4 E2B's `gemma4v, gemma4a`, 31B's `gemma4v`."""
    towers = row.towers if row is not None else ()
    found = [t.projector_type for t in towers if isinstance(config.get(t.config_key), dict)]
    return ", ".join(found) or None


def _projector_types(value_of: Any) -> str | None:
    """A projector file's clip types: one key for a single tower, or one per tower
    (`clip.vision.projector_type`, `clip.audio.projector_type`: Gemma 4's file, as llama.cpp
    writes it even with the vision tower alone), joined as an HF checkpoint's row shows them."""
    one = value_of(gguf.Keys.Clip.PROJECTOR_TYPE)
    if isinstance(one, str):
        return one
    per_tower = [
        value_of(key)
        for key in (gguf.Keys.ClipVision.PROJECTOR_TYPE, gguf.Keys.ClipAudio.PROJECTOR_TYPE)
    ]
    found = [t for t in per_tower if isinstance(t, str)]
    return ", ".join(found) or None


__all__ = [
    "SUPPORTED",
    "ArchRow",
    "Detection",
    "DetectionError",
    "InvalidFileError",
    "MissingFileError",
    "SourceNotFoundError",
    "UnsupportedArchitectureError",
    "detect",
    "lookup",
    "supported_names",
    "text_config",
]
