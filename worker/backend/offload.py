"""`--n-gpu-layers auto`: the largest number of layers whose weights and KV cache fit the GPU.

The estimate reads the GGUF's header (no weights): the bytes of each `blk.N.*` tensor group,
of the tensors outside the blocks (offloaded with the last "layer", as llama.cpp counts the
output layer as layer n_layer), and the KV cache of each layer at the requested context. A
margin is kept for llama.cpp's compute buffers, which grow with the batch and the vocabulary.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from gguf import Keys

from llorch.gguf_header import StringArray, read_header
from llorch.worker.backend import kvcache

_BLOCK = re.compile(r"blk\.(\d+)\.")
# Compute buffers: about 0.5 GiB for a batch of 512 over a 128k vocabulary, plus slack for
# the CUDA context and fragmentation.
COMPUTE_RESERVE_BYTES = 768 << 20


@dataclass(frozen=True)
class ModelFootprint:
    layer_bytes: tuple[int, ...]  # weights of each block
    other_bytes: int  # embeddings, output norm and head: offloaded with the last layer
    kv_bytes_per_token_per_layer: int  # at F16, the default
    n_ctx_train: int
    k_values_per_token_per_layer: int = 0  # K and V elements per cell: priced per cache type
    v_values_per_token_per_layer: int = 0
    # Which layers attend through a sliding window of n_swa tokens (Gemma 2/3/4): without
    # --swa-full their cache keeps only the window (); (): none, or not known (an upper bound).
    swa_layers: tuple[bool, ...] = ()
    n_swa: int = 0
    n_vocab: int = 0  # the logits' width: the compute buffer holds a batch of them
    n_embd: int = 0
    # Which layers have a KV cache at all: a recurrent layer (Mamba-2; the recurrent layers
    # of Qwen 3.5, Granite 4, LFM2) holds a small fixed state per slot instead. (): every
    # layer (attention models, and an upper bound where it is not known).
    kv_layers: tuple[bool, ...] = ()
    recurrent_bytes_per_slot: int = 0  # the recurrent layers' states, whatever the context

    def has_kv(self, layer: int) -> bool:
        return layer >= len(self.kv_layers) or self.kv_layers[layer]

    def kv_bytes_per_token(self, type_k: str = "f16", type_v: str = "f16") -> float:
        """What one cell of one layer costs with these cache types (backend/kvcache.py)."""
        if not self.k_values_per_token_per_layer:  # built by hand, F16 only
            return self.kv_bytes_per_token_per_layer
        return self.k_values_per_token_per_layer * kvcache.bytes_per_value(
            type_k
        ) + self.v_values_per_token_per_layer * kvcache.bytes_per_value(type_v)


def shape(
    get: Callable[[str, int], int],
    layer_bytes: tuple[int, ...],
    other_bytes: int,
    n_vocab: int,
    swa_layers: tuple[bool, ...] = (),
    kv_layers: tuple[bool, ...] = (),
) -> ModelFootprint:
    """A footprint from the model's hyperparameters, `get(gguf.Keys template, default)`
    (read from the GGUF header, or from a model llama.cpp has loaded)."""
    n_head = get(Keys.Attention.HEAD_COUNT, 1)
    n_head_kv = get(Keys.Attention.HEAD_COUNT_KV, n_head)
    n_embd = get(Keys.LLM.EMBEDDING_LENGTH, 0)
    head_k = get(Keys.Attention.KEY_LENGTH, n_embd // max(1, n_head))
    head_v = get(Keys.Attention.VALUE_LENGTH, head_k)
    return ModelFootprint(
        layer_bytes,
        other_bytes,
        n_head_kv * (head_k + head_v) * 2,  # F16
        get(Keys.LLM.CONTEXT_LENGTH, 4096),
        n_head_kv * head_k,
        n_head_kv * head_v,
        swa_layers,
        get(Keys.Attention.SLIDING_WINDOW, 0) if any(swa_layers) else 0,
        n_vocab,
        n_embd,
        kv_layers,
    )


def footprint(path: Path) -> ModelFootprint:
    header = read_header(path)
    arch = header.fields[Keys.General.ARCHITECTURE]
    per_block: dict[int, int] = defaultdict(int)
    other = 0
    for tensor in header.tensors:
        match = _BLOCK.match(tensor.name)
        if match:
            per_block[int(match.group(1))] += tensor.n_bytes
        else:
            other += tensor.n_bytes
    n_layer = header.int_field(Keys.LLM.BLOCK_COUNT.format(arch=arch), len(per_block))
    tokens = header.fields.get(Keys.Tokenizer.LIST)
    return shape(
        lambda key, default: header.int_field(key.format(arch=arch), default),
        tuple(per_block[i] for i in range(n_layer)),
        other,
        tokens.length if isinstance(tokens, StringArray) else 0,
    )


def kv_cells_per_slot(
    model: ModelFootprint, layer: int, per_slot: int, swa_full: bool, n_ubatch: int
) -> int:
    """The cells layer `layer` keeps for one slot of `per_slot` tokens: all of them, or for a
    sliding-window layer without --swa-full its window and a batch, padded to 256 cells
    (llama-kv-cache-iswa.cpp: size_swa = GGML_PAD(n_swa + n_ubatch, 256), at most per_slot)."""
    if swa_full or layer >= len(model.swa_layers) or not model.swa_layers[layer]:
        return per_slot
    return min(per_slot, -(-(model.n_swa + n_ubatch) // 256) * 256)


def context_bytes(
    model: ModelFootprint,
    per_slot: int,
    parallel: int,
    type_k: str = "f16",
    type_v: str = "f16",
    *,
    swa_full: bool = True,
    n_ubatch: int = 512,
) -> int:
    """The KV cache of `parallel` slots of `per_slot` tokens, each layer priced at the cells
    it keeps (kv_cells_per_slot) and its cache types, and each slot's recurrent state."""
    per_token = model.kv_bytes_per_token(type_k, type_v)
    cells = sum(
        kv_cells_per_slot(model, layer, per_slot, swa_full, n_ubatch)
        for layer in range(len(model.layer_bytes))
        if model.has_kv(layer)
    )
    return round(per_token * cells * parallel) + model.recurrent_bytes_per_slot * parallel


