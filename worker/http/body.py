"""Request bodies as the worker accepts them: strict JSON, bounded, and quoted back short.

Python's json module accepts what JSON does not (`NaN`, `Infinity`, lone surrogates such as
`"\\ud800"`, with raw surrogate bytes let through by its `surrogatepass` decoding) and raises
RecursionError on deep nesting; any of these would surface later as a 500 (a string that cannot
be encoded, a float the error echo cannot render). They are refused here with a 400 instead.
"""

from __future__ import annotations

import json
import math
from typing import Any

from llorch.worker.backend.errors import InvalidRequestError

# Deeper than any request needs (a JSON schema a few dozen levels deep is already unusual),
# shallow enough that no recursive walk over the body comes near Python's recursion limit.
MAX_DEPTH = 64
# What an error message or entry quotes of a bad value.
QUOTE_CHARS = 64
# Digits of an integer, at most: as many as the largest finite float has (1.8e308). Python
# refuses to read more than 4300 (a ValueError, which would surface as a 500).
MAX_INT_DIGITS = 309


def _refuse_constant(name: str) -> Any:
    raise InvalidRequestError(
        f"malformed JSON body: {name} is not a JSON number", constraint="JSON"
    )


def _integer(text: str) -> int:
    if len(text.lstrip("-")) > MAX_INT_DIGITS:
        raise InvalidRequestError(
            f"malformed JSON body: a number is out of range (more than {MAX_INT_DIGITS} digits)",
            constraint="JSON",
        )
    return int(text)


def _number(text: str) -> float | int:
    """A JSON number with a fraction or an exponent. JSON has one kind of number, and `2.0`
    is the integer 2 to JSON Schema (its `integer` admits it), so a whole one is read as an
    int, which an integer field takes (a float field takes an int as well)."""
    value = float(text)
    return int(value) if value.is_integer() else value


def parse_json(raw: bytes) -> Any:
    """The body as JSON, refusing what JSON itself does not allow."""
    try:
        value = json.loads(
            raw, parse_float=_number, parse_int=_integer, parse_constant=_refuse_constant
        )
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidRequestError(f"malformed JSON body: {exc}", constraint="JSON") from None
    except RecursionError:
        raise _too_deep() from None
    check_tree(value)
    return value


def _too_deep() -> InvalidRequestError:
    return InvalidRequestError(
        f"the JSON body nests more than {MAX_DEPTH} levels deep", constraint=f"depth <= {MAX_DEPTH}"
    )


def check_tree(value: Any) -> None:
    """Depth, finite numbers and encodable strings, walked without recursion."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            if depth > MAX_DEPTH:
                raise _too_deep()
            for key, child in item.items():
                _check_string(key)
                stack.append((child, depth + 1))
        elif isinstance(item, list):
            if depth > MAX_DEPTH:
                raise _too_deep()
            stack.extend((child, depth + 1) for child in item)
        elif isinstance(item, str):
            _check_string(item)
        elif isinstance(item, float) and not math.isfinite(item):
            # 1e999 parses as infinity without passing through parse_constant.
            raise InvalidRequestError(
                "malformed JSON body: a number is out of range (not finite)", constraint="JSON"
            )


def _check_string(text: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidRequestError(
            f"malformed JSON body: a string holds a lone surrogate ({text[exc.start]!r} at "
            f"character {exc.start}), which is not Unicode text",
            constraint="JSON",
        ) from None


def quote(value: Any) -> Any:
    """A bad value as an error shows it: short strings and scalars as they are; a long string
    as its first characters and its length; containers by their size."""
    if isinstance(value, str):
        if len(value) <= QUOTE_CHARS:
            return value
        return f"{value[:QUOTE_CHARS]}… ({len(value)} characters)"
    if isinstance(value, dict | list | tuple):
        try:
            small = len(json.dumps(value, ensure_ascii=False)) <= 2 * QUOTE_CHARS
        except (TypeError, ValueError):
            small = False
        return value if small else f"<{type(value).__name__} of {len(value)} items>"
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, int) and len(text := str(value)) > QUOTE_CHARS:
        return f"{text[:QUOTE_CHARS]}… ({len(text)} digits)"
    return value
