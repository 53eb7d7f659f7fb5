"""Tool-call formats, one module per model family, recognised from the chat template.

The table is data: each entry names a module of this package that exports `FORMAT` (a
`ToolFormat`). Templates are matched in this order, the most specific syntax first; a template
that takes `tools` in none of these formats (or takes none) gets the generic JSON format.
"""

from __future__ import annotations

import importlib
from functools import cache

from llorch.worker.chat.formats.base import ToolFormat

# Module names, most specific first (a Qwen3-Coder template also writes <tool_call>, so it
# comes before Hermes; gpt-oss's harmony channels before everything).
FAMILIES: tuple[str, ...] = (
    "gpt_oss",
    "deepseek_v32",
    "deepseek_v4",
    "seed_oss",
    "qwen3_coder",
    "minimax_m2",
    "glm45",
    "kimi_k2",
    "deepseek_v31",
    "deepseek_r1",
    "functionary_v32",
    "functionary_v31",
    "firefunction_v2",
    "command_r7b",
    "granite",
    "gemma4",
    "mistral_small",
    "mistral_nemo",
    "nemotron_v2",
    "solar_open",
    "apertus",
    "minimax_m1",
    "lfm2",
    "apriel",
    "llama3",
    "hermes",
)
GENERIC = "generic"


@cache
def load(module: str) -> ToolFormat:
    fmt: ToolFormat = importlib.import_module(f"{__name__}.{module}").FORMAT
    return fmt


def formats() -> list[ToolFormat]:
    return [load(name) for name in FAMILIES]


def detect(template: str | None) -> ToolFormat:
    """The tool-call format a chat template writes; the generic JSON one when none matches."""
    if template:
        for name in FAMILIES:
            fmt = load(name)
            if fmt.matches(template):
                return fmt
    return load(GENERIC)
