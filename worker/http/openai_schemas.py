"""Request bodies of the OpenAI-compatible routes (/v1/completions, /v1/chat/completions).

Unknown fields are ignored, as OpenAI-compatible servers do (clients send `user`, `store`, ...),
but fields that would change the answer in a way the worker cannot honour (best_of, the legacy
`functions`, audio, ...) are refused with a 400 rather than silently dropped.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import (
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

from llorch.worker.backend.protocol import FinishEvent
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
from llorch.worker.http.sampling import (
    IN_CONTEXT,
    IN_VOCABULARY,
    SamplingBody,
    Stops,
    StopText,
    StrictModel,
    stop_list,
)

# Text limits: a prompt, a message and all messages together. A request that long is far past
# any context this worker serves; the limit keeps tokenizing it from holding the CPU.
MAX_TEXT_CHARS = 1 << 18
MAX_MESSAGES = 1024
MAX_PROMPT_TOKENS = 1 << 18
MAX_TOP_LOGPROBS = 20  # OpenAI's bound
MAX_CHOICES = 16
COMPLETION_MAX_TOKENS = 16  # OpenAI's default max_tokens for /v1/completions
MAX_TOOLS = 512
MAX_NAME_CHARS = 256
Text = Annotated[str, Field(max_length=MAX_TEXT_CHARS)]
# An image part's URL: a data: URI is as long as the image (the body limit bounds it first).
MAX_IMAGE_URL_CHARS = 1 << 30
CONTENT_PART_TYPES = ("text", "image_url", "input_audio")
TokenIds = Annotated[
    list[Annotated[int, Field(ge=0)]],
    Field(min_length=1, max_length=MAX_PROMPT_TOKENS, description="Token ids. " + IN_VOCABULARY),
]

# Fields whose non-default values ask for something the worker does not do.
_UNSUPPORTED_DEFAULTS: dict[str, Any] = {
    "best_of": (None, 1),
    # Declared on chat requests (so never extra there): refused on completions.
    "tools": (None, []),
    "tool_choice": (None, "none"),
    "functions": (None, []),
    "function_call": (None, "none"),
    "audio": (None,),
    "modalities": (None, ["text"]),
    "prediction": (None,),
}


JSON_FORMATS = ["json_object", "json_schema"]


class StreamOptions(StrictModel):
    include_usage: bool = False


class JsonSchemaFormat(StrictModel):
    name: str | None = None
    schema_: dict[str, Any] = Field(
        default_factory=dict,
        alias="schema",
        description="A JSON Schema the output must match, made into a grammar: a schema the "
        "converter cannot make into one (an unknown type, a $ref it cannot resolve) is "
        "refused with a 400.",
    )
    strict: bool | None = None


class ResponseFormat(StrictModel):
    model_config = ConfigDict(
        json_schema_extra=rules(when(equals("type", "json_schema"), given("json_schema")))
    )

    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None

    @model_validator(mode="after")
    def _schema_given(self) -> ResponseFormat:
        if self.type == "json_schema" and self.json_schema is None:
            raise ValueError('response_format of type "json_schema" needs a json_schema object')
        return self


_JSON_ANSWER = {
    "required": ["response_format"],
    "properties": {
        "response_format": {"type": "object", "properties": {"type": {"enum": JSON_FORMATS}}}
    },
}
# A grammar and a JSON response_format both constrain the output: one at a time.
_ONE_CONSTRAINT = {"not": {"allOf": [given("grammar"), _JSON_ANSWER]}}


class SamplingFields(SamplingBody):
    """The fields both routes share: sampling, stops, streaming."""

    model_config = ConfigDict(
        extra="allow",
        populate_by_name=True,
        strict=True,
        json_schema_extra=rules(_ONE_CONSTRAINT),
    )

    model: str | None = Field(None, max_length=256)  # informational: one model is served
    # Choices: n sequences decoded together, the prompt read once and its cache copied.
    n: int = Field(1, ge=1, le=MAX_CHOICES)
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: StopText | Stops | None = None
    # llama.cpp divides positive logits by the penalty, so 0 is refused.
    repeat_penalty: float | None = Field(None, gt=0.0, le=2.0)
    repetition_penalty: float | None = Field(None, gt=0.0, le=2.0)
    response_format: ResponseFormat | None = None

    @field_validator("stop")
    @classmethod
    def _stops(cls, stop: str | list[str] | None) -> list[str]:
        return stop_list(stop)

    @model_validator(mode="after")
    def _supported(self) -> SamplingFields:
        extra = self.model_extra or {}
        for name, defaults in _UNSUPPORTED_DEFAULTS.items():
            if name in extra and extra[name] not in defaults:
                raise ValueError(f"{name} is not supported by this server")
        json_format = self.response_format is not None and self.response_format.type != "text"
        if self.grammar is not None and json_format:
            raise ValueError("give either grammar or a JSON response_format, not both")
        return self

    @property
    def stops(self) -> tuple[str, ...]:
        return tuple(self.stop or ())  # a list once validated

    def penalty(self) -> float:
        if self.repetition_penalty is not None:
            return self.repetition_penalty
        return self.repeat_penalty if self.repeat_penalty is not None else 1.0

    def json_constraint(self) -> tuple[str, dict[str, Any] | None] | None:
        fmt = self.response_format
        if fmt is None or fmt.type == "text":
            return None
        if fmt.type == "json_schema" and fmt.json_schema is not None:
            return "response_format", fmt.json_schema.schema_
        return "response_format", None

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


class CompletionRequest(SamplingFields):
    model_config = ConfigDict(
        json_schema_extra=rules(
            _ONE_CONSTRAINT,
            # A suffix makes a fill-in-the-middle prompt: of text, and not echoed.
            when(
                {
                    "required": ["suffix"],
                    "properties": {"suffix": {"type": "string", "minLength": 1}},
                },
                {
                    "properties": {
                        "prompt": {
                            "anyOf": [
                                {"type": "string"},
                                {"type": "array", "items": {"type": "string"}},
                            ]
                        },
                        "echo": {"const": False},
                    }
                },
            ),
            when(equals("max_tokens", 0), equals("echo", True)),
        )
    )

    # A string, a list of one string, token ids, or a list of one list of token ids.
    prompt: (
        Text
        | Annotated[list[Text], Field(min_length=1, max_length=1)]
        | TokenIds
        | Annotated[list[TokenIds], Field(min_length=1, max_length=1)]
    ) = Field(
        description="Text, or token ids, or a list of one of either. Text that makes no "
        'tokens is refused with a 400: "" with a model that adds no BOS token, which only '
        "the loaded model knows. " + IN_VOCABULARY + " " + IN_CONTEXT
    )
    # The prompt comes back before the answer (with its log-probabilities when asked): with
    # max_tokens 0, only the prompt is scored, as lm-evaluation-harness asks for likelihoods.
    echo: bool = False
    # OpenAI's default for completions; 0 (only with echo) scores the prompt alone.
    max_tokens: int | None = Field(COMPLETION_MAX_TOKENS, ge=0, le=1 << 20, description=IN_CONTEXT)
    # The legacy shape: log-probabilities of each token and of this many alternatives.
    logprobs: int | None = Field(None, ge=0, le=MAX_TOP_LOGPROBS)
    # Text after the completion: the prompt and the suffix become the model's fill-in-the-
    # middle prompt (worker/fim.py, as llama-server's /infill builds it); "" is no suffix.
    suffix: Text | None = None

    @model_validator(mode="after")
    def _suffix_needs_text(self) -> CompletionRequest:
        if self.suffix and not isinstance(self.prompt, str):
            raise ValueError("suffix needs the prompt as text, not token ids")
        if self.suffix and self.echo:
            raise ValueError("echo is not supported with suffix")
        return self

    @field_validator("max_tokens")
    @classmethod
    def _something_to_do(cls, max_tokens: int | None, info: ValidationInfo) -> int | None:
        if max_tokens == 0 and not info.data.get("echo", False):
            raise ValueError("max_tokens 0 asks for nothing; it is only valid with echo")
        return max_tokens

    @field_validator("prompt")
    @classmethod
    def _one_prompt(cls, prompt: Any) -> str | list[int]:
        if isinstance(prompt, list) and isinstance(prompt[0], str | list):
            return prompt[0]  # the list of one prompt
        return prompt

    @property
    def one_prompt(self) -> str | list[int]:
        """The prompt once validated: text, or token ids."""
        return self.prompt  # type: ignore[return-value]


class ImageUrlIn(StrictModel):
    url: str = Field(
        min_length=1,
        max_length=MAX_IMAGE_URL_CHARS,
        description="A data: URI of a PNG, JPEG, WebP, GIF or BMP image (base64), or an "
        "http(s) URL of a host in --allowed-media-hosts. A model served without a projector "
        "(--mmproj), a corrupt, truncated or unread format, more images than "
        "--max-media-per-request or more pixels than --max-image-pixels is a 400 naming the "
        "part.",
    )
    detail: Literal["auto", "low", "high"] | None = None  # accepted; the projector decides


class InputAudioIn(StrictModel):
    data: str = Field(
        min_length=1,
        max_length=MAX_IMAGE_URL_CHARS,
        description="The clip, base64. A model whose projector reads no audio, a corrupt, "
        "truncated or unread clip, one longer than --max-audio-seconds, or more media parts "
        "than --max-media-per-request is a 400 naming the part.",
    )
    format: Literal["wav", "mp3"]


class ChatContentPart(StrictModel):
    """Text, image and audio parts are served; a part of another type (a file) is refused
    with a 400 that names its type."""

    model_config = ConfigDict(
        json_schema_extra=rules(
            {"required": ["type"], "properties": {"type": {"enum": list(CONTENT_PART_TYPES)}}},
            when(equals("type", "text"), given("text")),
            when(equals("type", "image_url"), given("image_url")),
            when(equals("type", "input_audio"), given("input_audio")),
        )
    )

    type: str = Field(max_length=64)
    text: str | None = None
    image_url: ImageUrlIn | None = None
    input_audio: InputAudioIn | None = None


class FunctionCallIn(StrictModel):
    name: str = Field(min_length=1, max_length=MAX_NAME_CHARS)
    arguments: str = Field(max_length=MAX_TEXT_CHARS)  # JSON text of an object


class ToolCallIn(StrictModel):
    id: str = Field(min_length=1, max_length=MAX_NAME_CHARS)
    type: Literal["function"] = "function"
    function: FunctionCallIn


class ChatMessageIn(StrictModel):
    model_config = ConfigDict(
        extra="allow",
        json_schema_extra=rules(
            when(equals("role", "tool"), given("tool_call_id")),
            # Only an assistant makes calls.
            when(
                {"properties": {"role": {"not": {"const": "assistant"}}}},
                {"properties": {"tool_calls": {"anyOf": [{"type": "null"}, {"maxItems": 0}]}}},
            ),
        ),
    )

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: Text | list[ChatContentPart] | None = Field(None)
    tool_calls: list[ToolCallIn] | None = Field(None, max_length=MAX_TOOLS)
    tool_call_id: str | None = Field(
        None,
        max_length=MAX_NAME_CHARS,
        description="The id of the call a tool result answers: an assistant message before "
        "this one must have made it (its tool_calls), else the request is refused with a 400.",
    )
    name: str | None = Field(None, max_length=MAX_NAME_CHARS)
    # An earlier turn's thinking, given back to templates that show it (llama.cpp's name).
    reasoning_content: Text | None = None

    @field_validator("content")
    @classmethod
    def _parts(cls, content: str | list[ChatContentPart] | None) -> str | list[ChatContentPart]:
        """Text, or the parts in order when an image is among them."""
        if content is None:
            return ""
        if isinstance(content, str):
            return content
        for part in content:
            if part.type not in CONTENT_PART_TYPES:
                raise ValueError(
                    f"content parts of type {' and '.join(CONTENT_PART_TYPES)} are served, "
                    f"got {part.type!r}"
                )
            if part.type == "text" and part.text is None:
                raise ValueError("a text content part needs its text")
            if part.type == "image_url" and part.image_url is None:
                raise ValueError("an image_url content part needs its image_url")
            if part.type == "input_audio" and part.input_audio is None:
                raise ValueError("an input_audio content part needs its input_audio")
        text = "".join(part.text or "" for part in content)
        if len(text) > MAX_TEXT_CHARS:
            raise ValueError(f"a message is at most {MAX_TEXT_CHARS} characters")
        return content if any(p.type != "text" for p in content) else text

    @property
    def text(self) -> str:
        """The message's text (its image parts left out)."""
        if isinstance(self.content, list):
            return "".join(part.text or "" for part in self.content)
        return str(self.content or "")


