"""Where the served GGUF came from, read once at load from its metadata.

GGUF's own keys (`general.source.*`, `general.base_model.*`, `general.quantized_by`: written by
llama.cpp's convert_hf_to_gguf.py and by `llorch convert-batch`) and llorch's source revision
(convert/batch/provenance.py). The HTTP layer gets the plain dict: only the keys the file has,
and an empty dict for a GGUF that says nothing about its origin.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import gguf

from llorch import keys

_G = gguf.Keys.General
# /health and /capacity field -> GGUF key
SOURCE_FIELDS = {
    "url": _G.SOURCE_URL,
    "repo_url": _G.SOURCE_REPO_URL,
    "quantized_by": _G.QUANTIZED_BY,
}
BASE_MODEL_FIELDS = {
    "name": _G.BASE_MODEL_NAME,
    "organization": _G.BASE_MODEL_ORGANIZATION,
    "version": _G.BASE_MODEL_VERSION,
    "url": _G.BASE_MODEL_URL,
    "repo_url": _G.BASE_MODEL_REPO_URL,
}


def model_source(meta: Callable[[str], str]) -> dict[str, Any]:
    """`{"url", "repo_url", "revision", "quantized_by", "base_models"}`, each only when the
    file has it; `meta(key)` answers a GGUF key's value as text, "" when absent."""
    found = {name: meta(key) for name, key in SOURCE_FIELDS.items()}
    found["revision"] = meta(keys.SOURCE_REVISION)
    order = ("url", "repo_url", "revision", "quantized_by")
    source: dict[str, Any] = {name: found[name] for name in order if found[name]}
    bases = []
    for i in range(_count(meta(_G.BASE_MODEL_COUNT))):
        base = {n: meta(k.format(id=i)) for n, k in BASE_MODEL_FIELDS.items()}
        if any(base.values()):
            bases.append({n: v for n, v in base.items() if v})
    if bases:
        source["base_models"] = bases
    return source


def _count(text: str) -> int:
    # A count llama.cpp cannot read as a number is no count: the keys it would index are
    # not looked for (and a hostile file cannot make the loop long).
    try:
        return max(0, min(int(text), 64))
    except ValueError:
        return 0
