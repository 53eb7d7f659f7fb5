"""Where tensors go: `--override-tensor REGEX=BUFFER`, `--n-cpu-moe N`, `--cpu-moe`.

llama.cpp's `-ot` (common/arg.cpp): a list of (pattern, buffer type) that the model loader
tries in order for each tensor's name (std::regex_search, the first match wins), set on
llama_model_params.tensor_buft_overrides, terminated by a NULL pattern. Buffer types are
named as ggml's device registry names them (each device's default buffer type: "CPU",
"CUDA0", ...). `--cpu-moe` and `--n-cpu-moe` are patterns over the expert tensors
(common.h's LLM_FFN_EXPS_REGEX) sent to the CPU. llama-cpp-python declares the field but
not its struct, so both are declared here.
"""

from __future__ import annotations

import ctypes
import re
from collections.abc import Sequence

from llorch.worker.backend.errors import ModelLoadError

# common.h: LLM_FFN_EXPS_REGEX and llm_ffn_block_regex(): the experts' up, down, gate (and
# fused gate_up) projections, and their shared-expert "chexps" variants
EXPERTS = r"\.ffn_(up|down|gate|gate_up)_(ch|)exps"
CPU = "CPU"


class TensorBuftOverride(ctypes.Structure):
    """llama.h: struct llama_model_tensor_buft_override."""

    _fields_ = [("pattern", ctypes.c_char_p), ("buft", ctypes.c_void_p)]


def cpu_moe(n_layers: int | None) -> tuple[tuple[str, str], ...]:
    """The experts of every layer (None: --cpu-moe) or of the first `n_layers` on the CPU."""
    if n_layers is None:
        return ((EXPERTS, CPU),)
    return tuple((rf"blk\.{i}{EXPERTS}", CPU) for i in range(n_layers))


def parse(text: str) -> tuple[tuple[str, str], ...]:
    """`REGEX=BUFFER[,REGEX=BUFFER...]` → pairs; the regex must compile (Python's re reads
    the ECMAScript patterns llama.cpp's std::regex takes, for what -ot is used for)."""
    pairs = []
    for part in (p.strip() for p in text.split(",") if p.strip()):
        pattern, sep, buffer = part.rpartition("=")
        if not sep or not pattern or not buffer.strip():
            raise ValueError(f"--override-tensor takes REGEX=BUFFER, got {part!r}")
        try:
            re.compile(pattern)
        except re.error as exc:
            raise ValueError(
                f"--override-tensor {part!r}: {pattern!r} is not a regex: {exc}"
            ) from None
        pairs.append((pattern, buffer.strip()))
    return tuple(pairs)


def buffer_types() -> dict[str, int]:
    """Each device's default buffer type by name, as common/arg.cpp lists them for -ot."""
    from llorch.worker.backend import system

    lib = system._ggml()
    lib.ggml_backend_dev_buffer_type.argtypes = [ctypes.c_void_p]
    lib.ggml_backend_dev_buffer_type.restype = ctypes.c_void_p
    lib.ggml_backend_buft_name.argtypes = [ctypes.c_void_p]
    lib.ggml_backend_buft_name.restype = ctypes.c_char_p
    found = {}
    for i in range(lib.ggml_backend_dev_count()):
        buft = lib.ggml_backend_dev_buffer_type(lib.ggml_backend_dev_get(i))
        if buft:
            found[(lib.ggml_backend_buft_name(buft) or b"").decode()] = int(buft)
    return found


def build(
    overrides: Sequence[tuple[str, str]],
) -> ctypes.Array[TensorBuftOverride] | None:
    """The NULL-terminated array for llama_model_params.tensor_buft_overrides (None: no
    overrides). The array holds its pattern strings: keep it until the load returns."""
    if not overrides:
        return None
    types = buffer_types()
    unknown = sorted({name for _, name in overrides if name not in types})
    if unknown:
        raise ModelLoadError(
            f"--override-tensor: unknown buffer type {', '.join(unknown)}; this machine's "
            f"are {', '.join(types) or 'none'}"
        )
    array = (TensorBuftOverride * (len(overrides) + 1))()
    for entry, (pattern, name) in zip(array, overrides, strict=False):
        entry.pattern = pattern.encode()  # ctypes keeps the bytes alive with the array
        entry.buft = types[name]
    return array
