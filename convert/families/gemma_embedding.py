"""EmbeddingGemma (`Gemma3TextModel`, llama.cpp arch `gemma-embedding`).

Facts from transformers' modeling_gemma3 (Gemma3TextModel with use_bidirectional_attention),
sentence-transformers' EmbeddingGemma configuration, and llama.cpp's converter
(conversion/gemma.py: EmbeddingGemma) and src/models/gemma-embedding.cpp:
- Gemma 3's text model (its norms, RoPE, sliding layers: convert/families/gemma.py) with
  bidirectional attention; llama.cpp's graph is non-causal and its sliding window symmetric.
- The sentence-transformers modules: mean pooling, then two bias-free Dense projections
  (768 -> 3072 -> 768 in EmbeddingGemma-300m), then Normalize. llama.cpp applies the Dense
  modules after pooling as `dense_2` and `dense_3`, with their in/out sizes in the GGUF; their
  weights lie in the modules' own folders (2_Dense/model.safetensors, `linear.weight`).
- Matryoshka-trained (768, 512, 256, 128 dimensions): the GGUF says so, and the worker's
  `dimensions` shortens the vectors.
- config.json's `sliding_window` is written as stored: transformers' config halves it for
  bidirectional attention when it loads (llama.cpp's converter reads the file for that
  reason).
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import gguf

from llorch import keys
from llorch.convert.errors import ConfigError
from llorch.convert.families import gemma
from llorch.convert.families.base import ModelInput, PlannedTensor
from llorch.convert.sentence_transformers import write_sentence_transformers
from llorch.detector.safetensors import Checkpoint

_T = gguf.MODEL_TENSOR
# sentence-transformers module folder -> llama.cpp's tensor after pooling
DENSE = {"2_Dense": _T.DENSE_2_OUT, "3_Dense": _T.DENSE_3_OUT}
IDENTITY = ("torch.nn.modules.linear.Identity", None)


def _dense_modules(folder: Path) -> list[tuple[str, dict]]:
    modules = json.loads((folder / "modules.json").read_text(encoding="utf-8"))
    found = []
    for mod in modules:
        if str(mod.get("type", "")).endswith("Dense"):
            path = str(mod.get("path", ""))
            if path not in DENSE:
                raise ConfigError(
                    f"{folder / 'modules.json'}: Dense module at {path!r}; llama.cpp's "
                    f"gemma-embedding graph has {', '.join(DENSE)}"
                )
            config = json.loads((folder / path / "config.json").read_text(encoding="utf-8"))
            if config.get("bias") or config.get("activation_function") not in IDENTITY:
                raise ConfigError(
                    f"{folder / path / 'config.json'}: a Dense module with a bias or an "
                    "activation is not what llama.cpp's graph applies"
                )
            found.append((path, config))
    return found


def write_hparams(model: ModelInput, w: gguf.GGUFWriter) -> None:
    if not model.config.get("use_bidirectional_attention", True):
        raise ConfigError(
            f"{model.folder / 'config.json'}: a causal Gemma3TextModel is not "
            "an EmbeddingGemma (use Gemma3ForCausalLM)"
        )
    gemma.write_hparams(model, w)
    w.add_causal_attention(False)
    for path, config in _dense_modules(model.folder):
        prefix = gguf.TENSOR_NAMES[DENSE[path]].removesuffix("_out")
        w.add_dense_features_dims(prefix, int(config["in_features"]), int(config["out_features"]))
    write_sentence_transformers(model.folder, w, also=("Dense",))
    # EmbeddingGemma is trained for 768, 512, 256 and 128 dimensions (its model card)
    w.add_bool(keys.EMBEDDING_MATRYOSHKA, True)


def plan(model: ModelInput) -> list[PlannedTensor]:
    plans = gemma.plan(model)
    for path, config in _dense_modules(model.folder):
        ckpt = Checkpoint(model.folder / path)
        shape = (int(config["out_features"]), int(config["in_features"]))
        if ckpt.shape("linear.weight") != shape:
            raise ConfigError(
                f"{model.folder / path}: linear.weight is {list(ckpt.shape('linear.weight'))}, "
                f"its config.json implies {list(shape)}"
            )
        plans.append(
            PlannedTensor(
                name=gguf.TENSOR_NAMES[DENSE[path]] + ".weight",
                shape=shape,
                load=functools.partial(ckpt.load_f32, "linear.weight"),
                sources=(f"{path}/linear.weight",),
            )
        )
    return plans
