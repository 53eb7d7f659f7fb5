"""`--fit`: the context per slot that fits the free memory, as llama-server's `--fit` does.

llama.cpp's own fit (common/fit.cpp, `llama_params_fit`; the `llama-fit-params` tool prints
what it picks) is not in llama.h. The facts taken from it: it keeps `--fit-target` (1 GiB)
free on each device; it starts from the training context and lowers it, a multiple of 256
cells per stream, down to a floor (`--fit-ctx`, 4096 there); it counts the weights, the KV
cache and the compute buffers; and only where the floor does not fit does it take layers off
the GPU. Here the costs come from offload.py (the same per-token KV price admission and the
several-models check use), with each sliding-window layer priced at the cells it keeps, read
from the model llama.cpp has just loaded (its loader logs which layers slide): loading a
GGUF through llama.cpp takes a second where gguf's Python reader takes many (a 262,144-token
vocabulary).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterable
from dataclasses import replace

from llorch.worker.backend import offload
from llorch.worker.backend.errors import OutOfMemoryError
from llorch.worker.backend.protocol import FitInfo, FitOptions
from llorch.worker.models import host_memory_available

log = logging.getLogger("llorch.backend")

ALIGN = 256  # llama.cpp rounds a context up to this many cells; fit.cpp rounds down to it
# llama_model_loader: "layer   5 assigned to device CPU, is_swa = 0"
_IS_SWA = re.compile(r"layer +(\d+) assigned to device [^,]+, is_swa = ([01])")


def free_host_bytes() -> int | None:
    """What the host can allocate without swapping (MemAvailable); a test patches this."""
    return host_memory_available()


def layer_memory(
    meta: Callable[[str], str], n_layer: int, memory: str
) -> tuple[tuple[bool, ...], int]:
    """(which layers keep a KV cache, the bytes of recurrent state a slot holds), as llama.cpp
    decides when it builds a loaded model's memory (src/models/*.cpp `is_recr_impl`,
    llama-hparams.cpp `n_embd_r`/`n_embd_s`). `memory`: "attention", "recurrent" (no KV
    cache) or "hybrid": the attention layers are every `full_attention_interval`-th (Qwen 3.5,
    Qwen3-Next, MiniMax-01), else those with KV heads in the per-layer `head_count_kv` array
    (Granite 4, Jamba, LFM2, Nemotron-H), else all of them, each beside its recurrent mixer
    (Falcon-H1). A recurrent layer's state is priced from the Mamba-style `ssm.*` keys (F32,
    llama.cpp's default): (conv_kernel - 1) x (inner + 2 x groups x state) values of
    convolution and state x inner of scan state; RWKV's, LFM2's and KDA's, read from other
    keys, are not priced (0). `meta(key)` with "{arch}" filled in."""
    if memory == "attention":
        return (), 0
    kv: tuple[bool, ...] = (False,) * n_layer
    recurrent = n_layer
    if memory == "hybrid":
        kv = ()
        interval = meta("{arch}.full_attention_interval")
        heads = meta("{arch}.attention.head_count_kv")
        counts = [item.strip() for item in heads.strip("[]").split(",")]
        if interval.isdigit() and int(interval) > 0:
            kv = tuple((i + 1) % int(interval) == 0 for i in range(n_layer))
        elif heads.startswith("[") and len(counts) == n_layer and all(c.isdigit() for c in counts):
            kv = tuple(int(c) > 0 for c in counts)  # an array, as llama.cpp shows one
        if kv:
            recurrent = kv.count(False)

    def ssm(name: str) -> int:
        value = meta("{arch}.ssm." + name)
        return int(value) if value.isdigit() else 0

    conv, inner, state, groups = (
        ssm(k) for k in ("conv_kernel", "inner_size", "state_size", "group_count")
    )
    per_layer = max(conv - 1, 0) * (inner + 2 * groups * state) + state * inner
    return kv, 4 * per_layer * recurrent


def loaded_footprint(
    meta: Callable[[str], str],
    arch: str,
    n_layer: int,
    n_vocab: int,
    weights_bytes: int,
    logged: Iterable[str],
    memory: str = "attention",
) -> offload.ModelFootprint:
    """The footprint of a model llama.cpp has loaded: its hyperparameters from the GGUF's
    metadata (`meta(key)`), its sliding-window layers from the loader's log lines, its KV
    layers and recurrent state by `memory` (layer_memory). The weights count as a whole
    (other_bytes): the host holds them all."""
    slides = {int(m[1]): m[2] == "1" for m in _IS_SWA.finditer("".join(logged))}

    def get(key: str, default: int) -> int:
        try:
            return int(meta(key.format(arch=arch)))
        except ValueError:  # absent, or an array per layer: the default
            return default

    swa = tuple(slides.get(i, False) for i in range(n_layer))
    kv, recurrent = layer_memory(lambda key: meta(key.format(arch=arch)), n_layer, memory)
    return replace(
        offload.shape(get, (0,) * n_layer, weights_bytes, n_vocab, swa, kv),
        recurrent_bytes_per_slot=recurrent,
    )


def _gib(n: int) -> str:
    return f"{n / 2**30:.2f} GiB"


def choose(
    model: offload.ModelFootprint,
    options: FitOptions,
    *,
    free_bytes: int | None,
    weights_bytes: int,
    parallel: int,
    type_k: str = "f16",
    type_v: str = "f16",
    swa_full: bool = False,
    n_ubatch: int = 512,
    device: str = "host",
) -> FitInfo:
    """The largest context per slot, a multiple of 256 between the floor and the cap (the
    training context or --fit-ctx-max, whichever is smaller), whose weights, KV cache of
    `parallel` slots and compute buffers leave `options.target_bytes` of `free_bytes`.
    Raises OutOfMemoryError when even the floor does not fit."""
    train = model.n_ctx_train
    cap = min(options.ctx_max or train, train)
    floor = min(options.ctx_min, cap)
    compute = offload.compute_bytes(model, parallel, n_ubatch)

    def kv(ctx: int) -> int:
        return offload.context_bytes(
            model, ctx, parallel, type_k, type_v, swa_full=swa_full, n_ubatch=n_ubatch
        )

    def info(ctx: int, free: int, reason: str) -> FitInfo:
        cache = kv(ctx)
        return FitInfo(
            ctx_per_slot=ctx,
            parallel=parallel,
            expected_bytes=weights_bytes + cache + compute,
            weights_bytes=weights_bytes,
            kv_bytes=cache,
            compute_bytes=compute,
            free_bytes=free,
            target_bytes=options.target_bytes,
            device=device,
            reason=reason,
        )

    bound = "--fit-ctx-max" if options.ctx_max and options.ctx_max < train else "training context"
    if free_bytes is None:
        return info(cap, 0, f"free memory unknown: the cap ({bound}) of {cap} tokens")
    budget = free_bytes - options.target_bytes

    def fits(ctx: int) -> bool:
        return weights_bytes + kv(ctx) + compute <= budget

    if fits(cap):
        return info(cap, free_bytes, f"the cap ({bound}) of {cap} tokens per slot fits")
    if not fits(floor):
        need = weights_bytes + kv(floor) + compute
        raise OutOfMemoryError(
            f"--fit: even {parallel} slots x {floor} tokens need {_gib(need)} on the {device} "
            f"(weights {_gib(weights_bytes)}, KV cache {_gib(kv(floor))}, compute buffers "
            f"{_gib(compute)}) and --fit-target keeps {_gib(options.target_bytes)} free; "
            f"{_gib(free_bytes)} is free. Lower --parallel or --fit-target, use a smaller "
            "quantization or --cache-type-k/-v q8_0, or give --ctx-size to skip the fit",
            device=device,
            needed_bytes=need + options.target_bytes,
            free_bytes=free_bytes,
        )
    lo, hi = -(-floor // ALIGN), cap // ALIGN  # in steps of 256 cells; floor itself fits
    best = floor
    while lo <= hi:
        mid = (lo + hi) // 2
        if fits(mid * ALIGN):
            best, lo = max(best, mid * ALIGN), mid + 1
        else:
            hi = mid - 1
    whole = weights_bytes + kv(cap) + compute
    return info(
        best,
        free_bytes,
        f"{parallel} slots x {cap} tokens ({bound}) would need {_gib(whole)}, more than the "
        f"{_gib(free_bytes)} free less --fit-target's {_gib(options.target_bytes)}",
    )


def with_fewer_layers(
    model: offload.ModelFootprint,
    options: FitOptions,
    *,
    free_bytes: int,
    parallel: int,
    type_k: str = "f16",
    type_v: str = "f16",
    n_ubatch: int = 512,
) -> tuple[int, FitInfo]:
    """The GPU's second step, where not even the floor fits with every layer on it: the
    floor context and as many layers as fit with it (llama.cpp's order: the context first,
    then the layers). `model` is read from the GGUF header, which has each layer's weights.
    Returns (n_gpu_layers, what was chosen)."""
    floor = min(options.ctx_min, model.n_ctx_train)
    # the compute buffers stay on the GPU whatever the layers; --fit-target is the slack
    # (the CUDA context, fragmentation) that --n-gpu-layers auto's fixed reserve stands for
    compute = offload.compute_bytes(model, parallel, n_ubatch)
    budget = free_bytes - options.target_bytes
    layers = offload.fit_layers(model, budget, floor * parallel, type_k, type_v, reserve=compute)
    n_layer = len(model.layer_bytes)
    on_gpu, _ = offload.weight_bytes(model, layers)
    kv = offload.context_bytes(model, floor, parallel, type_k, type_v) * min(layers, n_layer)
    kv //= max(1, n_layer)
    return layers, FitInfo(
        ctx_per_slot=floor,
        parallel=parallel,
        expected_bytes=on_gpu + kv + compute,
        weights_bytes=on_gpu,
        kv_bytes=kv,
        compute_bytes=compute,
        free_bytes=free_bytes,
        target_bytes=options.target_bytes,
        device="gpu",
        reason=f"not even {floor} tokens a slot fit with every layer on the GPU: {layers} of "
        f"{n_layer + 1} layers do, the rest run on the CPU",
    )
