"""Command R7B: a plan in `<|START_THINKING|>...<|END_THINKING|>`, then either calls, a JSON
list in `<|START_ACTION|>...<|END_ACTION|>`,

    <|START_THINKING|>I will look up the weather.<|END_THINKING|><|START_ACTION|>[
        {"tool_call_id": "0", "tool_name": "get_weather", "parameters": {"city": "Paris"}}
    ]<|END_ACTION|>

or the answer in `<|START_RESPONSE|>...<|END_RESPONSE|>`. The plan is returned as reasoning
(this family writes thinking in its own markup); the response markers are taken out of the
content. Its tool_call_ids are indices within the message ("0", "1"), not ids.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from llorch.worker.chat.formats.base import (
    GrammarBuilder,
    Parsed,
    ParsedCall,
    ToolGrammar,
    gbnf_literal,
    gbnf_until,
    held_back,
    regex_literal,
    skip_space,
)
from llorch.worker.chat.formats.jsoncalls import CallKeys, read_array
from llorch.worker.chat.formats.jsongrammar import call_objects, repeated
from llorch.worker.chat.formats.sections import closing, read_sections
from llorch.worker.chat.types import Tool

START_THINKING = "<|START_THINKING|>"
END_THINKING = "<|END_THINKING|>"
START_ACTION = "<|START_ACTION|>"
END_ACTION = "<|END_ACTION|>"
START_RESPONSE = "<|START_RESPONSE|>"
END_RESPONSE = "<|END_RESPONSE|>"
RESPONSE_MARKERS = (START_RESPONSE, END_RESPONSE)
KEYS = CallKeys(names=("tool_name",), arguments=("parameters",))


@dataclass(frozen=True)
class CommandR7BFormat:
    name: str = "command_r7b"
    markers: tuple[str, ...] = (
        START_THINKING,
        END_THINKING,
        START_ACTION,
        END_ACTION,
        START_RESPONSE,
        END_RESPONSE,
    )

    def matches(self, template: str) -> bool:
        # Cohere2 MoE writes <|START_ACTION|> too, but after <|START_TEXT|> content.
        return f"{END_THINKING}{START_ACTION}" in template and "<|START_TEXT|>" not in template

    def parse(self, text: str, *, partial: bool) -> Parsed:
        reasoning, at = _thinking(text, partial=partial)
        if at is None:
            return Parsed("", reasoning=reasoning)

        def section(text: str, at: int, marker: str) -> tuple[list[ParsedCall], int | None]:
            if marker != START_ACTION:
                return [], at  # a response marker: content goes on after it
            calls, end = read_array(text, at, KEYS, partial=partial)
            if end is not None:
                end = closing(text, end, END_ACTION, partial=partial, also=(START_ACTION,))
            if end is None and calls and calls[-1].complete:
                calls[-1] = ParsedCall(calls[-1].name, calls[-1].arguments, complete=False)
            return calls, end

        starts = (START_ACTION, *RESPONSE_MARKERS)
        parsed = read_sections(text[at:], starts, section, partial=partial)
        return Parsed(parsed.content, parsed.calls, reasoning)

    def grammar(self, tools: Sequence[Tool], *, parallel: bool) -> ToolGrammar:
        builder = GrammarBuilder()
        index = '"\\"" [0-9]{1,3} "\\""'
        call = call_objects(
            builder,
            tools,
            name_key="tool_name",
            arguments_key="parameters",
            fields_before=[("tool_call_id", index)],
        )
        calls = repeated(call, 'ws "," ws', parallel=parallel)
        # Forced, the model still writes its plan first (the generation prompt stops before
        # it unless thinking is off).
        plan = gbnf_until(END_THINKING)
        thinking = f"{gbnf_literal(START_THINKING)} {plan} {gbnf_literal(END_THINKING)}"
        action = f'{gbnf_literal(START_ACTION)} "[" ws {calls} ws "]" {gbnf_literal(END_ACTION)}'
        return ToolGrammar(
            gbnf=builder.build(f"({thinking})? {action}"),
            triggers=(regex_literal(START_ACTION),),
            unthinking=builder.build(action),
        )


def _thinking(text: str, *, partial: bool) -> tuple[str, int | None]:
    """(the plan, the index after it) when the text starts with one; ("", 0) when it does not;
    None as the index while the plan (or its start marker) is still being written."""
    start = skip_space(text, 0)
    if partial and START_THINKING.startswith(text[start:]) and start < len(text):
        return "", None
    if not text.startswith(START_THINKING, start):
        return "", 0
    begin = start + len(START_THINKING)
    end = text.find(END_THINKING, begin)
    if end < 0:
        if partial:
            plan = text[begin:]
            return plan[: held_back(plan, (END_THINKING,))].strip(), None
        return text[begin:].strip(), len(text)  # cut off while thinking
    return text[begin:end].strip(), end + len(END_THINKING)


FORMAT = CommandR7BFormat()
