"""What a tool-call format is, and the pieces every family's module is built from.

A family's module knows three things about its model's output: whether a chat template is
its family's (`matches`, from the template's text, never the model's name), how to read calls
out of the text the model wrote (`parse`), and how to force a call (`grammar`: GBNF in the
family's syntax with each tool's parameter schema, plus the patterns that start it lazily).

`parse` is run on the whole output so far after every token (`partial=True`) and once at the
end (`partial=False`). The streaming layer sends the differences, so a partial parse must only
ever grow: its `content` never holds what may still turn out to be markup (a trailing prefix of
a start marker is held back), and a call's `arguments` only grow and stay a prefix of the
final ones.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from llorch.worker.backend.grammar import integer_ranges_marked, integer_ranges_written
from llorch.worker.chat.types import Tool


class MalformedCall(ValueError):
    """The output started a call but did not finish a valid one (the final parse only): the
    core then returns the whole output as content."""


@dataclass(frozen=True)
class ParsedCall:
    name: str
    arguments: str  # JSON text of an object (partial: a prefix of it)
    id: str | None = None  # when the format carries one (Kimi K2, Mistral)
    complete: bool = True


@dataclass(frozen=True)
class Parsed:
    content: str
    calls: tuple[ParsedCall, ...] = ()
    reasoning: str = ""  # formats that carry thinking in their own syntax (gpt-oss)


@dataclass(frozen=True)
class ToolGrammar:
    """GBNF whose `root` is the family's tool-call section (one call, or several when
    parallel), and the regexes whose match starts it when it is lazy (tool_choice auto):
    llama.cpp's lazy grammar applies from the start of the match (or its first group)."""

    gbnf: str
    triggers: tuple[str, ...] = ()
    # Formats that write thinking in their own syntax before a call (gpt-oss's analysis
    # messages): the same section with none, for requests that turn thinking off.
    unthinking: str | None = None


class ToolFormat(Protocol):
    name: str  # e.g. "hermes", shown in logs and the README's table
    # Every piece of markup the format writes (start and end markers, separators): those that
    # are control tokens in a model's vocabulary are rendered into the output as text.
    markers: tuple[str, ...]

    def matches(self, template: str) -> bool:
        """Whether a chat template (its Jinja source) writes this family's tool calls."""
        ...

    def parse(self, text: str, *, partial: bool) -> Parsed:
        """Content and calls of `text`, the model's output after the generation prompt (any
        thinking already taken out). Final parse (partial=False): a started call that is not
        valid raises MalformedCall."""
        ...

    def grammar(self, tools: Sequence[Tool], *, parallel: bool) -> ToolGrammar:
        """The grammar of a call section calling one of `tools` (several calls when
        `parallel`), arguments valid under each tool's parameters."""
        ...


# -- text helpers ------------------------------------------------------------------------------


def held_back(text: str, markers: Iterable[str]) -> int:
    """The index from which `text` must be held back because its tail is the start of one of
    `markers` (len(text) when nothing is)."""
    cut = len(text)
    for marker in markers:
        for n in range(min(len(marker) - 1, len(text)), 0, -1):
            if text.endswith(marker[:n]):
                cut = min(cut, len(text) - n)
                break
    return cut


def first_marker(text: str, markers: Iterable[str]) -> tuple[int, str] | None:
    """(index, marker) of the earliest marker in `text`, or None."""
    found = [(text.find(m), m) for m in markers]
    hits = [(i, m) for i, m in found if i >= 0]
    return min(hits) if hits else None


def content_before(text: str, markers: Sequence[str], *, partial: bool) -> tuple[str, int]:
    """(the content before the first marker, the index where markup starts: len(text) when
    there is none). A partial parse holds back a trailing start of a marker."""
    hit = first_marker(text, markers)
    if hit is not None:
        return text[: hit[0]], hit[0]
    if partial:
        cut = held_back(text, markers)
        return text[:cut], len(text)
    return text, len(text)


_DECODER = json.JSONDecoder()


def json_value_end(text: str, start: int) -> int | None:
    """The index after the complete JSON value that starts at `start` (whitespace skipped),
    or None when the text ends inside it or is not JSON there."""
    at = skip_space(text, start)
    try:
        _, end = _DECODER.raw_decode(text, at)
    except json.JSONDecodeError:
        return None
    return end


def skip_space(text: str, at: int) -> int:
    while at < len(text) and text[at] in " \t\r\n":
        at += 1
    return at


