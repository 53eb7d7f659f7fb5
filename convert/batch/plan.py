"""A batch plan: which sources to convert to which output types, from a manifest or folders.

A manifest is TOML (or JSON, by its `.json` suffix): top-level defaults, then one `[[models]]`
table per source. It is validated with pydantic (unknown keys are refused, naming the entry),
and relative local sources are taken relative to the manifest's folder. `hf:org/name[@rev]`
sources are resolved to a snapshot folder of the local Hugging Face cache at plan time.
"""

from __future__ import annotations

import json
import os
import re
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from llorch.convert import writer as gw
from llorch.convert.batch.errors import ManifestError
from llorch.convert.batch.sources import Source, resolve
from llorch.digests import file_sha256

DEFAULT_OUTTYPES = ("f16", "q8_0", "q4_k_m")
# Written by the converter itself; every other outtype is quantized from one of these.
HIGH_PRECISION = ("f32", "bf16", "f16")


class _Defaults(BaseModel):
    model_config = ConfigDict(extra="forbid")
    outtypes: list[str] | None = Field(default=None, min_length=1)
    # true/false: tokenizer verification on or off; "logits": tokenizer and logits
    verify: bool | Literal["logits"] | None = None
    quantized_by: str | None = None
    license: str | None = None
    # an importance matrix file or a calibration text (computed once per source from its
    # high-precision output, reused for every type), and an evaluation text for --quality
    imatrix: str | None = None
    imatrix_chunk: int | None = Field(default=None, ge=16)
    quality: str | None = None
    quality_chunk: int | None = Field(default=None, ge=16)
    # a Hugging Face model repo (org/name) the finished outputs are pushed to
    push: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+$")


class _Entry(_Defaults):
    source: str = Field(min_length=1)
    id: str | None = Field(default=None, min_length=1, pattern=r"^[A-Za-z0-9._@-]+$")
    pre: str | None = None
    name: str | None = None
    finetune: str | None = None
    version: str | None = None


class _Manifest(_Defaults):
    out: str | None = None
    models: list[_Entry] = Field(min_length=1)


@dataclass(frozen=True)
class JobSpec:
    """One source and everything asked of it; `id` is unique within the plan."""

    id: str
    source: Source
    outtypes: tuple[str, ...]
    verify: bool = True
    pre: str | None = None
    verify_logits: bool = False  # also compare logits with transformers' (verify_logits.py)
    # GGUF naming and metadata overrides: name, finetune, version, license, quantized_by
    overrides: dict[str, str] = field(default_factory=dict)
    imatrix: str | None = None  # absolute path: an imatrix file or a calibration text
    imatrix_chunk: int = 512
    quality: str | None = None  # absolute path of the evaluation text
    quality_chunk: int = 512
    push: str | None = None  # the model repo the finished outputs are pushed to

    def options(self) -> dict[str, Any]:
        """What changes the bytes of an output (besides the source files and versions)."""
        options: dict[str, Any] = {
            "verify": self.verify,
            "pre": self.pre,
            "overrides": dict(sorted(self.overrides.items())),
            # which of them is converted (and the rest quantized from) depends on this set
            "high_precision": [t for t in HIGH_PRECISION if t in self.outtypes],
        }
        if self.verify_logits:  # only when asked, so earlier records still match without it
            options["verify_logits"] = True
        if self.imatrix is not None:  # by content: a changed text redoes the outputs
            sha = file_sha256(Path(self.imatrix))
            options["imatrix"] = {"sha256": sha, "chunk": self.imatrix_chunk}
        if self.quality is not None:
            sha = file_sha256(Path(self.quality))
            options["quality"] = {"sha256": sha, "chunk": self.quality_chunk}
        return options


@dataclass(frozen=True)
class Plan:
    jobs: tuple[JobSpec, ...]
    out: Path | None = None  # the manifest's `out`, relative to the manifest


def check_outtypes(outtypes: Sequence[str], *, has_imatrix: bool = False) -> tuple[str, ...]:
    names: list[str] = []
    for name in outtypes:
        checked = gw.check_outtype(name.strip())
        gw.check_imatrix(checked, has_imatrix)
        if checked not in names:
            names.append(checked)
    if not names:
        raise ManifestError("no outtypes given")
    return tuple(names)


def _unique_id(wanted: str, taken: set[str]) -> str:
    base = re.sub(r"[^A-Za-z0-9._@-]+", "-", wanted).strip("-") or "model"
    candidate, n = base, 2
    while candidate in taken:
        candidate, n = f"{base}-{n}", n + 1
    taken.add(candidate)
    return candidate


