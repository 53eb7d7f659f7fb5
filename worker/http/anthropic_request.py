"""Anthropic's Messages body as the chat core's `ChatRequest`: the system text, each message's
blocks as turns (a user's tool_result blocks become tool turns, an assistant's thinking its
reasoning, its tool_use blocks its calls), the tools, tool_choice and thinking options.
"""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

from llorch.worker.backend.errors import ContextOverflowError, InvalidRequestError, WorkerError
from llorch.worker.backend.protocol import SamplingParams
from llorch.worker.chat.types import (
    ChatRequest,
    Message,
    ReasoningFormat,
    ReasoningOptions,
    Tool,
    ToolCall,
    ToolChoice,
    ToolChoiceMode,
)
from llorch.worker.http.anthropic_schemas import (
    CountTokensRequest,
    ImageBlock,
    MessagesRequest,
    RedactedThinkingBlock,
    TextBlock,
    ThinkingBlock,
    ToolResultBlock,
    ToolUseBlock,
)
from llorch.worker.media import CHAT_MARKER, MediaRef

# The chat core names calls call_…; Anthropic's ids read toolu_….
_CORE_PREFIX, _TOOL_USE_PREFIX = "call_", "toolu_"
_CHOICES = {
    "auto": ToolChoiceMode.AUTO,
    "any": ToolChoiceMode.REQUIRED,
    "tool": ToolChoiceMode.NAMED,
    "none": ToolChoiceMode.NONE,
}
# The core's names of the tool fields in its errors, and Anthropic's.
_FIELD_NAMES = ((".function.parameters", ".input_schema"), (".function.name", ".name"))


def tool_use_id(core_id: str) -> str:
    return _TOOL_USE_PREFIX + core_id.removeprefix(_CORE_PREFIX)


def _core_id(client_id: str) -> str:
    """The id a tool_use block sent back is given to the template as: without the toolu_
    prefix added on the way out, so that a family's own ids come back as the model made them
    (Mistral's templates refuse any id that is not 9 letters and digits)."""
    return client_id.removeprefix(_TOOL_USE_PREFIX) or client_id


def chat_request(body: CountTokensRequest, job_id: str) -> ChatRequest:
    """The surface-neutral request of a Messages body (count_tokens' body: no generation)."""
    messages = [Message("system", body.system_text)] if body.system_text else []
    calls_made: set[str] = set()
    media: list[MediaRef] = []
    for i, message in enumerate(body.messages):
        for turn in _turns(message.role, message.blocks, i, calls_made, media):
            last = messages[-1] if messages else None
            if last is not None and last.role == turn.role and turn.role in ("user", "assistant"):
                # Anthropic combines consecutive turns of one role; many templates refuse them.
                turn = _joined(last, turn)
                messages.pop()
            messages.append(turn)
    if body.messages[-1].role != "user":
        raise InvalidRequestError(
            "the last message must be the user's: continuing an assistant turn (prefill) is "
            "not supported",
            param=f"messages[{len(body.messages) - 1}].role",
        )
    choice = body.tool_choice
    thinking = body.thinking
    reasoning = ReasoningOptions()
    if thinking is not None and thinking.type == "enabled":
        reasoning = ReasoningOptions(format=ReasoningFormat.AUTO, budget=thinking.budget_tokens)
    elif thinking is not None and thinking.type == "disabled":
        reasoning = ReasoningOptions(budget=0)
    request = ChatRequest(
        job_id=job_id,
        messages=tuple(messages),
        tools=tuple(
            Tool(t.name, t.description, t.input_schema or {}, bool(t.strict))
            for t in body.tools or ()
        ),
        tool_choice=ToolChoice(
            _CHOICES[choice.type], choice.name if choice.type == "tool" else None
        )
        if choice is not None
        else ToolChoice(),
        parallel_tool_calls=not (choice is not None and choice.disable_parallel_tool_use),
        reasoning=reasoning,
        media=tuple(media),
    )
    if isinstance(body, MessagesRequest):
        sampling = SamplingParams(temperature=body.temperature, top_p=body.top_p, top_k=body.top_k)
        stops = tuple(body.stop_sequences or ())
        return replace(request, sampling=sampling, stop=stops, max_tokens=body.max_tokens)
    return request


