"""Provenance: where an output came from, in a JSON sidecar beside it and in its GGUF metadata.

A sidecar `<stem>.provenance.json` is written after its GGUF has been renamed into place, so it
marks a finished output: a rerun skips an output whose sidecar has the same key (job, outtype,
the sha256 of every source file, the options, the converter's and llama.cpp's versions) and
whose file still has the recorded size. Source digests come from llorch.digests (an HF blob's
name, or a digest remembered by file identity), so that check reads no weights.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

import gguf

from llorch import atomic, keys
from llorch.convert.cache import _READ, CONVERTER_VERSION
from llorch.digests import file_sha256

FORMAT = "llorch.provenance/1"
SUFFIX = ".provenance.json"
# GGUF has no keys for these; llorch's own (llorch/keys.py).
KEY_REVISION = keys.SOURCE_REVISION
KEY_FILES = keys.SOURCE_FILES
KEY_SHA256 = keys.SOURCE_SHA256
KEY_CONVERTER = keys.CONVERTER_VERSION
KEY_LLAMA_CPP = keys.LLAMA_CPP_VERSION
MATCHED = ("job", "outtype", "source_files", "options", "versions")


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "unknown"


def versions() -> dict[str, str]:
    return {
        "llorch": _version("llorch"),
        "converter": CONVERTER_VERSION,
        "llama_cpp_python": _version("llama-cpp-python"),
        "gguf": _version("gguf"),
    }


def source_files(folder: Path) -> dict[str, str]:
    """sha256 of every file conversion reads: config, tokenizer files, index and weights."""
    files = sorted({*folder.glob("*.safetensors"), *(folder / n for n in _READ)})
    return {p.name: file_sha256(p) for p in files if p.is_file()}


def expected(job: str, outtype: str, files: Mapping[str, str], options: Any) -> dict[str, Any]:
    """The fields a finished output's record must have for it to be reused (MATCHED)."""
    return {
        "job": job,
        "outtype": outtype,
        "source_files": dict(files),
        "options": options,
        "versions": versions(),
    }


def sidecar_path(output: Path) -> Path:
    return output.with_name(output.name.removesuffix(".gguf") + SUFFIX)


def key(record: Mapping[str, Any]) -> tuple[str, ...]:
    return tuple(json.dumps(record.get(k), sort_keys=True) for k in MATCHED)


def write_sidecar(output: Path, record: Mapping[str, Any]) -> Path:
    path = sidecar_path(output)
    with atomic.atomic_output(path) as tmp:
        tmp.write_text(json.dumps(record, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return path


def read_sidecars(out_dir: Path) -> dict[tuple[str, str], dict[str, Any]]:
    """Finished outputs in `out_dir`, by (job, outtype); unreadable sidecars are ignored (their
    outputs are redone)."""
    found: dict[tuple[str, str], dict[str, Any]] = {}
    for path in sorted(out_dir.glob(f"*{SUFFIX}")):
        with contextlib.suppress(OSError, ValueError):
            record = json.loads(path.read_text(encoding="utf-8"))
            if isinstance(record, dict) and record.get("format") == FORMAT:
                found[(str(record.get("job")), str(record.get("outtype")))] = record
    return found


def is_current(record: Mapping[str, Any], expected: Mapping[str, Any], out_dir: Path) -> bool:
    """The recorded output is still there, whole, and was made from the same inputs."""
    if key(record) != key(expected):
        return False
    output = out_dir / str(record.get("file"))
    try:
        return output.stat().st_size == record.get("bytes")
    except OSError:
        return False


def gguf_metadata(
    source: Mapping[str, Any], files: Mapping[str, str], quantized_by: str
) -> dict[str, str | list[str]]:
    """Provenance keys for the GGUF (llama.cpp's quantizer copies them into derived files)."""
    meta: dict[str, str | list[str]] = {
        gguf.Keys.General.QUANTIZED_BY: quantized_by,
        KEY_FILES: list(files),
        KEY_SHA256: list(files.values()),
        KEY_CONVERTER: f"llorch {_version('llorch')} (converter {CONVERTER_VERSION})",
        KEY_LLAMA_CPP: f"llama-cpp-python {_version('llama-cpp-python')}",
    }
    if source.get("url"):
        meta[gguf.Keys.General.SOURCE_URL] = str(source["url"])
        meta[gguf.Keys.General.SOURCE_REPO_URL] = str(source["url"])
    if source.get("commit"):
        meta[KEY_REVISION] = str(source["commit"])
    return meta


def remove_stale_temporaries(out_dir: Path) -> list[Path]:
    """Temporaries of a batch that was killed (llorch.atomic's `.<name>.<hex>.tmp` names):
    called while holding the folder's batch lock, so no live writer owns them."""
    removed = []
    for path in out_dir.glob(".*.tmp"):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
            removed.append(path)
    return removed
