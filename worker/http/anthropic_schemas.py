"""Request bodies of Anthropic's Messages API (`POST /v1/messages`, `/v1/messages/count_tokens`).

Unknown fields are ignored (clients send `metadata`, `cache_control`, `service_tier`, ...), as
the OpenAI bodies do; what the worker cannot honour is refused with a 400 naming the field:
server tools (web search, bash, text editor, ...) here; images (image blocks) go to a model
served with a projector, and a bad one is refused when its bytes are read (worker/media.py).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import ConfigDict, Field, field_validator, model_validator

from llorch.worker.http.openai_schemas import (
    MAX_MESSAGES,
    MAX_NAME_CHARS,
    MAX_TEXT_CHARS,
    MAX_TOOLS,
    Text,
)
from llorch.worker.http.openapi import TOOLS, a_tool_to_call, equals, given, rules, when
from llorch.worker.http.sampling import IN_CONTEXT, INT32_MAX, Stops, StrictModel

ToolId = Annotated[str, Field(min_length=1, max_length=MAX_NAME_CHARS)]


class TextBlock(StrictModel):
    type: Literal["text"]
    text: Text


class ImageSource(StrictModel):
    model_config = ConfigDict(
        json_schema_extra=rules(
            when(equals("type", "base64"), given("data")),
            when(equals("type", "url"), given("url")),
        )
    )

    type: Literal["base64", "url"]
    media_type: str | None = Field(None, max_length=64)  # the image's own header decides
    data: str | None = Field(
        None,
        min_length=1,
        description="The image, base64 (PNG, JPEG, WebP, GIF or BMP). A model served without "
        "a projector (--mmproj), a corrupt or truncated image, more images than "
        "--max-media-per-request or more pixels than --max-image-pixels is a 400 naming it.",
    )
    url: str | None = Field(
        None, min_length=1, description="An http(s) URL of a host in --allowed-media-hosts."
    )


class ImageBlock(StrictModel):
    """An image, where the model has a projector (worker/media.py)."""

    type: Literal["image"]
    source: ImageSource


class ToolUseBlock(StrictModel):
    type: Literal["tool_use"]
    id: ToolId
    name: str = Field(min_length=1, max_length=MAX_NAME_CHARS)
    input: dict[str, Any]


ResultPart = Annotated[TextBlock | ImageBlock, Field(discriminator="type")]


class ToolResultBlock(StrictModel):
    type: Literal["tool_result"]
    tool_use_id: ToolId
    content: Text | list[ResultPart] | None = None
    is_error: bool = False


class ThinkingBlock(StrictModel):
    type: Literal["thinking"]
    thinking: Text
    signature: str | None = None  # Anthropic's proof of its own thinking: nothing to check here


class RedactedThinkingBlock(StrictModel):
    type: Literal["redacted_thinking"]
    data: str | None = None


ContentBlock = Annotated[
    TextBlock | ImageBlock | ToolUseBlock | ToolResultBlock | ThinkingBlock | RedactedThinkingBlock,
    Field(discriminator="type"),
]


# The blocks each role's message may hold (the translator's rule: worker/http/anthropic_request.py).
_BLOCKS_OF = {
    "assistant": ["text", "thinking", "redacted_thinking", "tool_use"],
    "user": ["text", "image", "tool_result"],
}


class MessageIn(StrictModel):
    model_config = ConfigDict(
        json_schema_extra=rules(
            *(
                when(
                    equals("role", role),
                    {
                        "properties": {
                            "content": {"items": {"properties": {"type": {"enum": kinds}}}}
                        }
                    },
                )
                for role, kinds in _BLOCKS_OF.items()
            )
        )
    )

    role: Literal["user", "assistant"]
    content: Text | Annotated[list[ContentBlock], Field(max_length=MAX_MESSAGES)]

    @property
    def blocks(self) -> list[ContentBlock]:
        if isinstance(self.content, str):
            return [TextBlock(type="text", text=self.content)]
        return list(self.content)


class ToolIn(StrictModel):
    """A client tool (`type` absent or "custom"). Anthropic's server tools carry a versioned
    type (`web_search_20250305`, `bash_20250124`, ...) and run on Anthropic's side."""

    model_config = ConfigDict(
        json_schema_extra=rules(
            {"properties": {"type": {"enum": ["custom", None]}}},
            given("input_schema"),
            {"properties": {"input_schema": {"properties": {"type": {"const": "object"}}}}},
        )
    )

    type: str | None = Field(None, max_length=64)
    # Anthropic's rule for tool names, with . and : too, which MCP tool names use.
    name: str = Field(pattern=r"^[A-Za-z0-9_.:-]{1,128}$")
    description: str | None = Field(None, max_length=MAX_TEXT_CHARS)
    input_schema: dict[str, Any] | None = None
    strict: bool | None = None

    @model_validator(mode="after")
    def _client_tool(self) -> ToolIn:
        if self.type not in (None, "custom"):
            raise ValueError(
                f"the server tool {self.type!r} ({self.name}) is not served here: only client "
                "tools (a name, a description and an input_schema) are"
            )
        if self.input_schema is None:
            raise ValueError(f"the tool {self.name!r} has no input_schema")
        kind = self.input_schema.get("type", "object")
        if kind != "object":
            raise ValueError(f"input_schema must describe an object (type 'object'), got {kind!r}")
        return self