def _image(block: ImageBlock, where: str, media: list[MediaRef]) -> str:
    """The chat marker standing for the image in the text; its reference added to `media`."""
    source = block.source
    if source.type == "url":
        media.append(MediaRef(source.url or "", f"{where}.source.url"))
    else:
        media.append(MediaRef(source.data or "", f"{where}.source.data", bare_base64=True))
    return CHAT_MARKER


def _turns(
    role: str, blocks: list[Any], index: int, calls_made: set[str], media: list[MediaRef]
) -> list[Message]:
    """A message's blocks as the core's turns: a user's tool results become tool turns (in
    order), its text one user turn; an assistant's thinking, text and tool_use one turn."""
    texts: list[str] = []
    thinking: list[str] = []
    calls: list[ToolCall] = []
    out: list[Message] = []
    for j, block in enumerate(blocks):
        where = f"messages[{index}].content[{j}]"
        allowed = (
            (TextBlock, ThinkingBlock, RedactedThinkingBlock, ToolUseBlock)
            if role == "assistant"
            else (TextBlock, ImageBlock, ToolResultBlock)
        )
        if not isinstance(block, allowed):
            raise InvalidRequestError(
                f"{where}: a {block.type} block cannot be in a {role} message", param=where
            )
        if isinstance(block, ImageBlock):
            texts.append(_image(block, where, media))
        elif isinstance(block, TextBlock):
            texts.append(block.text)
        elif isinstance(block, ThinkingBlock):
            thinking.append(block.thinking)
        elif isinstance(block, ToolUseBlock):
            call = ToolCall(_core_id(block.id), block.name, json.dumps(block.input))
            calls_made.add(call.id)
            calls.append(call)
        elif isinstance(block, ToolResultBlock):
            if texts:
                out.append(Message("user", "\n\n".join(texts)))
                texts = []
            out.append(_tool_turn(block, where, calls_made, media))
        # redacted_thinking: encrypted by Anthropic, nothing a template could show
    if role == "assistant":
        return [
            Message(
                "assistant",
                "\n\n".join(texts),
                reasoning="\n\n".join(thinking) if thinking else None,
                tool_calls=tuple(calls),
            )
        ]
    if texts or not out:
        # Blocks are separate pieces (Claude Code sends reminders, files and the prompt as
        # blocks of one message): a blank line keeps them apart.
        out.append(Message("user", "\n\n".join(texts)))
    return out


def _tool_turn(
    block: ToolResultBlock, where: str, calls_made: set[str], media: list[MediaRef]
) -> Message:
    call_id = _core_id(block.tool_use_id)
    if call_id not in calls_made:
        raise InvalidRequestError(
            f"{where}.tool_use_id {block.tool_use_id[:64]!r} answers no earlier tool_use block",
            param=f"{where}.tool_use_id",
        )
    content = block.content or ""
    if isinstance(content, list):
        content = "\n\n".join(
            _image(p, f"{where}.content[{k}]", media) if isinstance(p, ImageBlock) else p.text
            for k, p in enumerate(content)
        )
    if block.is_error:
        # Chat templates have no field for a failed call (nor has OpenAI's tool role): the
        # model learns of the failure from the text it reads, as is_error is meant to tell it.
        content = f"Error: {content}"
    return Message("tool", content, tool_call_id=call_id)


def _joined(first: Message, second: Message) -> Message:
    reasoning = [r for r in (first.reasoning, second.reasoning) if r]
    return Message(
        first.role,
        "\n\n".join(t for t in (first.content, second.content) if t),
        reasoning="\n\n".join(reasoning) if reasoning else None,
        tool_calls=first.tool_calls + second.tool_calls,
    )


def in_our_terms(exc: WorkerError) -> WorkerError:
    """A core error about a field, named as this body names it."""
    if isinstance(exc, ContextOverflowError) and exc.param == "prompt":
        exc.param = "messages"  # the prompt of a message is its messages
    for core, ours in _FIELD_NAMES:
        if exc.param and core in exc.param:
            exc.param = exc.param.replace(core, ours)
            exc.args = (str(exc).replace(core, ours),)
    return exc
