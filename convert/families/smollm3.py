"""SmolLM3 (`SmolLM3ForCausalLM`, llama.cpp arch `smollm3`).

Facts from transformers' modeling_smollm3 and llama.cpp's src/models/smollm3.cpp: the Llama
block (Q/K permuted for llama.cpp's RoPE layout, tied embeddings in the released 3B) with
RoPE left out on every fourth layer. llama.cpp hard-codes that step (n_no_rope_layer_step =
4, no RoPE where (layer + 1) % 4 == 0); config.json's `no_rope_layers` (1 = RoPE) must be that
pattern. Sliding-window attention is not in llama.cpp's graph.
"""

from __future__ import annotations

import gguf

from llorch.convert.errors import ConfigError
from llorch.convert.families import llama
from llorch.convert.families.base import ModelInput, PlannedTensor, dims

NO_ROPE_STEP = 4  # llama.cpp src/models/smollm3.cpp


def _check(model: ModelInput) -> None:
    where = model.folder / "config.json"
    n_layer = dims(model).n_layer
    want = [int((i + 1) % NO_ROPE_STEP != 0) for i in range(n_layer)]
    got = model.config.get("no_rope_layers")
    if got is not None and [int(v) for v in got] != want:
        raise ConfigError(
            f"{where}: no_rope_layers {got} is not supported: llama.cpp's smollm3 graph skips "
            f"RoPE on every {NO_ROPE_STEP}th layer exactly ({want})"
        )
    if model.config.get("use_sliding_window"):
        raise ConfigError(f"{where}: use_sliding_window=true is not supported by llama.cpp")


def write_hparams(model: ModelInput, w: gguf.GGUFWriter) -> None:
    _check(model)
    llama.write_hparams(model, w)


def plan(model: ModelInput) -> list[PlannedTensor]:
    _check(model)
    return llama.plan(model)
