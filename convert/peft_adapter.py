"""A PEFT LoRA adapter folder: adapter_config.json and the lora_A/lora_B pairs of its weights.

Facts from PEFT (tuners/lora/config.py, layer.py): each adapted module `m` adds
`scaling * B @ A` with scaling `alpha / r`, or `alpha / sqrt(r)` with `use_rslora`; `r` and
`alpha` are `rank_pattern`/`alpha_pattern`'s value for the first pattern matching the end of
the module's name, else `r`/`lora_alpha`. Options that change the forward pass beyond that
(DoRA, biases, other variants), store more than LoRA pairs (modules_to_save, trainable
tokens), or train against a base changed at initialisation (PiSSA, OLoRA, CorDA, LoftQ,
LoRA-GA) are refused, naming the option.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

from llorch.convert.errors import ConversionError
from llorch.detector.errors import InvalidFileError, MissingFileError
from llorch.detector.safetensors import Checkpoint, read_header

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
_PREFIX = "base_model.model."  # PEFT's wrapper around the base model's own names
_PAIR = re.compile(r"(.+)\.lora_([AB])\.weight")


class AdapterError(ConversionError):
    """The adapter folder is not a readable PEFT LoRA adapter, or does not fit the base."""


class UnsupportedAdapterError(AdapterError):
    """The adapter uses a PEFT feature or a target that a GGUF LoRA cannot represent."""


# Options refused when set (any value but false/null/empty), with the reason.
_REFUSED = {
    "use_dora": "DoRA (weight-decomposed LoRA) has a magnitude vector llama.cpp does not apply",
    "modules_to_save": "modules_to_save stores whole trained modules, not LoRA pairs",
    "fan_in_fan_out": "fan_in_fan_out (Conv1D weights) is not a layout the families convert",
    "lora_bias": "lora_bias adds a bias to lora_B, which llama.cpp does not apply",
    "trainable_token_indices": "trainable tokens replace embedding rows, not LoRA pairs",
    "target_parameters": "LoRA on raw parameters (such as MoE experts) is not converted",
    "layer_replication": "layer_replication changes the base model's layers",
    "alora_invocation_tokens": "activated LoRA (aLoRA) is not converted",
    "megatron_config": "Megatron-parallel LoRA layers are not converted",
    "use_qalora": "QA-LoRA pools the input of lora_A",
    "use_bdlora": "BD-LoRA's block-diagonal factors are not converted",
    "kasa_config": "KaSA changes the base weights and adds a singular-value diagonal",
    "monteclora_config": "MonteCLoRA samples its factors",
    "arrow_config": "Arrow routes between several adapters",
}
# init_lora_weights values that leave the base weights as they are and the forward plain LoRA
_PLAIN_INITS = (True, False, "gaussian", "eva", "orthogonal")


@dataclass(frozen=True)
class AdapterConfig:
    r: int
    alpha: float
    rslora: bool
    rank_pattern: dict[str, int]
    alpha_pattern: dict[str, float]
    base_class: str | None  # auto_mapping.base_model_class: the class it was trained on

    def declared(self, module: str) -> tuple[int, float]:
        """(r, alpha) PEFT gave `module` (its name in the base model)."""
        r = next((v for k, v in self.rank_pattern.items() if _matches(k, module)), self.r)
        alpha = next((v for k, v in self.alpha_pattern.items() if _matches(k, module)), self.alpha)
        return r, alpha

    def scaling(self, module: str, rank: int) -> float:
        """PEFT's multiplier of `B @ A` for `module`."""
        _, alpha = self.declared(module)
        return alpha / (math.sqrt(rank) if self.rslora else rank)

    def written_alpha(self) -> float:
        """adapter.lora.alpha: llama.cpp's alpha / rank is then PEFT's scaling at rank `r`
        (rsLoRA: alpha * sqrt(r) / r = alpha / sqrt(r))."""
        return self.alpha * math.sqrt(self.r) if self.rslora else self.alpha


def _matches(pattern: str, module: str) -> bool:
    return re.match(rf"(.*\.)?({pattern})$", module) is not None  # PEFT's get_pattern_key


