"""schemathesis' hooks for schemathesis.toml here (test_fuzz.py): positive_data_acceptance,
excusing only the refusals that the loaded model (or llama.cpp's parsers) judge, or that hang on
other items of the request in ways JSON Schema cannot state. The published schema says each in
the field's description; every other check still runs on such a response."""

from __future__ import annotations

import json
import re
from typing import Any

import schemathesis
from schemathesis.checks import positive_data_acceptance

# What a 400 says (its field, then its message) when the refusal is one of these.
MODEL_JUDGED = {
    # n_vocab: token ids in tokens, prompt, input and logit_bias.
    "a token id past the vocabulary": r"(out of|not in) the vocabulary",
    # n_ctx: the prompt and the tokens to generate.
    "a request past the context": r"exceeds the context|the context holds \d+|embeds at most \d+",
    # "" tokenizes to nothing with a model that adds no BOS token (the fake adds none).
    "a text prompt of no tokens": r"the prompt is empty \(it has no tokens\)",
    "another embedding size": r"embeddings have \d+ dimensions",
    "a LoRA adapter not served with the model": r"no LoRA adapter .* is served",
    # llama.cpp's GBNF parser, and the JSON Schema → grammar converter.
    "a grammar that does not parse": r"^grammar .*grammar",
    "a JSON schema the converter cannot take": (
        r"^(json_schema|response_format|text\.format|tools\[\d+\]\S*\.(parameters|input_schema))"
        r" .*schema"
    ),
    # Tool results answer earlier calls; a named tool_choice names a tool; names differ.
    "a result that answers no call": r"answers no earlier",
    "a tool_choice naming no tool": r"which is not in tools",
    "two tools of one name": r"repeats the function name",
    "an Anthropic conversation not ending with the user's turn": r"last message must be the user's",
    "arguments that are not a JSON object": r"arguments (is not JSON|must be a JSON object)",
    # What kind of model is served: a projector for images or audio, a reranker, prompts.
    "media for a model served without a projector": r"takes no (images|audio); serve it with",
    "documents for a model that is not a reranker": r"is not a reranker",
    "a prompt name the model does not declare": r"is not one of \S+'s prompts",
}
JUDGED = re.compile("|".join(f"(?:{pattern})" for pattern in MODEL_JUDGED.values()))


def refusal(content: bytes) -> str:
    """A 400's field and message, whichever surface's shape it came in."""
    try:
        body: Any = json.loads(content)
    except ValueError:
        return ""
    if not isinstance(body, dict):
        return ""
    if "errors" in body:  # the worker contract's
        first = body["errors"][0]
        return f"{first.get('field') or ''} {first.get('message', '')}"
    error = body.get("error") or {}
    if body.get("type") == "error":  # Anthropic's: the field, when one is, leads the message
        return str(error.get("message", "")).replace(": ", " ", 1)
    return f"{error.get('param') or ''} {error.get('message', '')}"  # OpenAI's


def judged_by_the_model(status: int, content: bytes) -> bool:
    return status == 400 and JUDGED.search(refusal(content)) is not None


@schemathesis.check
def positive_data_acceptance_unless_judged_by_the_model(
    ctx: Any, response: Any, case: Any
) -> bool | None:
    if judged_by_the_model(response.status_code, response.content):
        return None
    return positive_data_acceptance(ctx, response, case)
