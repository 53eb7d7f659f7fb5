"""LoRA adapters served with a model (`--lora NAME=PATH[:SCALE]`).

llama.cpp applies adapters per context, not per sequence: a decode runs with one set of
adapters and scales for every sequence in its batch. So a request's adapter set is a key
(`LoraKey`: (name, scale) pairs, sorted, no zero scales), the batch decoder decodes one key's
sequences per step, and a slot's cached tokens are reused only under the key that made them
(an adapter changes the keys and values the cache holds).
"""

from __future__ import annotations

import ctypes
from collections.abc import Sequence
from typing import Any

import llama_cpp as ll

from llorch.worker.backend.errors import ModelLoadError
from llorch.worker.backend.protocol import LoraKey, LoraSpec, lora_key


class LoraAdapters:
    """The adapters loaded for one model; `apply` sets a key's adapters on a context."""

    def __init__(self, model: ll.llama_model_p, specs: Sequence[LoraSpec]) -> None:
        self._pointers: dict[str, Any] = {}  # name -> llama_adapter_lora pointer
        self.specs = {spec.name: spec for spec in specs}
        try:
            for spec in specs:
                if not spec.path.is_file():
                    raise ModelLoadError(f"--lora {spec.name}: no file {spec.path}")
                pointer = ll.llama_adapter_lora_init(model, str(spec.path).encode())
                if not pointer:
                    raise ModelLoadError(
                        f"--lora {spec.name}: llama.cpp could not load {spec.path} as a LoRA "
                        "of this model (another base model, or not a GGUF LoRA?)"
                    )
                self._pointers[spec.name] = pointer
        except BaseException:
            self.close()
            raise
        self._applied: LoraKey | None = None

    @property
    def default_key(self) -> LoraKey:
        return lora_key([(spec.name, spec.scale) for spec in self.specs.values()])

    def apply(self, ctx: ll.llama_context_p, key: LoraKey) -> None:
        if key == self._applied:
            return
        pointers: list = [self._pointers[name] for name, _ in key]
        adapters = (ll.llama_adapter_lora_p_ctypes * max(1, len(key)))(*pointers)
        scales = (ctypes.c_float * max(1, len(key)))(*(scale for _, scale in key))
        if ll.llama_set_adapters_lora(ctx, adapters, len(key), scales) != 0:
            raise ModelLoadError(f"llama.cpp could not set the adapters {key}")
        self._applied = key

    def close(self) -> None:
        for pointer in self._pointers.values():
            ll.llama_adapter_lora_free(pointer)
        self._pointers.clear()
