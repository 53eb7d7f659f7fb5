"""The sentence-transformers configuration of a checkpoint, written to its GGUF.

sentence-transformers reads `modules.json` (the modules applied after the transformer: Pooling,
Normalize, Dense, ...), each module's folder, and `config_sentence_transformers.json` (the
prompts a text gets before tokenization, by name, and the default one). The converter writes:
- the pooling type (mean, CLS, last token) from the Pooling module's config.json; llama.cpp
  cannot do max or mean-sqrt-len pooling, nor apply Dense modules after pooling: refused;
- whether the pooled vector is normalised (a Normalize module): llama.cpp returns it
  unnormalised, so the worker does it;
- the prompts (a JSON object of name -> text) and the default prompt's name: the worker
  prepends a prompt to a text as sentence-transformers' encode(prompt_name=...) does.
Nothing is written without modules.json.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import gguf

from llorch import keys
from llorch.convert.errors import ConfigError

POOLING = {
    "mean": gguf.PoolingType.MEAN,
    "cls": gguf.PoolingType.CLS,
    "lasttoken": gguf.PoolingType.LAST,
}
# Pooling/config.json flags, in sentence-transformers' order of precedence
POOLING_FLAGS = {
    "pooling_mode_cls_token": "cls",
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_lasttoken": "lasttoken",
}
UNSUPPORTED_FLAGS = ("pooling_mode_max_tokens", "pooling_mode_mean_sqrt_len_tokens")
# sentence-transformers modules whose effect llama.cpp's embeddings reproduce (or leave to the
# caller, like Normalize); anything else changes the vectors.
KNOWN_MODULES = ("Transformer", "Pooling", "Normalize")


def _read(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read ({exc})") from exc


def pooling_type(folder: Path, also: tuple[str, ...] = ()) -> gguf.PoolingType | None:
    """The sentence-transformers pooling of the folder, or None without modules.json.
    `also`: module kinds the family's graph applies itself (EmbeddingGemma's Dense)."""
    modules_path = folder / "modules.json"
    if not modules_path.is_file():
        return None
    modules = _read(modules_path)
    pooling_dir = None
    for mod in modules if isinstance(modules, list) else []:
        kind = str(mod.get("type", "")).rsplit(".", 1)[-1]
        if kind not in KNOWN_MODULES + also:
            raise ConfigError(
                f"{modules_path}: sentence-transformers module {mod.get('type')!r} is not "
                f"supported (llama.cpp's embeddings reproduce "
                f"{', '.join(KNOWN_MODULES + also)})"
            )
        if kind == "Pooling":
            pooling_dir = folder / str(mod.get("path", ""))
    if pooling_dir is None:
        return None
    config_path = pooling_dir / "config.json"
    config = _read(config_path)
    for flag in UNSUPPORTED_FLAGS:
        if config.get(flag):
            raise ConfigError(f"{config_path}: {flag} is not supported by llama.cpp")
    modes = [mode for flag, mode in POOLING_FLAGS.items() if config.get(flag)]
    mode = config.get("pooling_mode") if not modes else modes[0]
    if len(modes) > 1 or mode not in POOLING:
        raise ConfigError(
            f"{config_path}: pooling {modes or mode!r} is not supported; llama.cpp pools by "
            f"one of {', '.join(POOLING)}"
        )
    return POOLING[str(mode)]


def write_sentence_transformers(
    folder: Path, w: gguf.GGUFWriter, also: tuple[str, ...] = ()
) -> None:
    """The pooling type, and whether the pooled vector is normalised (a Normalize module:
    llama.cpp returns it unnormalised, so the worker does it), from the sentence-transformers
    config; nothing without modules.json."""
    pooling = pooling_type(folder, also)
    if pooling is not None:
        w.add_pooling_type(pooling)
    modules_path = folder / "modules.json"
    if modules_path.is_file():
        modules = _read(modules_path)
        kinds = [str(m.get("type", "")).rsplit(".", 1)[-1] for m in modules]
        w.add_bool(keys.EMBEDDING_NORMALIZE, "Normalize" in kinds)
        write_prompts(folder, w)


def prompts(folder: Path) -> tuple[dict[str, str], str | None]:
    """config_sentence_transformers.json's prompts by name and its default prompt's name."""
    path = folder / "config_sentence_transformers.json"
    if not path.is_file():
        return {}, None
    config = _read(path)
    found = config.get("prompts") or {}
    if not isinstance(found, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in found.items()
    ):
        raise ConfigError(f"{path}: prompts must map names to strings, not {found!r}")
    default = config.get("default_prompt_name")
    if default is not None and default not in found:
        raise ConfigError(
            f"{path}: default_prompt_name {default!r} is not one of the prompts {sorted(found)}"
        )
    return found, default


def write_prompts(folder: Path, w: gguf.GGUFWriter) -> None:
    found, default = prompts(folder)
    if found:
        w.add_string(keys.EMBEDDING_PROMPTS, json.dumps(found, ensure_ascii=False))
    if default is not None:
        w.add_string(keys.EMBEDDING_DEFAULT_PROMPT, default)