def _read(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
        return json.loads(text) if path.suffix == ".json" else tomllib.loads(text)
    except (OSError, UnicodeDecodeError) as exc:
        raise ManifestError(f"{path}: cannot read the manifest ({exc})") from exc
    except (tomllib.TOMLDecodeError, json.JSONDecodeError) as exc:
        raise ManifestError(
            f"{path}: not valid {path.suffix.lstrip('.') or 'TOML'} ({exc})"
        ) from exc


def load_manifest(
    path: str | os.PathLike[str],
    *,
    outtypes: Sequence[str] | None = None,
    has_imatrix: bool = False,
) -> Plan:
    """The plan a manifest describes; `outtypes` (e.g. from --outtypes) replaces the default.
    `has_imatrix`: an importance matrix will be given for every job (with_texts)."""
    path = Path(path)
    try:
        manifest = _Manifest.model_validate(_read(path))
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()
        )
        raise ManifestError(f"{path}: {problems}") from exc
    default_types = outtypes or manifest.outtypes or DEFAULT_OUTTYPES
    taken: set[str] = set()
    jobs = []
    for i, entry in enumerate(manifest.models):
        try:
            source = resolve(entry.source, base=path.parent)
            types = check_outtypes(entry.outtypes or default_types, has_imatrix=True)
        except Exception as exc:
            raise ManifestError(f"{path}: models[{i}] ({entry.source}): {exc}") from exc
        overrides = {
            k: v
            for k in ("name", "finetune", "version", "license", "quantized_by")
            if (v := getattr(entry, k) or getattr(manifest, k, None)) is not None
        }
        verify = entry.verify if entry.verify is not None else manifest.verify
        texts: dict[str, str] = {}
        for key in ("imatrix", "quality"):
            given = getattr(entry, key) or getattr(manifest, key)
            if given is not None:
                texts[key] = str((path.parent / given).absolute())
                if not Path(texts[key]).is_file():
                    raise ManifestError(f"{path}: models[{i}]: {key} {given!r}: no such file")
        if "imatrix" not in texts and not has_imatrix:
            try:
                check_outtypes(types)
            except Exception as exc:
                raise ManifestError(f"{path}: models[{i}] ({entry.source}): {exc}") from exc
        chunks: dict[str, int] = {
            f"{k}_chunk": v
            for k in ("imatrix", "quality")
            if (v := getattr(entry, f"{k}_chunk") or getattr(manifest, f"{k}_chunk")) is not None
        }
        jobs.append(
            JobSpec(
                id=_unique_id(entry.id or source.default_id, taken),
                source=source,
                outtypes=types,
                verify=verify is not False,
                pre=entry.pre,
                verify_logits=verify == "logits",
                overrides=overrides,
                imatrix=texts.get("imatrix"),
                quality=texts.get("quality"),
                push=entry.push or manifest.push,
                **chunks,
            )
        )
    out = path.parent / manifest.out if manifest.out is not None else None
    return Plan(tuple(jobs), out)


def plan_from_dirs(
    dirs: Sequence[str | os.PathLike[str]],
    outtypes: Sequence[str] = DEFAULT_OUTTYPES,
    *,
    has_imatrix: bool = False,
) -> Plan:
    """Each given folder with a config.json is one source, and so is each such child folder.
    `has_imatrix`: an importance matrix will be given (with_texts), so the types that need
    one are accepted."""
    types = check_outtypes(outtypes, has_imatrix=has_imatrix)
    taken: set[str] = set()
    jobs = []
    for d in dirs:
        folder = Path(d)
        if not folder.is_dir():
            raise ManifestError(f"{folder}: not a folder")
        found = (
            [folder]
            if (folder / "config.json").is_file()
            else sorted(c for c in folder.iterdir() if (c / "config.json").is_file())
        )
        if not found:
            raise ManifestError(f"{folder}: no config.json in it or in any child folder")
        for f in found:
            source = resolve(str(f))
            jobs.append(JobSpec(_unique_id(source.default_id, taken), source, types))
    return Plan(tuple(jobs))


def with_texts(
    plan: Plan,
    *,
    imatrix: str | None = None,
    imatrix_chunk: int | None = None,
    quality: str | None = None,
    quality_chunk: int | None = None,
    push: str | None = None,
) -> Plan:
    """The plan with an imatrix (file or calibration text) and an evaluation text for every
    job (the command line's --imatrix and --quality win over the manifest's)."""
    import dataclasses

    change: dict[str, Any] = {}
    for key, given in (("imatrix", imatrix), ("quality", quality)):
        if given is not None:
            if not Path(given).is_file():
                raise ManifestError(f"--{key} {given}: no such file")
            change[key] = str(Path(given).absolute())
    if imatrix_chunk is not None:
        change["imatrix_chunk"] = imatrix_chunk
    if quality_chunk is not None:
        change["quality_chunk"] = quality_chunk
    if push is not None:
        if not re.fullmatch(r"[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+", push):
            raise ManifestError(f"--push {push!r}: expected a model repo, ORG/NAME")
        change["push"] = push
    jobs = tuple(dataclasses.replace(j, **change) for j in plan.jobs)
    for j in jobs:
        for t in j.outtypes:
            gw.check_imatrix(t, j.imatrix is not None)
    return dataclasses.replace(plan, jobs=jobs)