def compute_bytes(model: ModelFootprint, parallel: int, n_ubatch: int = 512) -> int:
    """llama.cpp's compute buffer and logits: a batch of n_ubatch rows of logits and two
    of the hidden state, F32 (measured with flash attention: Gemma 3 270M 514.5 MiB,
    SmolLM2-135M 98.25 MiB at n_ubatch 512, to the byte), and one row of logits per slot
    for the output buffer. Without flash attention a GPU needs more: the fit's margin."""
    return 4 * n_ubatch * (model.n_vocab + 2 * model.n_embd) + 4 * parallel * model.n_vocab


def fit_layers(
    model: ModelFootprint,
    free_bytes: int,
    n_ctx_total: int,
    type_k: str = "f16",
    type_v: str = "f16",
    *,
    reserve: int = COMPUTE_RESERVE_BYTES,
) -> int:
    """How many layers to offload (n_layer + 1 means everything, output included), keeping
    `reserve` bytes for the compute buffers."""
    budget = free_bytes - reserve
    kv_per_layer = round(model.kv_bytes_per_token(type_k, type_v) * n_ctx_total)
    used = 0
    fitted = 0
    for i, layer in enumerate(model.layer_bytes):
        cost = layer + (kv_per_layer if model.has_kv(i) else 0)
        if used + cost > budget:
            return fitted
        used += cost
        fitted += 1
    if used + model.other_bytes <= budget:
        return fitted + 1
    return fitted


def kv_cache_bytes(
    model: ModelFootprint, n_ctx_total: int, type_k: str = "f16", type_v: str = "f16"
) -> int:
    """The KV cache of every layer at `n_ctx_total` cells (all slots together), with these
    cache types: an upper bound, as sliding-window layers may keep only their window
    (context_bytes prices them)."""
    return context_bytes(model, n_ctx_total, 1, type_k, type_v)


def weight_bytes(model: ModelFootprint, n_gpu_layers: int) -> tuple[int, int]:
    """(bytes on the GPU, bytes on the host) of the weights with `n_gpu_layers` offloaded
    (-1: all; n_layer + 1 counts the output layer too, as llama.cpp does)."""
    n_layer = len(model.layer_bytes)
    offloaded = n_layer + 1 if n_gpu_layers < 0 else min(n_gpu_layers, n_layer + 1)
    gpu = sum(model.layer_bytes[n_layer - min(offloaded, n_layer) :])
    if offloaded > n_layer:
        gpu += model.other_bytes
    return gpu, sum(model.layer_bytes) + model.other_bytes - gpu
