"""Qwen2 (1.5/2/2.5) and Qwen3 (llama.cpp arches `qwen2`, `qwen3`).

Facts from transformers' modeling_qwen2/modeling_qwen3 and llama.cpp's qwen2/qwen3 graphs:
both use HF's rotate-half RoPE, which llama.cpp runs as NEOX rope for these arches, so Q/K
need no permutation. Qwen2 has q/k/v biases; Qwen3 has none but RMS-normalises Q and K per
head (q_norm/k_norm of size head_dim) and sets head_dim explicitly. Tied embeddings (0.5B-3B
sizes) leave out lm_head and llama.cpp reuses token_embd.

Qwen3-Embedding: the checkpoint is the bare `Qwen3Model` (tensors without the `model.` prefix,
no lm_head) with a sentence-transformers config: last-token pooling, Normalize, and an
instruction prompt for queries (config_sentence_transformers.json), all written to the GGUF
(convert/sentence_transformers.py). Its tokenizer appends <|endoftext|> to every text (the
tokenizer.json post-processor), the token whose state is pooled.

Qwen3ForCausalLM converts through convert/families/qwen3.py, which adds Qwen3-Reranker's rank
head and template to this.
"""

from __future__ import annotations

import gguf

from llorch import keys
from llorch.convert.families import rope
from llorch.convert.families.base import (
    ModelInput,
    PlannedTensor,
    dims,
    expected_shapes,
    map_tensors,
    write_common,
)
from llorch.convert.sentence_transformers import write_sentence_transformers

_T = gguf.MODEL_TENSOR


def write_hparams(model: ModelInput, w: gguf.GGUFWriter) -> None:
    write_common(model, w)
    rope.write_scaling(model, w)
    write_sentence_transformers(model.folder, w)
    if model.hf_architecture == "Qwen3Model" and (model.folder / "modules.json").is_file():
        # Qwen3-Embedding is Matryoshka-trained (its model card: 32 dimensions and up)
        w.add_bool(keys.EMBEDDING_MATRYOSHKA, True)


def _bare(name: str) -> str:
    """A bare Qwen3Model's tensor under the name its ForCausalLM checkpoints use."""
    return name if name.startswith(("model.", "lm_head.")) else "model." + name


def plan(model: ModelInput) -> list[PlannedTensor]:
    d = dims(model)
    expected = expected_shapes(model, d)
    expected[_T.ATTN_Q_NORM] = (d.head_dim,)
    expected[_T.ATTN_K_NORM] = (d.head_dim,)
    bare = model.hf_architecture.endswith("Model")
    return map_tensors(model, expected=expected, rename=_bare if bare else None)
