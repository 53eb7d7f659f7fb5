"""A Responses API request as the chat core's `ChatRequest`: the conversation (instructions,
the stored turns `previous_response_id` names, the input items) as chat turns, the tools and
settings as the core's, and the core's errors renamed to the Responses fields they are about.

Input items follow OpenAI's API reference: messages (`type` may be left out; content as text or
parts), `function_call`, `function_call_output` and `reasoning`. What the worker cannot honour
(images, files, built-in tools and their items) is a 400 naming the field and the type.
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace

from llorch.worker.backend.errors import InvalidRequestError, WorkerError
from llorch.worker.chat.types import (
    ChatRequest,
    Message,
    ReasoningOptions,
    Tool,
    ToolCall,
    ToolChoice,
    ToolChoiceMode,
)
from llorch.worker.http.responses_schemas import (
    TEXT_PARTS,
    ContentPart,
    InputItem,
    ResponsesRequest,
)
from llorch.worker.http.responses_store import ResponseStore
from llorch.worker.http.sampling import json_format, sampling_params
from llorch.worker.media import CHAT_MARKER, MediaRef

_TEXT_PARTS = frozenset(TEXT_PARTS)
_NOT_SERVED = {"input_file": "files"}


@dataclass(frozen=True)
class Turns:
    """A request's conversation: its instructions, the stored turns it continues, its input."""

    instructions: tuple[Message, ...]
    earlier: tuple[Message, ...]
    own: tuple[Message, ...]
    where: list[str]  # of each prompt message, the request field a 400 about it names
    # The input's images, in order (each a media.CHAT_MARKER in its message's text).
    media: tuple[MediaRef, ...] = ()

    @property
    def prompt(self) -> tuple[Message, ...]:
        return (*self.instructions, *self.earlier, *self.own)

    @property
    def kept(self) -> tuple[Message, ...]:
        """What a stored response keeps: not its instructions (OpenAI does not carry them over
        to the next response), nor its images (their text stays; the pixels are not kept)."""
        return tuple(
            replace(m, content=m.content.replace(CHAT_MARKER, ""))
            for m in (*self.earlier, *self.own)
        )


def turns_of(body: ResponsesRequest, store: ResponseStore) -> Turns:
    earlier: tuple[Message, ...] = ()
    if body.previous_response_id is not None:
        earlier = store.get(body.previous_response_id, "previous_response_id").messages
    elif body.input is None:
        raise InvalidRequestError("input is required", param="input")
    instructions = (Message("system", body.instructions),) if body.instructions else ()
    media: list[MediaRef] = []
    if isinstance(body.input, str):
        own, at = [Message("user", body.input)], ["input"]
    else:
        own, at = input_messages(body.input or (), media)
    where = ["instructions"] * len(instructions) + ["previous_response_id"] * len(earlier) + at
    if not where:
        raise InvalidRequestError("input has no items: there is nothing to answer", param="input")
    return Turns(instructions, earlier, tuple(own), where, tuple(media))


def input_messages(
    items: Sequence[InputItem], media: list[MediaRef] | None = None
) -> tuple[list[Message], list[str]]:
    """Input items as chat turns: an assistant's reasoning, message and function calls that
    follow each other are one assistant turn (as one answer's output items are)."""
    out: list[Message] = []
    where: list[str] = []
    turn: Message | None = None  # the assistant turn being gathered, from item `turn_at`
    turn_at = ""

    def gathered(at: str) -> Message:
        nonlocal turn, turn_at
        if turn is None:
            turn, turn_at = Message("assistant"), at
        return turn

    def close() -> None:
        nonlocal turn
        if turn is not None:
            out.append(turn)
            where.append(turn_at)
            turn = None

    for i, item in enumerate(items):
        at = f"input[{i}]"
        answered = turn is not None and bool(turn.content or turn.tool_calls)
        if item.type in ("reasoning", "message") and answered:
            close()  # a new answer starts
        if item.type == "message":
            if item.role is None:
                raise InvalidRequestError(f"{at}.role is required", param=f"{at}.role")
            text = _text(item.content, f"{at}.content", media)
            if item.role == "assistant":
                turn = replace(gathered(at), content=text)
                continue
            close()
            out.append(Message("system" if item.role == "developer" else item.role, text))
            where.append(at)
        elif item.type == "function_call":
            call = _call(item, at)
            turn = replace(gathered(at), tool_calls=(*gathered(at).tool_calls, call))
        elif item.type == "function_call_output":
            close()
            call_id = _required(item.call_id, f"{at}.call_id")
            output = item.output if item.output is not None else ""
            out.append(Message("tool", _text(output, f"{at}.output"), tool_call_id=call_id))
            where.append(at)
        elif item.type == "reasoning":
            parts = item.content if isinstance(item.content, list) and item.content else None
            text = _text(parts or item.summary or [], f"{at}.content" if parts else f"{at}.summary")
            # An item with only encrypted_content (another server's) adds no thinking.
            thinking = (gathered(at).reasoning or "") + text
            turn = replace(gathered(at), reasoning=thinking or None)
        else:
            raise InvalidRequestError(
                f"{at} is an item of type {item.type[:64]!r}, which this server does not take "
                "(message, function_call, function_call_output and reasoning items are served)",
                param=f"{at}.type",
                value=item.type[:64],
            )
    close()
    return out, where


