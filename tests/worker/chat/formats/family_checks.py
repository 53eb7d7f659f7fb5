"""What the tests of the tool-call families share: the calls they render with the templates and
write for the grammars, and the checks that are the same for every family."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from llorch.worker.chat.formats import detect
from llorch.worker.chat.formats.base import MalformedCall, Parsed, ToolFormat

# The calls the templates render (as an assistant turn's tool_calls), and what is read back.
WEATHER = {"city": "Paris", "days": 3}
SEARCH = {"query": "x y", "filters": {"site": "a.org", "tags": ["a", "b"]}}
CALLS = [{"name": "get_weather", "arguments": WEATHER}, {"name": "search", "arguments": SEARCH}]
READ_BACK = [("get_weather", WEATHER), ("search", SEARCH)]

# Arguments of a get_weather and a search call valid under conftest's schema_tools, for the
# grammar checks.
WEATHER_ARGUMENTS = '{"city": "Paris", "unit": "celsius", "days": 3}'
SEARCH_ARGUMENTS = '{"query": "x y", "filters": {"site": "a.org", "tags": ["a"]}}'


def calls_of(parsed: Parsed) -> list[tuple[str, Any]]:
    """(name, arguments as JSON) of each call."""
    return [(call.name, json.loads(call.arguments)) for call in parsed.calls]


def detected(templates_dir: Path, fmt: ToolFormat) -> set[str]:
    """The templates of the collection that are detected as `fmt`'s family."""
    return {
        path.stem
        for path in templates_dir.glob("*.jinja")
        if detect(path.read_text(encoding="utf-8")).name == fmt.name
    }


def check_malformed(fmt: ToolFormat, text: str) -> None:
    """A partial parse of `text` waits for more; the final parse refuses it."""
    fmt.parse(text, partial=True)
    with pytest.raises(MalformedCall):
        fmt.parse(text, partial=False)
