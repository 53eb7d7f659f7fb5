"""What the installed llama.cpp was compiled with, and which devices it sees."""

from __future__ import annotations

import ctypes
import json
import sys
from functools import cache
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import llama_cpp as ll

from llorch.worker.backend.protocol import BackendInfo, Device

# Written by build/backend.py next to the venv's interpreter prefix.
PRESET_MARKER = Path(sys.prefix) / "llorch-backend.json"

# ggml-backend.h: enum ggml_backend_dev_type
_DEVICE_KINDS = {0: "cpu", 1: "gpu", 2: "igpu", 3: "accel"}


def installed_preset() -> str | None:
    try:
        return str(json.loads(PRESET_MARKER.read_text())["preset"])
    except (OSError, ValueError, KeyError):
        return None


def _ggml() -> ctypes.CDLL:
    from llama_cpp import _ggml  # loads libggml from llama_cpp/lib, as llama_cpp does

    lib = _ggml.libggml
    lib.ggml_backend_dev_count.restype = ctypes.c_size_t
    lib.ggml_backend_dev_get.argtypes = [ctypes.c_size_t]
    lib.ggml_backend_dev_get.restype = ctypes.c_void_p
    lib.ggml_backend_dev_name.argtypes = [ctypes.c_void_p]
    lib.ggml_backend_dev_name.restype = ctypes.c_char_p
    lib.ggml_backend_dev_description.argtypes = [ctypes.c_void_p]
    lib.ggml_backend_dev_description.restype = ctypes.c_char_p
    lib.ggml_backend_dev_type.argtypes = [ctypes.c_void_p]
    lib.ggml_backend_dev_type.restype = ctypes.c_int
    lib.ggml_backend_dev_memory.argtypes = [
        ctypes.c_void_p,
        ctypes.POINTER(ctypes.c_size_t),
        ctypes.POINTER(ctypes.c_size_t),
    ]
    lib.ggml_backend_dev_memory.restype = None
    return lib


def devices() -> tuple[Device, ...]:
    lib = _ggml()
    found = []
    for i in range(lib.ggml_backend_dev_count()):
        dev = lib.ggml_backend_dev_get(i)
        free, total = ctypes.c_size_t(0), ctypes.c_size_t(0)
        lib.ggml_backend_dev_memory(dev, ctypes.byref(free), ctypes.byref(total))
        found.append(
            Device(
                name=(lib.ggml_backend_dev_name(dev) or b"").decode(),
                description=(lib.ggml_backend_dev_description(dev) or b"").decode(),
                kind=_DEVICE_KINDS.get(lib.ggml_backend_dev_type(dev), "unknown"),
                memory_total_bytes=total.value,
                memory_free_bytes=free.value,
            )
        )
    return tuple(found)


def has_gpu() -> bool:
    """Whether this machine has a GPU llama.cpp can offload to. llama_supports_gpu_offload()
    also says yes for any build with the RPC backend, GPU or not."""
    return any(d.kind in ("gpu", "igpu") for d in devices())


@cache
def _library_version() -> str:
    try:
        return version("llama-cpp-python")
    except PackageNotFoundError:
        return getattr(ll, "__version__", "unknown")


def backend_info() -> BackendInfo:
    return BackendInfo(
        library="llama-cpp-python",
        version=_library_version(),
        preset=installed_preset(),
        gpu_offload=has_gpu(),
        devices=devices(),
        system_info=ll.llama_print_system_info().decode("utf-8", "replace").strip(),
    )
