"""The body of `POST /infill`, in llama-server's shape (tools/server/server-context.cpp
post_infill): what editor plugins (llama.vscode, llama.vim, Continue, Tabby) send.

Fields llama-server takes that would not change what this worker answers are ignored, as
llama-server ignores fields it does not know: cache_prompt (prompts are always cached),
t_max_prompt_ms, t_max_predict_ms, samplers, id_slot, n_indent (not applied: say so in the
README), so that a plugin's request works unchanged.
"""

from __future__ import annotations

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, field_validator

from llorch.worker.http.openai_schemas import MAX_TEXT_CHARS
from llorch.worker.http.sampling import IN_CONTEXT, SamplingBody, Stops

MAX_EXTRA_CHUNKS = 1024


class ExtraChunk(BaseModel):
    """Another file's text, given as context (llama-server: {"filename", "text"})."""

    model_config = ConfigDict(strict=True)

    text: str = Field(max_length=MAX_TEXT_CHARS)
    filename: str = Field("tmp", max_length=4096)  # llama-server's default name


class InfillRequest(SamplingBody):
    model_config = ConfigDict(extra="ignore", strict=True, populate_by_name=True)

    model: str | None = Field(None, max_length=256)
    input_prefix: str = Field(max_length=MAX_TEXT_CHARS)
    input_suffix: str = Field(max_length=MAX_TEXT_CHARS)
    input_extra: list[ExtraChunk] = Field(default_factory=list, max_length=MAX_EXTRA_CHUNKS)
    # Text after the prefix (the cursor's line so far): special tokens in it are parsed.
    prompt: str = Field("", max_length=MAX_TEXT_CHARS)
    # Tokens to generate; -1: until the model ends the middle (llama-server's default); 0:
    # nothing (a plugin warming the cache: answered at once, without the model).
    n_predict: int = Field(
        -1,
        ge=-1,
        le=1 << 20,
        validation_alias=AliasChoices("n_predict", "max_tokens"),
        description="Tokens to generate; -1: until the model ends the middle. " + IN_CONTEXT,
    )
    stream: bool = False
    stop: Stops = Field(default_factory=list)
    # llama.cpp divides positive logits by the penalty: 0 is not a valid value there.
    repeat_penalty: float = Field(1.0, gt=0.0, le=2.0)
    return_tokens: bool = False  # the generated token ids in `tokens`
    # Only these fields of the answer, by path ("timings/prompt_n"), as llama-server does.
    response_fields: list[str] | None = Field(None, max_length=64)

    @field_validator("input_extra")
    @classmethod
    def _extra_text(cls, chunks: list[ExtraChunk]) -> list[ExtraChunk]:
        total = sum(len(c.text) for c in chunks)
        if total > MAX_TEXT_CHARS:
            raise ValueError(f"input_extra holds {total} characters; at most {MAX_TEXT_CHARS}")
        return chunks

    def penalty(self) -> float:
        return self.repeat_penalty
