"""The sampling fields every generation request shares, and the one translator from them to
the engine's SamplingParams: `/execute` and the OpenAI routes accept the same values and mean
the same by them (logit_bias included). Pure translation: nothing here reaches the engine."""

from __future__ import annotations

import math
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from llorch.worker.backend.protocol import MAX_SEED, SamplingParams
from llorch.worker.chat.types import JsonFormat

MAX_STOP_SEQUENCES = 4
MAX_STOP_BYTES = 100
# A logit bias at or below this bans the token (OpenAI's convention for -100); so does false.
BAN = -100.0
MAX_BIAS = 100.0
# Token ids as JSON keys: ASCII digits only, and no more than llama_token (int32) can hold.
_MAX_ID_DIGITS = 10

LogitBias = dict[str, float | Literal[False]]


class LoraChoice(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    name: str = Field(min_length=1, max_length=256)
    scale: float | None = Field(None, ge=-8.0, le=8.0)  # None: the served scale


class SamplingBody(BaseModel):
    """Fields of llama.cpp's sampler chain, as both surfaces accept them. Strict types: `true`
    is not a seed and `"0.5"` is not a temperature."""

    model_config = ConfigDict(strict=True)

    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, ge=0.0, le=1.0)
    top_k: int = Field(0, ge=0)
    min_p: float = Field(0.0, ge=0.0, le=1.0)
    seed: int | None = Field(None, ge=0, le=MAX_SEED)
    presence_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    frequency_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    typical_p: float = Field(1.0, gt=0.0, le=1.0)
    # Token id (as a string: JSON keys are strings) -> added to its logit; -100 or false bans.
    logit_bias: LogitBias | None = Field(None, max_length=1024)
    grammar: str | None = Field(None, min_length=1, max_length=1 << 16)
    # LoRA adapters served with the model, and their scales: none given, every served adapter
    # at its served scale; an empty list, none.
    lora: list[LoraChoice] | None = Field(None, max_length=64)
    # Speculative decoding for this request (null: as the server is set up).
    speculative: bool | None = None

    def lora_pairs(self) -> list[tuple[str, float | None]] | None:
        return None if self.lora is None else [(c.name, c.scale) for c in self.lora]

    @field_validator("logit_bias")
    @classmethod
    def _logit_bias(cls, bias: LogitBias | None) -> LogitBias | None:
        for key, value in (bias or {}).items():
            digits = key.strip()
            if not (digits.isascii() and digits.isdigit() and len(digits) <= _MAX_ID_DIGITS):
                raise ValueError(f"logit_bias keys are token ids, got {key[:20]!r}")
            if value is not False and not (-MAX_BIAS <= value <= MAX_BIAS):
                raise ValueError(
                    f"logit_bias of token {digits} is {value}; valid: -100..100 or false"
                )
        return bias

    # What the two surfaces name differently.
    def penalty(self) -> float:
        """The repetition penalty (1: none)."""
        return 1.0

    def json_constraint(self) -> tuple[str, dict[str, Any] | None] | None:
        """(the field that asked, the schema or None for any object) when the output must be
        JSON; None when it need not."""
        return None


def sampling_params(body: SamplingBody) -> SamplingParams:
    """The request's sampler chain. Token ids are checked against the vocabulary, and the
    grammar parsed, by the engine at admission."""
    bias = tuple(
        (int(key), -math.inf if value is False or value <= BAN else float(value))
        for key, value in (body.logit_bias or {}).items()
    )
    return SamplingParams(
        temperature=body.temperature,
        top_k=body.top_k,
        top_p=body.top_p,
        min_p=body.min_p,
        repetition_penalty=body.penalty(),
        seed=body.seed,
        presence_penalty=body.presence_penalty,
        frequency_penalty=body.frequency_penalty,
        typical_p=body.typical_p,
        logit_bias=bias,
        grammar=body.grammar,
    )


def json_format(body: SamplingBody) -> JsonFormat | None:
    constraint = body.json_constraint()
    return None if constraint is None else JsonFormat(constraint[1], constraint[0])


def check_stops(stops: list[str]) -> list[str]:
    if len(stops) > MAX_STOP_SEQUENCES:
        raise ValueError(f"at most {MAX_STOP_SEQUENCES} stop sequences are allowed")
    for s in stops:
        if not s:
            raise ValueError("stop sequences must be non-empty")
        if len(s.encode()) > MAX_STOP_BYTES:
            raise ValueError(
                f"stop sequence {s[:20]!r}... is {len(s.encode())} bytes; "
                f"at most {MAX_STOP_BYTES} are allowed"
            )
    return stops
