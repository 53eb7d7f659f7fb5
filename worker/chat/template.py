"""Chat messages to a prompt: the model's own Jinja template, or llama.cpp's built-in one.

GGUF files carry the Hugging Face chat template as `tokenizer.chat_template`. It is rendered the
way transformers renders it (a sandbox, trim_blocks/lstrip_blocks, the same globals), so a
template behaves as it does in transformers. Models without one fall back to the built-in
template of their family, which the backend applies through llama.cpp.
"""

from __future__ import annotations

import dataclasses
import json
import re
import secrets
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from functools import lru_cache
from typing import Any, NoReturn, Protocol

import jinja2
from jinja2 import nodes
from jinja2.ext import Extension, loopcontrols
from jinja2.parser import Parser
from jinja2.sandbox import SandboxedEnvironment

from llorch.worker.backend.errors import InvalidRequestError
from llorch.worker.backend.protocol import ChatMessage, ModelInfo
from llorch.worker.chat.types import Message, Tool

# A message as a template reads it: the protocol's plain one, or the chat core's with calls.
AnyMessage = ChatMessage | Message


class ChatTemplateError(InvalidRequestError):
    """The template refused the conversation (raise_exception) or failed to render."""


class ChatSource(Protocol):
    """What prompt building needs from the scheduler."""

    def builtin_chat_template(
        self, messages: Sequence[ChatMessage], add_generation_prompt: bool = True
    ) -> str: ...

    def tokenize(
        self, text: str, add_special: bool = True, parse_special: bool = True
    ) -> list[int]: ...


def _raise_exception(message: str) -> NoReturn:
    # Templates call this to reject a conversation (e.g. roles that do not alternate).
    raise ChatTemplateError(f"the chat template refused the messages: {message}")


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


def _tojson(
    value: Any, ensure_ascii: bool = False, indent: int | None = None, sort_keys: bool = False
) -> str:
    # transformers' tojson: no HTML escaping (Jinja's own filter would turn "<" into \u003c).
    return json.dumps(
        value, ensure_ascii=ensure_ascii, indent=indent, sort_keys=sort_keys, default=_listed
    )


def _listed(value: Any) -> Any:
    """What json cannot write but a template hands it: the iterators Jinja's filters return
    (`tools | map(attribute='function') | tojson`, as llama.cpp's DeepSeek R1 template
    writes), as lists."""
    if hasattr(value, "__iter__") and not isinstance(value, str | bytes):
        return list(value)
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


class _GenerationBlock(Extension):
    """`{% generation %}…{% endgeneration %}`: transformers marks the assistant's part of a
    training example with it (its AssistantTracker); for a prompt it renders its body."""

    tags = {"generation"}  # noqa: RUF012 (jinja2.ext.Extension declares a set)

    def parse(self, parser: Parser) -> nodes.Node:
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return nodes.Scope(body, lineno=lineno)


@lru_cache(maxsize=32)
def _compile(source: str) -> jinja2.Template:
    # A sandbox that still lets a template append to its own lists (Kimi K2's builds its tool
    # list that way, as llama.cpp's minja allows): the messages are rebuilt for every render.
    env = SandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols, _GenerationBlock]
    )
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    try:
        return env.from_string(source)
    except jinja2.TemplateError as exc:
        raise ChatTemplateError(f"the model's chat template does not compile: {exc}") from None


def message_dict(message: AnyMessage, object_arguments: bool = True) -> dict[str, Any]:
    """A message as transformers hands it to a template: the fields as OpenAI names them.
    A call's arguments go in as an object where the template serialises them itself (most
    write `arguments | tojson`), as the JSON text where it prints them as they are."""
    out: dict[str, Any] = {"role": message.role, "content": message.content}
    if not isinstance(message, Message):
        return out
    if message.reasoning is not None:
        out["reasoning_content"] = message.reasoning
    if message.tool_calls:
        out["tool_calls"] = [
            {
                "id": call.id,
                "type": "function",
                "function": {
                    "name": call.name,
                    "arguments": json.loads(call.arguments) if object_arguments else call.arguments,
                },
            }
            for call in message.tool_calls
        ]
    if message.tool_call_id is not None:
        out["tool_call_id"] = message.tool_call_id
    if message.name is not None:
        out["name"] = message.name
    return out


def tool_dict(tool: Tool) -> dict[str, Any]:
    """A tool as transformers hands it to a template (OpenAI's function shape)."""
    function: dict[str, Any] = {"name": tool.name, "parameters": dict(tool.parameters)}
    if tool.description is not None:
        function["description"] = tool.description
    return {"type": "function", "function": function}