def object_text(text: str, *, what: str) -> str:
    """`text` when it is the JSON text of an object; MalformedCall otherwise."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise MalformedCall(f"{what} is not JSON: {exc}") from None
    if not isinstance(value, dict):
        raise MalformedCall(f"{what} is not a JSON object")
    return text


def partial_arguments(text: str) -> str:
    """Arguments still being written: the text so far, less trailing whitespace (which the
    final text may not keep)."""
    return text.rstrip()


def json_arguments(text: str, at: int, *, partial: bool, what: str) -> tuple[str, int | None]:
    """Arguments the model writes as a JSON object from `at` (whitespace skipped): (their
    text, the index after them). While the object is still being written (partial only): the
    text so far and None. The final parse raises MalformedCall for anything but an object."""
    start = skip_space(text, at)
    end = json_value_end(text, start)
    if end is None:
        if not partial:
            raise MalformedCall(f"{what}: the arguments are not complete JSON")
        return partial_arguments(text[start:]), None
    arguments = text[start:end]
    return (arguments if partial else object_text(arguments, what=what)), end


# -- grammar helpers ---------------------------------------------------------------------------


def gbnf_literal(text: str) -> str:
    escaped = (
        text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\r", "\\r")
    )
    escaped = escaped.replace("\t", "\\t")
    return f'"{escaped}"'


def gbnf_until(literal: str) -> str:
    """A GBNF expression for any text that does not contain `literal` (which must follow it in
    the rule), e.g. free text before a closing tag."""
    if len(literal) == 1:
        return f"[^{_class_char(literal)}]*"
    alternatives = []
    for i in range(len(literal)):
        head = gbnf_literal(literal[:i]) + " " if i else ""
        alternatives.append(f"{head}[^{_class_char(literal[i])}]")
    return "(" + " | ".join(alternatives) + ")*"


def _class_char(c: str) -> str:
    if c in "\\]^-":
        return "\\" + c
    if c == "\n":
        return "\\n"
    return c


@dataclass
class GrammarBuilder:
    """Rules of one grammar: the JSON rules of each tool's arguments (llama.cpp's own schema
    converter) and the family's own rules around them."""

    rules: dict[str, str] = field(default_factory=dict)
    _converter: Any = None
    _ranges: list[str] = field(default_factory=list)  # bounded integers (backend/grammar.py)

    def rule(self, name: str, body: str) -> str:
        self.rules[name] = body
        return name

    def json_rule(self, schema: Mapping[str, Any] | None, name: str) -> str:
        """The name of a rule matching JSON valid under `schema` (None: any JSON value)."""
        from llama_cpp.llama_grammar import SchemaConverter

        if self._converter is None:
            self._converter = SchemaConverter(
                prop_order={}, allow_fetch=False, dotall=False, raw_pattern=False
            )
        converter = self._converter
        bounded = integer_ranges_marked(dict(schema) if schema else {}, self._ranges)
        resolved = converter.resolve_refs(bounded, name)
        return str(converter.visit(resolved, name))

    def arguments_rule(self, tool: Tool) -> str:
        """The rule of `tool`'s arguments: a JSON object valid under its parameters."""
        schema = dict(tool.parameters) if tool.parameters else {}
        schema.setdefault("type", "object")
        return self.json_rule(schema, f"{rule_name(tool.name)}-args")

    def build(self, root: str) -> str:
        rules = dict(self._converter._rules) if self._converter is not None else {}
        rules.update(self.rules)
        rules["root"] = root
        text = "\n".join(f"{name} ::= {body}" for name, body in rules.items())
        return integer_ranges_written(text, self._ranges)


def rule_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9-]+", "-", text).strip("-") or "x"


def regex_literal(text: str) -> str:
    """`text` as a regex matching it literally, in the syntax both Python's re and llama.cpp's
    trigger patterns (std::regex, ECMAScript) read: only the regex metacharacters escaped."""
    return re.sub(r"([\\^$.|?*+()\[\]{}])", r"\\\1", text)


def tool_prefix(index: int, tool: Tool) -> str:
    """A rule-name stem unique to each tool (two names may read alike after rule_name)."""
    return f"tool{index}-{rule_name(tool.name)}"


def tool_rules(
    builder: GrammarBuilder, tools: Sequence[Tool], body: Callable[[Tool, str], str]
) -> str:
    """The alternatives of one rule per tool, named by tool_prefix: `body(tool, its name)`
    is the rule's GBNF."""
    names = []
    for index, tool in enumerate(tools):
        name = tool_prefix(index, tool)
        names.append(builder.rule(name, body(tool, name)))
    return " | ".join(names)
