"""Request bodies of OpenAI's Responses API (`POST /v1/responses`, `/v1/responses/input_tokens`).

The shapes follow OpenAI's API reference (and the `openai` SDK's `ResponseCreateParams`). Unknown
fields are ignored, as OpenAI-compatible servers do (clients send `user`, `include`,
`truncation`, `prompt_cache_key`, ...). Item, part and tool types are plain strings here: the
translator (worker/http/responses.py) refuses those the worker cannot honour (files, audio,
built-in tools, other tools' items) with a 400 that names the field and the type; an
input_image goes to a model served with a projector (worker/media.py).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import ConfigDict, Field, field_validator

from llorch.worker.http.openai_schemas import (
    JSON_FORMATS,
    MAX_MESSAGES,
    MAX_NAME_CHARS,
    MAX_TEXT_CHARS,
    MAX_TOOLS,
    InputAudioIn,
    Text,
)
from llorch.worker.http.openapi import (
    OBJECT_PARAMETERS,
    TOOLS,
    a_tool_to_call,
    calls_possible,
    equals,
    given,
    rules,
    when,
)
from llorch.worker.http.sampling import IN_CONTEXT, SamplingBody, StrictModel

Name = Annotated[str, Field(min_length=1, max_length=MAX_NAME_CHARS)]
# OpenAI's bounds of `metadata`: 16 pairs, keys of 64 characters, values of 512.
MetadataKey = Annotated[str, Field(max_length=64)]
MetadataValue = Annotated[str, Field(max_length=512)]
# What the translator (worker/http/responses_input.py) takes; the schema says the same.
TEXT_PARTS = ("input_text", "output_text", "text", "summary_text", "reasoning_text")
ITEM_TYPES = ("message", "function_call", "function_call_output", "reasoning")
_ARGUMENTS = "JSON text of an object: text that does not parse as one is refused with a 400."


def _of_types(*types: str) -> dict[str, Any]:
    return {"properties": {"type": {"enum": list(types)}}}


class ContentPart(StrictModel):
    """A part of a message's content (`input_text`, `output_text`, `refusal`, `input_image`,
    `input_file`, ...), of a reasoning item (`reasoning_text`, `summary_text`), or of a
    function call's output."""

    model_config = ConfigDict(
        extra="allow",
        json_schema_extra=rules(_of_types(*TEXT_PARTS, "refusal", "input_image", "input_audio")),
    )

    type: str = Field(max_length=64)
    text: Text | None = None
    refusal: Text | None = None
    image_url: str | None = Field(
        None,
        min_length=1,
        description="input_image: a data: URI (base64 PNG, JPEG, WebP, GIF or BMP) or an "
        "http(s) URL of a host in --allowed-media-hosts, in a message's content; a model "
        "served without a projector (--mmproj) or a bad image is a 400 naming the part.",
    )
    input_audio: InputAudioIn | None = None  # input_audio: base64 WAV or MP3, as in a chat


class InputItem(StrictModel):
    """An item of `input`: a message (`type` may be left out), a function call the assistant
    made (`function_call`), its result (`function_call_output`), or an earlier turn's
    thinking (`reasoning`)."""

    model_config = ConfigDict(
        extra="allow",
        json_schema_extra=rules(
            _of_types(*ITEM_TYPES),
            # `type` left out is a message: the condition holds when it is absent.
            when({"properties": {"type": {"const": "message"}}}, given("role")),
            when(equals("type", "function_call"), given("call_id", "name")),
            when(equals("type", "function_call_output"), given("call_id")),
        ),
    )

    type: str = Field("message", max_length=64)
    # message
    role: Literal["user", "assistant", "system", "developer"] | None = None
    content: Text | list[ContentPart] | None = Field(None, max_length=MAX_MESSAGES)
    # function_call, function_call_output
    call_id: Name | None = Field(
        None,
        description="A function_call_output's call_id must answer a function_call before it "
        "(in input or in the stored conversation): one that does not is refused with a 400.",
    )
    name: Name | None = None
    arguments: Text | None = Field(None, description=_ARGUMENTS)
    output: Text | list[ContentPart] | None = Field(None, max_length=MAX_MESSAGES)
    # reasoning
    summary: list[ContentPart] | None = Field(None, max_length=MAX_MESSAGES)
    id: str | None = Field(None, max_length=MAX_NAME_CHARS)