def render_template(
    source: str,
    messages: Sequence[AnyMessage],
    *,
    bos_token: str | None = None,
    eos_token: str | None = None,
    add_generation_prompt: bool = True,
    tools: Sequence[Tool] = (),
    kwargs: Mapping[str, Any] | None = None,
    object_arguments: bool = True,
) -> str:
    """Render a Hugging Face chat template with the variables transformers passes: the
    messages, `tools` (None without any, as transformers passes it), the special tokens,
    `add_generation_prompt` and the chat-template keyword arguments."""
    template = _compile(source)
    now = datetime.now()
    # What llama.cpp's chat code adds for every template: today's date, in two forms
    # (Firefunction v2 reads `datetime`, Llama 3.x's templates `date_string`).
    variables: dict[str, Any] = {
        "datetime": now.strftime("%b %d %Y"),
        "date_string": now.strftime("%d %b %Y"),
    }
    variables.update(kwargs or {})
    tool_dicts = [tool_dict(t) for t in tools]
    if tool_dicts:
        # Firefunction v2 takes the tools as `functions`, the JSON text of their functions.
        variables["functions"] = json.dumps([t["function"] for t in tool_dicts], indent=2)
    variables.update(
        messages=[message_dict(m, object_arguments) for m in messages],
        tools=tool_dicts or None,
        bos_token=bos_token or "",
        eos_token=eos_token or "",
        add_generation_prompt=add_generation_prompt,
    )
    try:
        return template.render(**variables)
    except ChatTemplateError:
        raise
    except (jinja2.TemplateError, TypeError, ValueError, KeyError, IndexError) as exc:
        raise ChatTemplateError(f"the model's chat template failed: {exc}") from None


def render_chat(
    info: ModelInfo,
    messages: Sequence[AnyMessage],
    builtin: Callable[[Sequence[ChatMessage], bool], str],
    add_generation_prompt: bool = True,
    *,
    template: str | None = None,
    tools: Sequence[Tool] = (),
    kwargs: Mapping[str, Any] | None = None,
    object_arguments: bool = True,
) -> str:
    """The prompt text: `template` (a served override) or the GGUF's when there is one, else
    `builtin` (llama.cpp's, which knows roles and text only)."""
    source = template or info.chat_template
    if source:
        return render_template(
            source,
            messages,
            bos_token=info.bos_token,
            eos_token=info.eos_token,
            add_generation_prompt=add_generation_prompt,
            tools=tools,
            kwargs=kwargs,
            object_arguments=object_arguments,
        )
    return builtin([ChatMessage(m.role, m.content) for m in messages], add_generation_prompt)


def chat_prompt_tokens(
    source: ChatSource, info: ModelInfo, messages: Sequence[AnyMessage]
) -> list[int]:
    """The tokens of the chat prompt with the model's own template and no tools."""

    def render(turns: Sequence[AnyMessage]) -> str:
        return render_chat(info, turns, source.builtin_chat_template)

    return prompt_tokens(source, info, messages, render)[0]


def prompt_tokens(
    source: ChatSource,
    info: ModelInfo,
    messages: Sequence[AnyMessage],
    render: Callable[[Sequence[AnyMessage]], str],
) -> tuple[list[int], str]:
    """The tokens of the chat prompt, ready to generate the assistant's turn, and its text.

    Only the template's own markup becomes control tokens: text in a message that reads like
    one (`<end_of_turn>`) is tokenized as the text it is, so a message cannot forge a turn.
    A conversation without such text is tokenized in one piece; one with it is tokenized
    piecewise, the template's pieces with control tokens parsed and the messages' text
    without. (Only message text is guarded; a call's arguments are JSON the client made.)

    Templates usually write the BOS token themselves (`{{ bos_token }}`), and tokenizing with
    add_special adds the model's BOS too: a doubled BOS degrades the output. So a text that
    starts with the BOS is tokenized without add_special, and a doubled BOS left anyway (the
    BOS text unknown) loses one. Templates without BOS (llama.cpp's built-in ones) get the
    model's own from add_special, which adds none to models that want none.
    """
    text = render(messages)
    add_special = not (bool(info.bos_token) and text.startswith(str(info.bos_token)))
    if any(_reads_as_control(source, m.content) for m in messages):
        tokens = _tokenize_guarded(source, messages, render, add_special)
    else:
        tokens = source.tokenize(text, add_special)
    bos = source.tokenize("", True)
    if len(bos) == 1 and tokens[:2] == bos * 2:
        del tokens[0]
    return tokens, text


def _reads_as_control(source: ChatSource, text: str) -> bool:
    """Whether `text` holds the text of a control token (it tokenizes differently when
    control tokens are parsed)."""
    return bool(text) and source.tokenize(text, False, True) != source.tokenize(text, False, False)


def _with_content(message: AnyMessage, content: str) -> AnyMessage:
    if isinstance(message, Message):
        return dataclasses.replace(message, content=content)
    return ChatMessage(message.role, content)


def _tokenize_guarded(
    source: ChatSource,
    messages: Sequence[AnyMessage],
    render: Callable[[Sequence[AnyMessage]], str],
    add_special: bool,
) -> list[int]:
    """Render the template over placeholders, then tokenize its pieces with control tokens
    and the messages' text without. Each placeholder is padded with a space on both sides:
    where the template trims a message (`| trim`), the pads are gone and the text goes in
    trimmed too; elsewhere it goes in as it is."""
    nonce = secrets.token_hex(8)
    stand_ins = [_with_content(m, f" \ue000{nonce}{i}\ue001 ") for i, m in enumerate(messages)]
    layout = render(stand_ins)
    pattern = re.compile(f"( ?)\ue000{nonce}(\\d+)\ue001( ?)")
    tokens: list[int] = []
    at = 0
    for match in pattern.finditer(layout):
        markup = layout[at : match.start()]
        if markup:
            tokens += source.tokenize(markup, add_special and not tokens, True)
        content = messages[int(match.group(2))].content
        if not (match.group(1) and match.group(3)):
            content = content.strip()
        if content:
            tokens += source.tokenize(content, add_special and not tokens, False)
        at = match.end()
    if layout[at:]:
        tokens += source.tokenize(layout[at:], add_special and not tokens, True)
    return tokens
