"""The sampling fields every generation request shares, and the one translator from them to
the engine's SamplingParams: `/execute` and the OpenAI routes accept the same values and mean
the same by them (logit_bias included). Pure translation: nothing here reaches the engine."""

from __future__ import annotations

import math
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, WithJsonSchema

from llorch.worker.backend.protocol import MAX_SEED, SamplingParams
from llorch.worker.chat.types import JsonFormat
from llorch.worker.http.body import quote

INT32_MAX = (1 << 31) - 1
MAX_STOP_SEQUENCES = 4
MAX_STOP_CHARS = 100
# A logit bias at or below this bans the token (OpenAI's convention for -100); so does false.
BAN = -100.0
MAX_BIAS = 100.0
MAX_BIASED_TOKENS = 1024

# A stop sequence, and the stop sequences of a request: what the schema says is the whole rule.
StopText = Annotated[str, Field(min_length=1, max_length=MAX_STOP_CHARS)]
Stops = Annotated[list[StopText], Field(max_length=MAX_STOP_SEQUENCES)]
# Token ids as JSON keys: ASCII digits only, and no more than llama_token (int32) can hold.
TOKEN_KEY = r"^[0-9]{1,10}$"


def _bias(value: float | bool) -> float | bool:
    if value is True or (value is not False and not -MAX_BIAS <= value <= MAX_BIAS):
        raise ValueError(
            f"a logit bias is a number in -100..100, or false (a ban); got {quote(value)}"
        )
    return value


# A number first: `0` is a bias of 0, not `false` (which bans the token).
Bias = Annotated[float | bool, Field(union_mode="left_to_right"), AfterValidator(_bias)]
# The published schema is written out: pydantic would publish the pattern on the keys as
# `patternProperties`, which leaves other keys free, where they are refused (`propertyNames`).
LogitBias = Annotated[
    dict[Annotated[str, Field(pattern=TOKEN_KEY)], Bias],
    Field(max_length=MAX_BIASED_TOKENS),
    WithJsonSchema(
        {
            "type": "object",
            "propertyNames": {"pattern": TOKEN_KEY},
            "additionalProperties": {
                "anyOf": [
                    {"type": "number", "minimum": -MAX_BIAS, "maximum": MAX_BIAS},
                    {"const": False},
                ]
            },
            "maxProperties": MAX_BIASED_TOKENS,
        }
    ),
]
# What only the loaded model can judge, said where the schema cannot say it.
IN_CONTEXT = (
    "The prompt and the tokens to generate must also fit the loaded model's context (n_ctx, "
    "in GET /health's model), which only the model knows: a request past it is refused with "
    "a 400."
)
IN_VOCABULARY = (
    "Each token id must also be below the loaded model's vocabulary size (n_vocab, in GET "
    "/health's model), which only the model knows: an id past it is refused with a 400."
)


class StrictModel(BaseModel):
    """A part of a request body, as strict as the bodies themselves: pydantic's config does not
    carry over to nested models, and without it `0` would pass for `false`."""

    model_config = ConfigDict(strict=True)


class LoraChoice(StrictModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=256)
    scale: float | None = Field(None, ge=-8.0, le=8.0)  # None: the served scale


class SamplingBody(BaseModel):
    """Fields of llama.cpp's sampler chain, as both surfaces accept them. Strict types: `true`
    is not a seed and `"0.5"` is not a temperature."""

    model_config = ConfigDict(strict=True)

    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, ge=0.0, le=1.0)
    top_k: int = Field(0, ge=0, le=INT32_MAX)  # llama.cpp's top_k is an int32
    min_p: float = Field(0.0, ge=0.0, le=1.0)
    seed: int | None = Field(None, ge=0, le=MAX_SEED)
    presence_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    frequency_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    typical_p: float = Field(1.0, gt=0.0, le=1.0)
    # Token id (as a string: JSON keys are strings) -> added to its logit; -100 or false bans.
    logit_bias: LogitBias | None = Field(
        None,
        description="Token id (a string of digits) → added to its logit; -100 or false bans "
        "the token. " + IN_VOCABULARY,
    )
    grammar: str | None = Field(
        None,
        min_length=1,
        max_length=1 << 16,
        description="A GBNF grammar the output must match, with a `root` rule; llama.cpp's "
        "grammar parser judges it: one that does not parse is refused with a 400.",
    )
    # LoRA adapters served with the model, and their scales: none given, every served adapter
    # at its served scale; an empty list, none.
    lora: list[LoraChoice] | None = Field(
        None,
        max_length=64,
        description="LoRA adapters and their scales: each must be one served with the model "
        "(GET /lora-adapters), which only the loaded model knows; another is refused with a 400.",
    )
    # Speculative decoding for this request (null: as the server is set up).
    speculative: bool | None = None

    def lora_pairs(self) -> list[tuple[str, float | None]] | None:
        return None if self.lora is None else [(c.name, c.scale) for c in self.lora]

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


def stop_list(stop: str | list[str] | None) -> list[str]:
    """One stop sequence or several, as a list."""
    return [stop] if isinstance(stop, str) else list(stop or [])
