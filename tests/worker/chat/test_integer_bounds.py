"""Integer bounds of a JSON schema (tool parameters, response_format) hold in the grammar:
llama.cpp's own grammar sampler lets through exactly the integers JSON Schema allows, written
as JSON writes them."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest

from llorch.worker.backend.errors import InvalidRequestError
from llorch.worker.backend.grammar import json_grammar
from llorch.worker.backend.integer_range import LARGEST, integer_range

RANGES = [(1, 7), (0, 0), (-5, -5), (37, 1234), (-25, 129), (-130, -11), (9, 10), (99, 101),
          (0, 10**6), (None, 3), (-3, None)]  # fmt: skip


@pytest.mark.parametrize(("low", "high"), RANGES)
def test_exactly_the_integers_of_the_range(
    grammar_accepts: Callable[..., bool], low: int | None, high: int | None
) -> None:
    gbnf = f"root ::= {integer_range(low, high)}"
    lo, hi = -LARGEST if low is None else low, LARGEST if high is None else high
    edges = {lo, hi, 0, 1, -1, 10, -10, 100, 1000, 999, -999, 10**6, 10**6 + 1}
    near = {n + d for n in edges for d in (-2, -1, 0, 1, 2) if abs(n + d) <= LARGEST}
    for n in sorted(near | set(range(max(lo, -300), min(hi, 300) + 1, 7))):
        assert grammar_accepts(gbnf, str(n)) == (lo <= n <= hi), n
    for text in ("007", "-0", "+1", "01", "1.0", ""):
        assert not grammar_accepts(gbnf, text), text


def test_a_tools_bounded_integer_argument(grammar_accepts: Callable[..., bool]) -> None:
    schema = {
        "type": "object",
        "properties": {
            "days": {"type": "integer", "minimum": 1, "maximum": 7, "description": "ahead"},
            "floor": {"type": "integer", "exclusiveMinimum": -3, "exclusiveMaximum": 40},
            "page": {"type": "integer", "minimum": 1, "exclusiveMinimum": True},  # draft 4
            "count": {"type": "integer"},
        },
        "required": ["days", "floor", "page", "count"],
    }
    gbnf = json_grammar(schema)

    def fits(days: int, floor: int, page: int) -> bool:
        args = {"days": days, "floor": floor, "page": page, "count": -12345}
        return grammar_accepts(gbnf, json.dumps(args))

    assert fits(1, -2, 2) and fits(7, 39, 10**9)
    assert not fits(0, 0, 2) and not fits(8, 0, 2)
    assert not fits(3, -3, 2) and not fits(3, 40, 2)
    assert not fits(3, 0, 1)


def test_bounds_that_allow_no_integer_are_refused() -> None:
    empty = {"type": "integer", "minimum": 5, "maximum": 4.5}
    with pytest.raises(InvalidRequestError, match=r"minimum 5, maximum 4.5"):
        json_grammar({"type": "object", "properties": {"x": empty}})
    with pytest.raises(InvalidRequestError, match="finite number"):
        json_grammar({"type": "integer", "minimum": "1"})


def test_gemma4_calls_keep_the_bounds(grammar_accepts: Callable[..., bool]) -> None:
    # Gemma 4 writes arguments in its own notation (no JSON grammar): its integers too.
    from llorch.worker.chat.formats.gemma4 import FORMAT
    from llorch.worker.chat.types import Tool

    days = {"type": "integer", "minimum": 1, "maximum": 7}
    tool = Tool("f", None, {"type": "object", "properties": {"days": days}, "required": ["days"]})
    gbnf = FORMAT.grammar([tool], parallel=False).gbnf
    for n in (-1, 0, 1, 4, 7, 8, 10, 1000000000000000):
        assert grammar_accepts(gbnf, f"<|tool_call>call:f{{days:{n}}}<tool_call|>") == (
            1 <= n <= 7
        ), n
