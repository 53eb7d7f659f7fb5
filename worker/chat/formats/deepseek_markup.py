# ruff: noqa: RUF001 (DeepSeek's tokens are written with full-width bars)
"""What DeepSeek R1 and V3.1 share: R1's tool tokens (the bars are full-width and the spaces
are U+2581, as in the tokenizer), the spellings of the section's token that the R1 distills
write, and the section around the calls; each family has its own call syntax inside it."""

from __future__ import annotations

import re
from collections.abc import Callable

from llorch.worker.chat.formats.sections import JsonCallSections
from llorch.worker.chat.types import Tool

CALLS_BEGIN = "<｜tool▁calls▁begin｜>"
CALLS_END = "<｜tool▁calls▁end｜>"
CALL_BEGIN = "<｜tool▁call▁begin｜>"
CALL_END = "<｜tool▁call▁end｜>"
SEPARATOR = "<｜tool▁sep｜>"
MARKERS = (CALLS_BEGIN, CALLS_END, CALL_BEGIN, CALL_END, SEPARATOR)

# The distills do not always spell the section's token right: llama.cpp's
# common_chat_parse_deepseek_r1 (before its automatic parser replaced it) took these spellings
# too. A call without the section's token is read as well.
OPENINGS = (
    CALLS_BEGIN,
    "<｜tool_calls_begin｜>",
    "<｜tool calls begin｜>",
    "<｜tool\\_calls\\_begin｜>",
    "<｜tool▁calls｜>",
    CALL_BEGIN,
)

_OPENING = re.compile("|".join(map(re.escape, OPENINGS[:-1])) + f"|(?={re.escape(CALL_BEGIN)})")
_ENDING = re.compile(rf"\s*{CALLS_END}")


def deepseek_calls(
    *,
    header: re.Pattern[str],
    closing: re.Pattern[str],
    call: tuple[str, str],
    head: Callable[[Tool], str],
    joiner: str = "",
) -> JsonCallSections:
    """Calls in DeepSeek's section (any of its spellings), each read by `header` and
    `closing` and written by the grammar as JsonCallSections' `call`, `head` and `joiner`."""
    return JsonCallSections(
        starts=OPENINGS,
        opening=_OPENING,
        header=header,
        closing=closing,
        ending=_ENDING,
        section=(CALLS_BEGIN, CALLS_END),
        call=call,
        head=head,
        joiner=joiner,
    )
