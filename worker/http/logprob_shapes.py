"""Log-probabilities in the shapes OpenAI's API gives them: the legacy completions shape
(`tokens`, `token_logprobs`, `top_logprobs`, `text_offset`) and the chat shape (`content`: one
entry per token with its bytes and alternatives)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from llorch.worker.backend.protocol import Scored, TokenLogprob


def _text(token: TokenLogprob) -> str:
    # A piece can end inside a multi-byte character; the chat shape carries the bytes too.
    return token.piece.decode("utf-8", "replace")


def completion_logprobs(scored: Sequence[Scored], offset: int = 0) -> dict[str, Any]:
    """The legacy shape of `scored`, whose text starts at character `offset` of the answer.
    Each `top_logprobs` entry holds the alternatives and the chosen token (OpenAI: "up to
    logprobs + 1 elements"); the first prompt token, which nothing predicts, has nulls."""
    tokens: list[str] = []
    values: list[float | None] = []
    tops: list[dict[str, float | None] | None] = []
    offsets: list[int] = []
    for entry in scored:
        text = _text(entry.token)
        tokens.append(text)
        values.append(entry.token.logprob)
        offsets.append(offset)
        offset += len(text)
        if entry.token.logprob is None:
            tops.append(None)
        else:
            top = {_text(t): t.logprob for t in entry.top}
            top.setdefault(text, entry.token.logprob)
            tops.append(top)
    return {
        "tokens": tokens,
        "token_logprobs": values,
        "top_logprobs": tops,
        "text_offset": offsets,
    }


def chat_logprobs(scored: Sequence[Scored]) -> dict[str, Any]:
    def one(token: TokenLogprob) -> dict[str, Any]:
        return {"token": _text(token), "logprob": token.logprob, "bytes": list(token.piece)}

    content = [one(entry.token) | {"top_logprobs": [one(t) for t in entry.top]} for entry in scored]
    return {"content": content, "refusal": None}