def _text(
    content: str | list[ContentPart] | None, at: str, media: list[MediaRef] | None = None
) -> str:
    """The text of `content`; an input_image part (a message's, when `media` gathers them)
    stands as the chat marker where it was."""
    if content is None or isinstance(content, str):
        return content or ""
    texts = []
    for j, part in enumerate(content):
        if part.type == "input_image" and media is not None:
            texts.append(_image(part, f"{at}[{j}]", media))
            continue
        if part.type == "input_audio" and media is not None:
            texts.append(_audio(part, f"{at}[{j}]", media))
            continue
        if part.type in _NOT_SERVED or part.type in ("input_image", "input_audio"):
            served = _NOT_SERVED.get(part.type, "media here")
            raise InvalidRequestError(
                f"{at}[{j}] is an {part.type} part: {served} are not served yet (text, image "
                "and audio parts only)",
                param=f"{at}[{j}]",
                value=part.type,
            )
        if part.type == "refusal":
            texts.append(part.refusal or "")
        elif part.type in _TEXT_PARTS:
            texts.append(part.text or "")
        else:
            raise InvalidRequestError(
                f"{at}[{j}] is a part of type {part.type[:64]!r}, which this server does not "
                "take (text parts only)",
                param=f"{at}[{j}].type",
                value=part.type[:64],
            )
    return "".join(texts)


def _image(part: ContentPart, at: str, media: list[MediaRef]) -> str:
    url = part.image_url
    if not url:
        raise InvalidRequestError(
            f"{at}: an input_image needs its image_url (a data: URI, or an http(s) URL of an "
            "allowed host); file_id is not served",
            param=f"{at}.image_url",
        )
    media.append(MediaRef(url, f"{at}.image_url"))
    return CHAT_MARKER


def _audio(part: ContentPart, at: str, media: list[MediaRef]) -> str:
    clip = part.input_audio
    if clip is None:
        raise InvalidRequestError(
            f"{at}: an input_audio part needs its input_audio ({{data, format}})",
            param=f"{at}.input_audio",
        )
    media.append(MediaRef(clip.data, f"{at}.input_audio.data", True, "audio", clip.format))
    return CHAT_MARKER


def _required(value: str | None, param: str) -> str:
    if not value:
        raise InvalidRequestError(f"{param} is required", param=param)
    return value


def _call(item: InputItem, at: str) -> ToolCall:
    arguments = item.arguments or "{}"
    try:
        value = json.loads(arguments)
    except json.JSONDecodeError as exc:
        raise InvalidRequestError(
            f"{at}.arguments is not JSON: {exc}", param=f"{at}.arguments", value=arguments[:64]
        ) from None
    if not isinstance(value, dict):
        raise InvalidRequestError(f"{at}.arguments must be a JSON object", param=f"{at}.arguments")
    name = _required(item.name, f"{at}.name")
    return ToolCall(_required(item.call_id, f"{at}.call_id"), name, arguments)


def chat_request(body: ResponsesRequest, turns: Turns, job_id: str) -> ChatRequest:
    """The surface-neutral request of a Responses body over its conversation."""
    tools = []
    for i, tool in enumerate(body.tools or ()):
        if tool.type != "function":
            raise InvalidRequestError(
                f"tools[{i}] is OpenAI's built-in tool {tool.type[:64]!r}, which this server "
                "does not run; only tools of type 'function' are served",
                param=f"tools[{i}].type",
                value=tool.type[:64],
            )
        name = _required(tool.name, f"tools[{i}].name")
        parameters = tool.parameters if tool.parameters is not None else {}
        tools.append(Tool(name, tool.description, parameters, bool(tool.strict)))
    effort = body.reasoning.effort if body.reasoning is not None else None
    return ChatRequest(
        job_id=job_id,
        messages=turns.prompt,
        media=turns.media,
        tools=tuple(tools),
        tool_choice=_tool_choice(body),
        parallel_tool_calls=body.parallel_tool_calls,
        json_format=json_format(body),
        sampling=sampling_params(body),
        max_tokens=body.max_output_tokens,
        lora=body.lora_pairs(),
        speculative=body.speculative,
        reasoning=ReasoningOptions(effort=effort, budget=0 if effort == "none" else None),
    )


def _tool_choice(body: ResponsesRequest) -> ToolChoice:
    choice = body.tool_choice
    if choice is None or isinstance(choice, str):
        return ToolChoice(ToolChoiceMode(choice or "auto"))
    if choice.type != "function":
        raise InvalidRequestError(
            f"tool_choice names a tool of type {choice.type[:64]!r}; only function tools are "
            "served ('auto', 'none', 'required' or {\"type\": \"function\", \"name\": ...})",
            param="tool_choice.type",
            value=choice.type[:64],
        )
    return ToolChoice(ToolChoiceMode.NAMED, _required(choice.name, "tool_choice.name"))


@contextlib.contextmanager
def renamed_params(where: Sequence[str]) -> Iterator[None]:
    """Errors of the chat core name a chat completion's fields (`messages[3].tool_call_id`,
    `tools[0].function.parameters`); within this block they are renamed to the Responses
    fields they came from (`input[5].call_id`, `tools[0].parameters`); `where` names the
    field of each prompt message."""
    try:
        yield
    except WorkerError as exc:
        if exc.param is not None:
            exc.param = _renamed(exc.param, where)
        raise


_MESSAGE = re.compile(r"messages\[(\d+)\](.*)")
_TOOL = re.compile(r"tools\[(\d+)\]\.function\.(.*)")
_FIELDS = {
    "prompt": "input",
    "messages": "input",
    "max_tokens": "max_output_tokens",
    "response_format": "text.format",
}


def _renamed(param: str, where: Sequence[str]) -> str:
    if (message := _MESSAGE.fullmatch(param)) is not None:
        index, rest = int(message[1]), message[2]
        source = where[index] if index < len(where) else "input"
        if not source.startswith("input["):
            return source
        return source + rest.replace(".tool_call_id", ".call_id").replace(".function.", ".")
    if (tool := _TOOL.fullmatch(param)) is not None:
        return f"tools[{tool[1]}].{tool[2]}"
    return _FIELDS.get(param, param)