class ToolChoiceIn(StrictModel):
    model_config = ConfigDict(json_schema_extra=rules(when(equals("type", "tool"), given("name"))))

    type: Literal["auto", "any", "tool", "none"]
    name: str | None = Field(None, min_length=1, max_length=MAX_NAME_CHARS)
    disable_parallel_tool_use: bool = False

    @model_validator(mode="after")
    def _named(self) -> ToolChoiceIn:
        if self.type == "tool" and self.name is None:
            raise ValueError('tool_choice of type "tool" needs the name of the tool')
        return self


class ThinkingIn(StrictModel):
    model_config = ConfigDict(
        json_schema_extra=rules(when(equals("type", "enabled"), given("budget_tokens")))
    )

    # "adaptive": the model decides; here, as the server is set up (--reasoning-budget).
    type: Literal["enabled", "disabled", "adaptive"]
    budget_tokens: int | None = Field(None, ge=1, le=1 << 20)

    @model_validator(mode="after")
    def _budget(self) -> ThinkingIn:
        if self.type == "enabled" and self.budget_tokens is None:
            raise ValueError('thinking of type "enabled" needs budget_tokens')
        return self


class CountTokensRequest(StrictModel):
    """What a prompt is made of: the body of count_tokens, and of a message without its
    generation fields."""

    model_config = ConfigDict(
        strict=True,
        json_schema_extra=rules(
            a_tool_to_call(
                {
                    "type": "object",
                    "required": ["type"],
                    "properties": {"type": {"enum": ["any", "tool"]}},
                }
            )
        ),
    )

    model: str | None = Field(None, max_length=256)
    system: Text | Annotated[list[TextBlock], Field(max_length=MAX_MESSAGES)] | None = None
    messages: list[MessageIn] = Field(
        min_length=1,
        max_length=MAX_MESSAGES,
        description="The last message must be the user's (an assistant turn to continue is "
        "not served), and a tool_result must answer a tool_use block of an earlier message: "
        "a request that breaks either is refused with a 400. " + IN_CONTEXT,
    )
    tools: list[ToolIn] | None = Field(None, max_length=MAX_TOOLS, description=TOOLS)
    tool_choice: ToolChoiceIn | None = None
    thinking: ThinkingIn | None = None

    @field_validator("messages")
    @classmethod
    def _total_text(cls, messages: list[MessageIn]) -> list[MessageIn]:
        total = 0
        for message in messages:
            for block in message.blocks:
                if isinstance(block, TextBlock):
                    total += len(block.text)
                elif isinstance(block, ThinkingBlock):
                    total += len(block.thinking)
                elif isinstance(block, ToolResultBlock):
                    content = block.content or ""
                    total += (
                        sum(len(p.text) for p in content if isinstance(p, TextBlock))
                        if isinstance(content, list)
                        else len(content)
                    )
        if total > MAX_TEXT_CHARS:
            raise ValueError(
                f"the messages hold {total} characters; at most {MAX_TEXT_CHARS} in all"
            )
        return messages

    @property
    def system_text(self) -> str:
        if isinstance(self.system, list):
            return "\n\n".join(block.text for block in self.system)
        return self.system or ""


class MessagesRequest(CountTokensRequest):
    max_tokens: int = Field(ge=1, le=1 << 20, description=IN_CONTEXT)
    stream: bool = False
    stop_sequences: Stops | None = None
    temperature: float = Field(1.0, ge=0.0, le=1.0)  # Anthropic's range and default
    top_p: float = Field(1.0, ge=0.0, le=1.0)
    top_k: int = Field(0, ge=0, le=INT32_MAX)
    metadata: dict[str, Any] | None = None  # user_id: nothing here reads it

    @field_validator("stop_sequences")
    @classmethod
    def _stops(cls, stops: list[str] | None) -> list[str]:
        return list(stops or [])
