"""Request bodies of the worker contract and their validation.

Validation collects every problem at once (pydantic does), and each becomes one entry of
`{"errors": [{field, constraint, message, value}]}`.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Annotated, Any

from fastapi.exceptions import RequestValidationError
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    model_validator,
)

from llorch.worker.http.body import quote
from llorch.worker.http.openapi import not_both, rules
from llorch.worker.http.sampling import IN_CONTEXT, IN_VOCABULARY, SamplingBody, Stops


class ExecuteRequest(SamplingBody):
    """The worker contract's /execute body: strict types, no unknown fields."""

    model_config = ConfigDict(
        extra="forbid", strict=True, json_schema_extra=rules(not_both("grammar", "json_schema"))
    )

    job_id: str = Field(min_length=1, max_length=256)
    model: str | None = Field(None, min_length=1, max_length=256)  # served ones only
    prompt: str = Field(min_length=1, max_length=32768, description=IN_CONTEXT)
    max_tokens: int = Field(ge=1, le=1 << 20, description=IN_CONTEXT)
    # llama.cpp divides positive logits by the penalty: 0 is not a valid value there.
    repetition_penalty: float = Field(1.0, gt=0.0, le=2.0)
    stop: Stops = Field(default_factory=list)
    # A deadline for the whole job, queueing included; None waits as long as it takes.
    timeout_ms: int | None = Field(None, ge=1, le=86_400_000)
    json_schema: dict[str, Any] | None = Field(
        None,
        description="A JSON Schema the output must match, made into a grammar: a schema the "
        "converter cannot make into one (an unknown type, a $ref it cannot resolve) is "
        "refused with a 400.",
    )
    # Each token event carries the token's log-probability and this many alternatives.
    top_logprobs: int | None = Field(None, ge=0, le=20)
    images: list[Annotated[str, Field(min_length=1)]] | None = Field(
        None,
        max_length=1024,
        description="Images (base64 PNG, JPEG, WebP, GIF or BMP), one for each <__media__> "
        "marker in the prompt, in order; the model needs its projector (--mmproj). A corrupt, "
        "truncated or unread image, more than --max-media-per-request or more pixels than "
        "--max-image-pixels is a 400 naming it.",
    )
    audio: list[Annotated[str, Field(min_length=1)]] | None = Field(
        None,
        max_length=1024,
        description="Audio clips (base64 WAV, MP3 or FLAC), for the <__media__> markers after "
        "the images', in order; the model's projector must read audio. A corrupt, truncated "
        "or unread clip, one longer than --max-audio-seconds, or more media parts than "
        "--max-media-per-request is a 400 naming it.",
    )

    @model_validator(mode="after")
    def _one_constraint(self) -> ExecuteRequest:
        if self.grammar is not None and self.json_schema is not None:
            raise ValueError("give either grammar or json_schema, not both")
        return self

    def penalty(self) -> float:
        return self.repetition_penalty

    def json_constraint(self) -> tuple[str, dict[str, Any] | None] | None:
        return None if self.json_schema is None else ("json_schema", self.json_schema)


# pydantic error type -> the constraint we name in the error entry.
_CONSTRAINTS = {
    "missing": "required",
    "extra_forbidden": "unknown field",
    "string_too_short": "min_length",
    "string_too_long": "max_length",
    "too_short": "min_items",
    "too_long": "max_items",
    "greater_than_equal": "ge",
    "greater_than": "gt",
    "less_than_equal": "le",
    "less_than": "lt",
    "value_error": "value",
}


def _constraint(error: Any) -> str:
    kind = error["type"]
    ctx = error.get("ctx") or {}
    name = _CONSTRAINTS.get(kind, kind)
    if kind in ("too_long", "too_short"):
        return f"{name} {ctx.get('max_length', ctx.get('min_length'))}"
    for key in ("ge", "gt", "le", "lt", "min_length", "max_length"):
        if key in ctx:
            return f"{name} {ctx[key]}" if name in ("ge", "gt", "le", "lt") else f"{key} {ctx[key]}"
    if kind.endswith("_type") or kind.endswith("_parsing"):
        return f"type {kind.removesuffix('_type').removesuffix('_parsing')}"
    return name


_FIELD = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def field_path(loc: Sequence[Any]) -> str:
    """The request field of a pydantic error location, without FastAPI's `body` prefix and
    pydantic's names of union members (`prompt.constrained-str` → `prompt`)."""
    return ".".join(
        str(part)
        for part in loc
        if isinstance(part, int) or (part != "body" and _FIELD.match(part))
    )


def validation_errors(exc: ValidationError | RequestValidationError) -> list[dict[str, Any]]:
    errors = []
    for error in exc.errors():
        loc = field_path(error["loc"])
        entry: dict[str, Any] = {
            "field": loc or None,
            "constraint": _constraint(error),
            "message": f"{loc}: {error['msg']}" if loc else error["msg"],
        }
        if error["type"] != "missing":
            entry["value"] = quote(error.get("input"))
        errors.append(entry)
    return errors


class TokenizeRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    content: str = Field(max_length=1 << 20)
    add_special: bool = True
    model: str | None = Field(None, min_length=1, max_length=256)


class DetokenizeRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    tokens: list[Annotated[int, Field(ge=0)]] = Field(
        max_length=1 << 20, description="Token ids. " + IN_VOCABULARY
    )
    model: str | None = Field(None, min_length=1, max_length=256)