def read_config(folder: Path) -> AdapterConfig:
    path = folder / CONFIG_NAME
    if not path.is_file():
        raise MissingFileError(f"{path}: not found (a PEFT adapter folder has {CONFIG_NAME})")
    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InvalidFileError(f"{path}: not valid JSON ({exc})") from exc
    if not isinstance(cfg, dict):
        raise InvalidFileError(f"{path}: not a JSON object")
    kind = cfg.get("peft_type")
    if kind != "LORA":
        raise UnsupportedAdapterError(f"{path}: peft_type {kind!r}; only LORA is converted")
    for key, why in _REFUSED.items():
        if cfg.get(key):
            raise UnsupportedAdapterError(f"{path}: {key}={cfg[key]!r} is not supported: {why}")
    if cfg.get("bias", "none") != "none":
        raise UnsupportedAdapterError(
            f"{path}: bias={cfg['bias']!r} trains base biases, which a GGUF LoRA cannot carry"
        )
    init = cfg.get("init_lora_weights", True)
    if init not in _PLAIN_INITS:
        raise UnsupportedAdapterError(
            f"{path}: init_lora_weights={init!r}: the adapter is relative to a base changed at "
            "initialisation, or a LoRA variant (save it with PEFT's "
            "path_initial_model_for_weight_conversion to get a plain LoRA)"
        )
    r, alpha = cfg.get("r"), cfg.get("lora_alpha")
    if not isinstance(r, int) or r <= 0 or not isinstance(alpha, int | float) or alpha <= 0:
        # llama.cpp reads alpha 0 as "no alpha/r scaling": a zero alpha cannot be written.
        raise AdapterError(f"{path}: needs a positive integer r and a positive lora_alpha")
    base = (cfg.get("auto_mapping") or {}).get("base_model_class")
    return AdapterConfig(
        r=r,
        alpha=float(alpha),
        rslora=bool(cfg.get("use_rslora")),
        rank_pattern={str(k): int(v) for k, v in (cfg.get("rank_pattern") or {}).items()},
        alpha_pattern={str(k): float(v) for k, v in (cfg.get("alpha_pattern") or {}).items()},
        base_class=base if isinstance(base, str) else None,
    )


class AdapterWeights(Checkpoint):
    """adapter_model.safetensors alone, not every *.safetensors file beside it."""

    def __init__(self, file: Path) -> None:
        self.folder, self.files, self.refs = file.parent, [file], read_header(file)


def lora_pairs(ckpt: Checkpoint, file: Path) -> dict[str, tuple[str, str]]:
    """module name (as in the base model) -> (lora_A, lora_B) tensor names; anything else in
    the file is refused, naming it."""
    found: dict[str, dict[str, str]] = {}
    copies: list[str] = []  # `.base_layer.weight`: PEFT saves the base weight of embeddings
    for name in ckpt.names():
        module = re.sub(r"\.(lora_\w+|base_layer)(\.weight)?$", "", name).removeprefix(_PREFIX)
        if "lora_embedding_" in name:
            raise UnsupportedAdapterError(f"{module}: a LoRA on an embedding is not supported")
        if "lora_magnitude_vector" in name:
            raise UnsupportedAdapterError(f"{module}: DoRA (use_dora) is not supported")
        m = _PAIR.fullmatch(name)
        if m is not None and name.startswith(_PREFIX):
            found.setdefault(module, {})[m[2]] = name
        elif name.startswith(_PREFIX) and name.endswith(".base_layer.weight"):
            copies.append(module)
        else:
            raise UnsupportedAdapterError(
                f"{file}: tensor {name!r} is not a LoRA weight (modules_to_save, trained "
                "biases and other PEFT extras are not supported)"
            )
    for module, ab in found.items():
        if set(ab) != {"A", "B"}:
            raise AdapterError(f"{file}: {module} has lora_{''.join(ab)} without its pair")
    for module in copies:
        if module not in found:
            raise UnsupportedAdapterError(f"{file}: {module}: a base weight without a LoRA pair")
    if not found:
        raise AdapterError(f"{file}: no lora_A/lora_B weights")
    return {module: (ab["A"], ab["B"]) for module, ab in found.items()}