class FunctionIn(StrictModel):
    model_config = ConfigDict(
        json_schema_extra=rules({"properties": {"parameters": OBJECT_PARAMETERS}})
    )

    # OpenAI's rule for function names (letters, digits, _ and -, at most 64), with . and :
    # too, which MCP tool names use.
    name: str = Field(pattern=r"^[A-Za-z0-9_.:-]{1,64}$")
    description: str | None = Field(None, max_length=MAX_TEXT_CHARS)
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class ToolIn(StrictModel):
    type: Literal["function"]
    function: FunctionIn


class NamedFunction(StrictModel):
    name: str = Field(min_length=1, max_length=MAX_NAME_CHARS)


class NamedToolChoice(StrictModel):
    type: Literal["function"]
    function: NamedFunction


class ChatCompletionRequest(SamplingFields):
    model_config = ConfigDict(
        json_schema_extra=rules(
            _ONE_CONSTRAINT,
            when(given("top_logprobs"), equals("logprobs", True)),
            a_tool_to_call({"anyOf": [{"const": "required"}, {"type": "object"}]}),
            calls_possible(_JSON_ANSWER),
        )
    )

    messages: list[ChatMessageIn] = Field(
        min_length=1, max_length=MAX_MESSAGES, description=IN_CONTEXT
    )
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=MAX_TOP_LOGPROBS)
    max_tokens: int | None = Field(None, ge=1, le=1 << 20, description=IN_CONTEXT)
    max_completion_tokens: int | None = Field(None, ge=1, le=1 << 20, description=IN_CONTEXT)
    tools: list[ToolIn] | None = Field(None, max_length=MAX_TOOLS, description=TOOLS)
    tool_choice: Literal["auto", "none", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool = True
    # Thinking: "auto" separates it into reasoning_content, "none" leaves it in the content
    # ("deepseek" is llama.cpp's name for auto). Null: as the server is set up.
    reasoning_format: Literal["auto", "none", "deepseek"] | None = None
    reasoning_effort: Literal["minimal", "low", "medium", "high"] | None = None
    # Thinking tokens at most (0: no thinking, -1: unbounded); null: as the server is set up.
    reasoning_budget: int | None = Field(None, ge=-1, le=1 << 20)
    chat_template_kwargs: dict[str, Any] | None = None

    @field_validator("messages")
    @classmethod
    def _total_text(cls, messages: list[ChatMessageIn]) -> list[ChatMessageIn]:
        total = sum(len(m.text) for m in messages)
        if total > MAX_TEXT_CHARS:
            raise ValueError(
                f"the messages hold {total} characters; at most {MAX_TEXT_CHARS} in all"
            )
        return messages

    @model_validator(mode="after")
    def _top_needs_logprobs(self) -> ChatCompletionRequest:
        if self.top_logprobs is not None and not self.logprobs:
            raise ValueError("top_logprobs needs logprobs: true")
        return self

    @property
    def logprob_alternatives(self) -> int | None:
        return (self.top_logprobs or 0) if self.logprobs else None

    @property
    def token_limit(self) -> int | None:
        """max_completion_tokens (the current name) wins over max_tokens (the old one)."""
        if self.max_completion_tokens is not None:
            return self.max_completion_tokens
        return self.max_tokens


# -- responses ------------------------------------------------------------------------------


class Reply:
    """The response shapes of one request: the whole answer, or its stream of chunks."""

    def __init__(self, prefix: str, model: str, fingerprint: str, *, chat: bool) -> None:
        self.id = f"{prefix}-{uuid.uuid4().hex}"
        self.model = model
        self.fingerprint = fingerprint
        self.chat = chat
        self.created = int(time.time())

    def head(self, obj: str) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": obj,
            "created": self.created,
            "model": self.model,
            "system_fingerprint": self.fingerprint,
        }

    @staticmethod
    def usage(
        finishes: Sequence[FinishEvent], reasoning_tokens: Sequence[int] = ()
    ) -> dict[str, Any]:
        """One prompt (read once, shared by the choices), and every choice's tokens."""
        prompt = finishes[0].prompt_tokens if finishes else 0
        completion = sum(f.tokens_out for f in finishes)
        usage: dict[str, Any] = {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
            # Prompt tokens found in the KV cache and not read again.
            "prompt_tokens_details": {
                "cached_tokens": finishes[0].prompt_cached if finishes else 0
            },
        }
        if any(reasoning_tokens):
            usage["completion_tokens_details"] = {"reasoning_tokens": sum(reasoning_tokens)}
        return usage

    def whole(self, choices: Sequence[Choice], finishes: Sequence[FinishEvent]) -> dict[str, Any]:
        body = self.head("chat.completion" if self.chat else "text_completion")
        shaped = []
        for index, choice in enumerate(choices):
            content: dict[str, Any] = (
                {"message": {"role": "assistant", "content": choice.text}}
                if self.chat
                else {"text": choice.text}
            )
            shaped.append(
                {
                    "index": index,
                    **content,
                    "logprobs": choice.logprobs,
                    "finish_reason": choice.finish_reason,
                }
            )
        return body | {"choices": shaped, "usage": self.usage(finishes)}

    def chunk(
        self,
        text: str | None,
        finish: str | None = None,
        *,
        role: bool = False,
        logprobs: dict[str, Any] | None = None,
        index: int = 0,
    ) -> dict[str, Any]:
        """One streamed piece of choice `index`: `text` (None in the closing chunk), or the
        chat's opening chunk that names the role."""
        if self.chat:
            delta: dict[str, Any] = {"role": "assistant", "content": ""} if role else {}
            if text is not None:
                delta["content"] = text
            choice: dict[str, Any] = {"index": index, "delta": delta}
            body = self.head("chat.completion.chunk")
        else:
            choice = {"index": index, "text": text or ""}
            body = self.head("text_completion")
        choice |= {"logprobs": logprobs, "finish_reason": finish}
        return body | {"choices": [choice]}

    def usage_chunk(self, finishes: Sequence[FinishEvent]) -> dict[str, Any]:
        """The last chunk when stream_options.include_usage is set: no choices, the usage."""
        obj = "chat.completion.chunk" if self.chat else "text_completion"
        return self.head(obj) | {"choices": [], "usage": self.usage(finishes)}


@dataclass(frozen=True)
class Choice:
    text: str
    finish_reason: str
    logprobs: dict[str, Any] | None
