"""Grammars as the worker accepts them: JSON schemas to GBNF with llama.cpp's own converter,
and bounds on what may reach llama.cpp's grammar code.

llama.cpp parses and runs a grammar by recursion, once per nested group: a grammar nested
32,000 deep, or a JSON schema whose `maxLength` of 20,000 the converter writes as 20,000 nested
groups, overflows the model thread's stack and kills the process (measured on the vended
build: 16,000 levels ran, 32,000 crashed). So nesting and repetition counts are bounded here,
far below that, before anything reaches llama.cpp, and the bad request gets a 400.

llama_cpp is imported when a conversion runs, not when this module is imported: the HTTP layer
must not load llama_cpp just by being imported.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from functools import lru_cache
from typing import Any

from llorch.worker.backend.errors import InvalidRequestError
from llorch.worker.backend.integer_range import integer_range


class SchemaError(InvalidRequestError):
    """A JSON schema the converter cannot turn into a grammar (a client error)."""


# "json_object" asks for any JSON object. The converter's object rule keeps whitespace to one
# optional space, where the generic JSON grammar's whitespace lets a model ramble in newlines.
_ANY_OBJECT: dict[str, Any] = {"type": "object"}


# Bounds: a sixteenth of the depth that crashed, and counts no sensible schema needs.
MAX_NESTING = 1024
MAX_REPEAT = 1024
MAX_SCHEMA_NODES = 4096
# Schema keywords the converter expands into one grammar element per unit.
_COUNTS = ("minLength", "maxLength", "minItems", "maxItems", "minProperties", "maxProperties")
_REPEAT = re.compile(r"\{\s*(\d+)\s*(?:,\s*(\d*)\s*)?\}")


class GrammarError(InvalidRequestError):
    """A grammar llama.cpp must not be given (too deep, too many repetitions) or cannot
    parse."""


def check_gbnf(text: str, param: str = "grammar") -> None:
    """Refuse a GBNF grammar nested deeper than MAX_NESTING groups or with a repetition
    count over MAX_REPEAT. String literals, character classes and comments are skipped."""
    depth = deepest = 0
    outside: list[str] = []  # the grammar without its literals, for the repetition counts
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c in '"[':
            close = '"' if c == '"' else "]"
            i += 1
            while i < n and text[i] != close:
                i += 2 if text[i] == "\\" else 1
        elif c == "#":
            while i < n and text[i] != "\n":
                i += 1
        else:
            outside.append(c)
            if c == "(":
                depth += 1
                deepest = max(deepest, depth)
            elif c == ")":
                depth -= 1
        i += 1
    if deepest > MAX_NESTING:
        raise GrammarError(
            f"the grammar nests {deepest} groups deep; at most {MAX_NESTING} are allowed",
            param=param,
            constraint=f"nesting <= {MAX_NESTING}",
        )
    _check_repeats("".join(outside), param, "the grammar")


def _check_repeats(text: str, param: str, what: str) -> None:
    for match in _REPEAT.finditer(text):
        count = max(int(match.group(1)), int(match.group(2) or 0))
        if count > MAX_REPEAT:
            raise GrammarError(
                f"{what} repeats an element {count} times ({match.group(0)}); at most "
                f"{MAX_REPEAT} are allowed",
                param=param,
                constraint=f"repetition <= {MAX_REPEAT}",
            )


# A group opener that ECMAScript regexes lack ("(?<=", "(?P<", "(?i)", "(?>": only "(?:",
# "(?=" and "(?!" are theirs), not escaped: std::regex throws on it, which through ctypes
# ends the process.
_PYTHON_ONLY_GROUP = re.compile(r"(?<!\\)(?:\\\\)*\(\?(?![:=!])")
MAX_TRIGGERS = 64
MAX_TRIGGER_CHARS = 4096


def check_trigger_patterns(patterns: tuple[str, ...], param: str = "grammar_triggers") -> None:
    """Refuse a lazy grammar's trigger regex that llama.cpp's std::regex (ECMAScript syntax,
    src/llama-grammar.cpp) could throw on while compiling it. Python's parser stands in for
    it, with a check for the groups only Python has: a pattern both accept reaches llama.cpp."""
    if len(patterns) > MAX_TRIGGERS:
        raise GrammarError(f"at most {MAX_TRIGGERS} grammar triggers are allowed", param=param)
    for pattern in patterns:
        if not pattern or len(pattern) > MAX_TRIGGER_CHARS or "\x00" in pattern:
            raise GrammarError(
                f"a grammar trigger is a regex of 1 to {MAX_TRIGGER_CHARS} characters and no NUL",
                param=param,
            )
        try:
            re.compile(pattern)
        except (re.error, RecursionError, OverflowError) as exc:
            raise GrammarError(f"grammar trigger {pattern!r}: {exc}", param=param) from None
        if _PYTHON_ONLY_GROUP.search(pattern):
            raise GrammarError(
                f"grammar trigger {pattern!r}: of the (?...) groups only (?:...), (?=...) and "
                "(?!...) are allowed (ECMAScript regex syntax)",
                param=param,
            )
        _check_repeats(pattern, param, "a grammar trigger")


def check_schema(schema: Any, param: str = "json_schema") -> None:
    """Refuse a JSON schema whose grammar would be too large or too deep: counts (maxLength,
    minItems, ...) and pattern repetitions over MAX_REPEAT, or over MAX_SCHEMA_NODES nodes."""
    stack = [schema]
    nodes = 0
    while stack:
        node = stack.pop()
        nodes += 1
        if nodes > MAX_SCHEMA_NODES:
            raise SchemaError(
                f"the JSON schema has more than {MAX_SCHEMA_NODES} nodes", param=param
            )
        if isinstance(node, dict):
            for key in _COUNTS:
                value = node.get(key)
                if isinstance(value, int | float) and value > MAX_REPEAT:
                    raise SchemaError(
                        f"{key} is {value} in the JSON schema; at most {MAX_REPEAT} is allowed "
                        "(each unit becomes a grammar element)",
                        param=param,
                        constraint=f"{key} <= {MAX_REPEAT}",
                    )
            pattern = node.get("pattern")
            if isinstance(pattern, str):
                _check_repeats(pattern, param, "the schema's pattern")
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)


def json_grammar(schema: dict[str, Any] | None) -> str:
    """The GBNF grammar of documents valid under `schema`; None: any JSON object. The schema
    and the grammar made from it are checked against the bounds above."""
    if schema is not None:
        check_schema(schema)
    try:
        ranges: list[str] = []
        bounded = integer_ranges_marked(schema, ranges) if schema is not None else _ANY_OBJECT
        # Key order is kept: the grammar writes an object's properties in the schema's order.
        text = json.dumps(bounded)
    except RecursionError:
        raise SchemaError("the JSON schema nests too deeply to convert to a grammar") from None
    grammar = _schema_grammar(text) if len(text) > _CACHED_SCHEMA_CHARS else _cached(text)
    return integer_ranges_written(grammar, ranges)


# The same schemas come back with every request of a client (its tools, its response format):
# each is converted once. Longer ones are converted every time, so the cache stays small.
_CACHED_SCHEMA_CHARS = 65536


def _schema_grammar(text: str) -> str:
    from llama_cpp.llama_grammar import json_schema_to_gbnf

    try:
        grammar = str(json_schema_to_gbnf(text))
    except RecursionError:
        raise SchemaError("the JSON schema nests too deeply to convert to a grammar") from None
    except Exception as exc:  # the converter raises bare ValueErrors, KeyErrors, ...
        detail = str(exc) or type(exc).__name__
        raise SchemaError(f"the JSON schema cannot be converted to a grammar: {detail}") from None
    check_gbnf(grammar, param="json_schema")
    return grammar


_cached = lru_cache(maxsize=256)(_schema_grammar)


# Integers bounded by minimum / maximum: the converter ignores the bounds, so each such node
# goes to it as a constant string (a marker) whose literal is then replaced by the range's rule.
_NOT_SCHEMAS = frozenset({"enum", "const", "default", "examples"})  # values, not schemas


def _marker(n: int) -> str:
    return f"@@llorch-integer-range-{n}@@"


def _marker_literal(n: int) -> str:
    return '"\\"' + _marker(n) + '\\""'


def integer_ranges_marked(node: Any, ranges: list[str]) -> Any:
    """`node` with every bounded integer schema replaced by a marker; each range's GBNF
    expression appended to `ranges` in marker order."""
    if isinstance(node, list):
        return [integer_ranges_marked(item, ranges) for item in node]
    if not isinstance(node, dict):
        return node
    if (
        node.get("type") == "integer"
        and not {"enum", "const"} & node.keys()
        and any(_number(node, key) is not None for key in BOUND_KEYS)
    ):
        ranges.append(integer_range(*integer_bounds(node)))
        kept = {k: v for k, v in node.items() if k not in BOUND_KEYS and k != "type"}
        return kept | {"const": _marker(len(ranges) - 1)}
    return {
        key: value if key in _NOT_SCHEMAS else integer_ranges_marked(value, ranges)
        for key, value in node.items()
    }


BOUND_KEYS = ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum")


def integer_ranges_written(grammar: str, ranges: Sequence[str]) -> str:
    """`grammar` (converted from a schema integer_ranges_marked) with each marker's literal
    replaced by its range: an integer, then the converter's optional space."""
    for n, expression in enumerate(ranges):
        grammar = grammar.replace(_marker_literal(n), f"({expression}) space")
    return grammar


