"""gpt-oss (OpenAI's harmony format): the output is a run of messages, each a header naming
its channel (and, for a call, its recipient) and a body.

    <|channel|>analysis<|message|>THINKING<|end|>
    <|start|>assistant<|channel|>final<|message|>ANSWER
    <|start|>assistant<|channel|>commentary to=functions.get_weather <|constrain|>json
    <|message|>{"city": "Paris"}

(the last message is one line, broken here). The first message's `<|start|>assistant` is the
generation prompt's. The recipient may also come before the channel (`<|start|>assistant
to=functions.NAME<|channel|>commentary json<|message|>`, the form openai-gpt-oss-120b.jinja
renders). A call's body ends with `<|call|>`, the final answer's with `<|return|>`, both end
of generation, so neither is usually in the text. The analysis channel is the reasoning; the
final channel and commentary without a recipient (a preamble) are content (as llama.cpp's
common/parsers/gpt-oss.cpp reads them).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from llorch.worker.chat.formats.base import (
    GrammarBuilder,
    MalformedCall,
    Parsed,
    ParsedCall,
    ToolGrammar,
    first_marker,
    gbnf_literal,
    gbnf_until,
    held_back,
    json_arguments,
    tool_rules,
)
from llorch.worker.chat.types import Tool

START = "<|start|>"
CHANNEL = "<|channel|>"
MESSAGE = "<|message|>"
END = "<|end|>"
CONSTRAIN = "<|constrain|>"
CALL = "<|call|>"
RETURN = "<|return|>"

# What ends a message's body: its end tokens, or the next message where the model left
# `<|end|>` out.
BODY_ENDS = (END, CALL, RETURN, START)
_RECIPIENT = re.compile(r"to=([^\s<]+)")
_CHANNEL = re.compile(re.escape(CHANNEL) + r"(\w+)")


class GptOssFormat:
    name = "gpt_oss"
    markers = (START, CHANNEL, MESSAGE, END, CONSTRAIN, CALL, RETURN)

    def matches(self, template: str) -> bool:
        # llama.cpp's test (common_chat_try_specialized_template) is this token alone.
        return CHANNEL in template

    def parse(self, text: str, *, partial: bool) -> Parsed:
        if not _harmony(text):
            return Parsed(content=text)  # a model that writes no channels at all
        content, reasoning, calls = "", "", []
        at = 0
        while at < len(text):
            message = text.find(MESSAGE, at)
            if message < 0:
                if not partial and _RECIPIENT.search(text, at):
                    raise MalformedCall("a call's header does not end in <|message|>")
                break  # a header still being written (or one the output ended in)
            header = text[at:message]
            body_at = message + len(MESSAGE)
            hit = first_marker(text[body_at:], BODY_ENDS)
            body_end = len(text) if hit is None else body_at + hit[0]
            body = text[body_at:body_end]
            recipient = _RECIPIENT.search(header)
            if recipient is not None:
                name = recipient.group(1).removeprefix("functions.")
                still_written = partial and hit is None
                arguments, end = json_arguments(
                    body, 0, partial=still_written, what=f"the call of {name}"
                )
                calls.append(ParsedCall(name, arguments, complete=end is not None))
            else:
                if partial and hit is None:
                    body = body[: held_back(body, BODY_ENDS)]
                channel = _CHANNEL.search(header)
                if channel is not None and channel.group(1) == "analysis":
                    reasoning += body
                else:
                    content += body
            if hit is None:
                break
            # The next header starts at its <|start|> (kept when it ended the body).
            at = body_end if hit[1] == START else body_end + len(hit[1])
        return Parsed(content=content, calls=tuple(calls), reasoning=reasoning)

    def grammar(self, tools: Sequence[Tool], *, parallel: bool) -> ToolGrammar:
        # One call at most: its <|call|> ends the generation, so `parallel` changes nothing.
        builder = GrammarBuilder()

        def call(tool: Tool, _: str) -> str:
            recipient = gbnf_literal(f"to=functions.{tool.name}")
            header = (
                f'(" " {recipient} "<|channel|>" channel | "<|channel|>" channel " " {recipient})'
            )
            return f'{header} constraint "<|message|>" {builder.arguments_rule(tool)}'

        calls = tool_rules(builder, tools, call)
        builder.rule("channel", '("commentary" | "analysis")')
        builder.rule("constraint", '(" " "<|constrain|>"? "json")?')
        # Before the call, any analysis messages and preambles (as llama.cpp's parser takes).
        message = (
            f'"<|channel|>" channel "<|message|>" {gbnf_until(END)} "<|end|><|start|>assistant"'
        )
        builder.rule("message", message)
        builder.rule("call", calls)
        channel = r"<\|channel\|>(?:commentary|analysis) to="
        triggers = (
            # A call as the first message (right after the generation prompt)...
            "^ to=",
            f"^{channel}",
            # ... or after another message; the grammar starts at the group.
            r"<\|start\|>assistant( to=)",
            rf"<\|start\|>assistant({channel})",
        )
        return ToolGrammar(
            builder.build("message* call"), triggers=triggers, unthinking=builder.build("call")
        )


def _harmony(text: str) -> bool:
    """Whether the output is written in messages: it opens with a header's markup (the
    channel, or a recipient before it), or may still turn out to."""
    opening = (CHANNEL, " to=")
    return not text or text.startswith(opening) or any(o.startswith(text) for o in opening)


FORMAT = GptOssFormat()
