"""Request bodies of Anthropic's Messages API (`POST /v1/messages`, `/v1/messages/count_tokens`).

Unknown fields are ignored (clients send `metadata`, `cache_control`, `service_tier`, ...), as
the OpenAI bodies do; what the worker cannot honour is refused with a 400 naming the field:
server tools (web search, bash, text editor, ...) here, images when the body is translated.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from llorch.worker.http.openai_schemas import (
    MAX_MESSAGES,
    MAX_NAME_CHARS,
    MAX_TEXT_CHARS,
    MAX_TOOLS,
    Text,
)
from llorch.worker.http.sampling import check_stops

ToolId = Annotated[str, Field(min_length=1, max_length=MAX_NAME_CHARS)]


class TextBlock(BaseModel):
    type: Literal["text"]
    text: Text


class ImageBlock(BaseModel):
    """Accepted by the schema so that the refusal can say what is missing (images are not
    served yet) rather than that the block's type is unknown."""

    type: Literal["image"]
    source: dict[str, Any] | None = None


class ToolUseBlock(BaseModel):
    type: Literal["tool_use"]
    id: ToolId
    name: str = Field(min_length=1, max_length=MAX_NAME_CHARS)
    input: dict[str, Any]


ResultPart = Annotated[TextBlock | ImageBlock, Field(discriminator="type")]


class ToolResultBlock(BaseModel):
    type: Literal["tool_result"]
    tool_use_id: ToolId
    content: Text | list[ResultPart] | None = None
    is_error: bool = False


class ThinkingBlock(BaseModel):
    type: Literal["thinking"]
    thinking: Text
    signature: str | None = None  # Anthropic's proof of its own thinking: nothing to check here


class RedactedThinkingBlock(BaseModel):
    type: Literal["redacted_thinking"]
    data: str | None = None


ContentBlock = Annotated[
    TextBlock | ImageBlock | ToolUseBlock | ToolResultBlock | ThinkingBlock | RedactedThinkingBlock,
    Field(discriminator="type"),
]


class MessageIn(BaseModel):
    role: Literal["user", "assistant"]
    content: Text | Annotated[list[ContentBlock], Field(max_length=MAX_MESSAGES)]

    @property
    def blocks(self) -> list[ContentBlock]:
        if isinstance(self.content, str):
            return [TextBlock(type="text", text=self.content)]
        return list(self.content)


class ToolIn(BaseModel):
    """A client tool (`type` absent or "custom"). Anthropic's server tools carry a versioned
    type (`web_search_20250305`, `bash_20250124`, ...) and run on Anthropic's side."""

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


class ToolChoiceIn(BaseModel):
    type: Literal["auto", "any", "tool", "none"]
    name: str | None = Field(None, min_length=1, max_length=MAX_NAME_CHARS)
    disable_parallel_tool_use: bool = False

    @model_validator(mode="after")
    def _named(self) -> ToolChoiceIn:
        if self.type == "tool" and self.name is None:
            raise ValueError('tool_choice of type "tool" needs the name of the tool')
        return self


class ThinkingIn(BaseModel):
    # "adaptive": the model decides; here, as the server is set up (--reasoning-budget).
    type: Literal["enabled", "disabled", "adaptive"]
    budget_tokens: int | None = Field(None, ge=1, le=1 << 20)

    @model_validator(mode="after")
    def _budget(self) -> ThinkingIn:
        if self.type == "enabled" and self.budget_tokens is None:
            raise ValueError('thinking of type "enabled" needs budget_tokens')
        return self


class CountTokensRequest(BaseModel):
    """What a prompt is made of: the body of count_tokens, and of a message without its
    generation fields."""

    model_config = ConfigDict(strict=True)

    model: str | None = Field(None, max_length=256)
    system: Text | Annotated[list[TextBlock], Field(max_length=MAX_MESSAGES)] | None = None
    messages: list[MessageIn] = Field(min_length=1, max_length=MAX_MESSAGES)
    tools: list[ToolIn] | None = Field(None, max_length=MAX_TOOLS)
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
    max_tokens: int = Field(ge=1, le=1 << 20)
    stream: bool = False
    stop_sequences: list[str] | None = None
    temperature: float = Field(1.0, ge=0.0, le=1.0)  # Anthropic's range and default
    top_p: float = Field(1.0, ge=0.0, le=1.0)
    top_k: int = Field(0, ge=0)
    metadata: dict[str, Any] | None = None  # user_id: nothing here reads it

    @field_validator("stop_sequences")
    @classmethod
    def _stops(cls, stops: list[str] | None) -> list[str]:
        return check_stops(list(stops or []))