def _number(node: Mapping[str, Any], key: str) -> float | None:
    """A numeric bound of `node`; None where there is none (or draft 4's boolean flag)."""
    value = node.get(key)
    if value is None or isinstance(value, bool):
        return None
    if not isinstance(value, (int, float)) or not math.isfinite(value):
        raise SchemaError(f"{key} of an integer must be a finite number, got {value!r}")
    return value


def integer_bounds(node: Mapping[str, Any]) -> tuple[int | None, int | None]:
    """The smallest and largest integer `node` allows: minimum/maximum, the numeric
    exclusive bounds of JSON Schema 6+, and draft 4's boolean ones."""
    lows, highs = [], []
    if (low := _number(node, "minimum")) is not None:
        strict = node.get("exclusiveMinimum") is True
        lows.append(math.floor(low) + 1 if strict else math.ceil(low))
    if (high := _number(node, "maximum")) is not None:
        strict = node.get("exclusiveMaximum") is True
        highs.append(math.ceil(high) - 1 if strict else math.floor(high))
    if (low := _number(node, "exclusiveMinimum")) is not None:
        lows.append(math.floor(low) + 1)
    if (high := _number(node, "exclusiveMaximum")) is not None:
        highs.append(math.ceil(high) - 1)
    lowest, highest = max(lows, default=None), min(highs, default=None)
    if lowest is not None and highest is not None and lowest > highest:
        given = ", ".join(f"{key} {node[key]}" for key in BOUND_KEYS if key in node)
        raise SchemaError(f"the integer bounds ({given}) allow no value")
    return lowest, highest