class FunctionToolIn(StrictModel):
    """A tool: `type: "function"` with its name and JSON schema; any other type is a built-in
    tool of OpenAI's (web_search, file_search, ...), refused by the translator."""

    model_config = ConfigDict(
        extra="allow",
        json_schema_extra=rules(
            equals("type", "function"),
            given("name"),
            {"properties": {"parameters": OBJECT_PARAMETERS}},
        ),
    )

    type: str = Field(max_length=64)
    # OpenAI's rule for function names, with . and : too, which MCP tool names use.
    name: str | None = Field(None, pattern=r"^[A-Za-z0-9_.:-]{1,64}$")
    description: str | None = Field(None, max_length=MAX_TEXT_CHARS)
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class ToolChoiceIn(StrictModel):
    """`{"type": "function", "name": ...}`; other types (a built-in tool, allowed_tools) are
    refused by the translator."""

    model_config = ConfigDict(
        extra="allow", json_schema_extra=rules(equals("type", "function"), given("name"))
    )

    type: str = Field(max_length=64)
    name: Name | None = None


class TextFormat(StrictModel):
    type: Literal["text", "json_object", "json_schema"]
    name: str | None = Field(None, max_length=MAX_NAME_CHARS)
    description: str | None = Field(None, max_length=MAX_TEXT_CHARS)
    schema_: dict[str, Any] | None = Field(None, alias="schema")
    strict: bool | None = None


class TextConfig(StrictModel):
    model_config = ConfigDict(extra="allow")

    format: TextFormat | None = None
    verbosity: Literal["low", "medium", "high"] | None = None


class ReasoningIn(StrictModel):
    model_config = ConfigDict(extra="allow")

    # Passed to templates that read `reasoning_effort` (gpt-oss); "none" also turns thinking
    # off for the templates that think (a budget of 0).
    effort: Literal["none", "minimal", "low", "medium", "high", "xhigh"] | None = None
    summary: str | None = Field(None, max_length=64)  # accepted; thinking is given whole


class ResponsesRequest(SamplingBody):
    """The body of `POST /v1/responses` (and of `/v1/responses/input_tokens`)."""

    model_config = ConfigDict(
        extra="allow",
        populate_by_name=True,
        strict=True,
        json_schema_extra=rules(
            # Something to answer: input, or the stored conversation previous_response_id
            # continues; an empty list of items needs instructions at least.
            {
                "anyOf": [
                    given("previous_response_id"),
                    {
                        "required": ["input"],
                        "properties": {"input": {"type": ["string", "array"], "minItems": 1}},
                    },
                    {
                        "required": ["input", "instructions"],
                        "properties": {
                            "input": {"type": "array"},
                            "instructions": {"type": "string", "minLength": 1},
                        },
                    },
                ]
            },
            a_tool_to_call({"anyOf": [{"const": "required"}, {"type": "object"}]}),
            calls_possible(
                {
                    "required": ["text"],
                    "properties": {
                        "text": {
                            "type": "object",
                            "required": ["format"],
                            "properties": {
                                "format": {
                                    "type": "object",
                                    "properties": {"type": {"enum": JSON_FORMATS}},
                                }
                            },
                        }
                    },
                }
            ),
        ),
    )

    model: str | None = Field(None, max_length=256)
    # A user message as text, or items; may be left out when previous_response_id says
    # everything (the stored conversation is continued as it is).
    input: Text | list[InputItem] | None = Field(
        None, max_length=MAX_MESSAGES, description=IN_CONTEXT
    )
    instructions: Text | None = None  # a system turn before everything, not carried over
    tools: list[FunctionToolIn] | None = Field(None, max_length=MAX_TOOLS, description=TOOLS)
    tool_choice: Literal["auto", "none", "required"] | ToolChoiceIn | None = None
    parallel_tool_calls: bool = True
    max_output_tokens: int | None = Field(None, ge=1, le=1 << 20, description=IN_CONTEXT)
    text: TextConfig | None = None
    reasoning: ReasoningIn | None = None
    stream: bool = False
    store: bool = True  # OpenAI's default
    previous_response_id: str | None = Field(None, min_length=1, max_length=MAX_NAME_CHARS)
    metadata: dict[MetadataKey, MetadataValue] | None = Field(None, max_length=16)

    @field_validator("input")
    @classmethod
    def _bounded_text(cls, value: str | list[InputItem] | None) -> str | list[InputItem] | None:
        if isinstance(value, list):
            total = 0
            for item in value:
                for text in (item.content, item.output, item.arguments):
                    if isinstance(text, str):
                        total += len(text)
                    elif text is not None:
                        total += sum(len(p.text or p.refusal or "") for p in text)
            if total > MAX_TEXT_CHARS:
                raise ValueError(
                    f"the input items hold {total} characters; at most {MAX_TEXT_CHARS} in all"
                )
        return value

    def json_constraint(self) -> tuple[str, dict[str, Any] | None] | None:
        fmt = self.text.format if self.text is not None else None
        if fmt is None or fmt.type == "text":
            return None
        return "text.format", fmt.schema_ if fmt.type == "json_schema" else None
