"""Fixtures of the chat tests: llama.cpp's collection of real chat templates (from the
llama-cpp-python sdist the build uses), rendering them the way transformers does, and checking
text against a GBNF grammar with llama.cpp's own grammar sampler."""

from __future__ import annotations

import ctypes
import importlib.util
import json
import math
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="session")
def templates_dir() -> Path:
    """vendor/llama.cpp/models/templates of the sdist (downloaded from PyPI once)."""
    spec = importlib.util.spec_from_file_location("llorch_build_backend", REPO / "build/backend.py")
    assert spec is not None and spec.loader is not None
    backend = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(backend)
    return Path(backend.sdist_source(sys.executable)) / "vendor/llama.cpp/models/templates"


@pytest.fixture(scope="session")
def template(templates_dir: Path) -> Callable[[str], str]:
    """The Jinja source of a template of the collection, by file name (".jinja" optional)."""

    def read(name: str) -> str:
        file = name if name.endswith(".jinja") else f"{name}.jinja"
        return (templates_dir / file).read_text(encoding="utf-8")

    return read


def _raise(message: str) -> None:
    raise ValueError(message)


def _tojson(value: Any, ensure_ascii: bool = False, indent: int | None = None, **_: Any) -> str:
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent)


def render_template(source: str, messages: Sequence[dict[str, Any]], **context: Any) -> str:
    """A template rendered as transformers renders it (trim_blocks, lstrip_blocks, its
    tojson), in a sandbox that still lets templates append to their own lists (Kimi K2)."""
    from jinja2.ext import loopcontrols
    from jinja2.sandbox import SandboxedEnvironment

    env = SandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise
    env.globals["strftime_now"] = lambda fmt: "01 Jan 2025"
    context.setdefault("bos_token", "")
    context.setdefault("eos_token", "")
    return env.from_string(source).render(messages=list(messages), **context)


@pytest.fixture(scope="session")
def rendered_reply() -> Callable[..., str]:
    """What a template renders for an assistant turn holding `tool_calls` (name and
    arguments each, an "id" optionally) and `content` (None: none): the turn's text after
    `header` (the assistant header the generation prompt ends with; "" for templates without
    one), i.e. what the model was trained to write."""

    def reply(
        source: str,
        tool_calls: Sequence[dict[str, Any]],
        content: str | None,
        header: str,
        **context: Any,
    ) -> str:
        user = [{"role": "user", "content": "What is the weather?"}]
        # A call may carry its "id" (Mistral's templates require 9 alphanumerics).
        calls = [
            {
                "id": call.get("id", f"call_{i}"),
                "type": "function",
                "function": {k: v for k, v in call.items() if k != "id"},
            }
            for i, call in enumerate(tool_calls)
        ]
        turn = {"role": "assistant", "content": content, "tool_calls": calls}
        before = render_template(source, user, add_generation_prompt=False, **context)
        full = render_template(source, [*user, turn], add_generation_prompt=False, **context)
        assert full.startswith(before), "the template renders the user turn differently"
        assistant = full[len(before) :]
        if not header:  # templates that write no assistant header (Mistral's)
            return assistant
        assert header in assistant, f"{header!r} is not in {assistant!r}"
        return assistant.split(header, 1)[1]

    return reply


@pytest.fixture(scope="session")
def grammar_accepts(backend: Any) -> Callable[..., bool]:
    """Whether llama.cpp's grammar sampler lets `text` (tokenized with the Gemma vocabulary)
    through token by token and, when `complete`, could end there. With `triggers` the grammar
    is lazy (llama_sampler_init_grammar_lazy_patterns), as tool_choice auto uses it."""
    import llama_cpp as ll

    vocab = backend._words()
    by_byte: dict[int, int] = {}

    def tokens_of(text: str) -> list[int]:
        # Gemma's tokenizer reads U+2581 (DeepSeek's tokens hold it) as its space marker, so
        # such text goes in byte by byte, as tokens whose piece is one byte.
        tokens = backend.tokenize(text, False, False)
        if b"".join(vocab.token_bytes(t) for t in tokens) == text.encode():
            return list(tokens)
        if not by_byte:
            for token in range(vocab.n_tokens):
                piece = vocab.token_bytes(token)
                if len(piece) == 1:
                    by_byte.setdefault(piece[0], token)
        return [by_byte[byte] for byte in text.encode()]

    def allowed(sampler: Any, token: int) -> bool:
        data = ll.llama_token_data(id=token, logit=1.0, p=0.0)
        candidates = ll.llama_token_data_array(
            data=ctypes.pointer(data), size=1, selected=-1, sorted=False
        )
        ll.llama_sampler_apply(sampler, ctypes.byref(candidates))
        return math.isfinite(data.logit)

    def accepts(
        gbnf: str, text: str, *, triggers: Sequence[str] = (), complete: bool = True
    ) -> bool:
        if triggers:
            patterns = (ctypes.c_char_p * len(triggers))(*(t.encode() for t in triggers))
            no_tokens = (ll.llama_token * 1)()
            sampler = ll.llama_sampler_init_grammar_lazy_patterns(
                vocab.pointer, gbnf.encode(), b"root", patterns, len(triggers), no_tokens, 0
            )
        else:
            sampler = ll.llama_sampler_init_grammar(vocab.pointer, gbnf.encode(), b"root")
        assert sampler, "llama.cpp refused the grammar"
        try:
            for token in tokens_of(text):
                if not allowed(sampler, token):
                    return False
                ll.llama_sampler_accept(sampler, token)
            # An end-of-generation token is allowed only where the grammar may end.
            return not complete or allowed(sampler, vocab.eos())
        finally:
            ll.llama_sampler_free(sampler)

    return accepts


@pytest.fixture(scope="session")
def stream_parse() -> Callable[[Any, str], Any]:
    """A format's final parse of `text`, after parsing every prefix of it as a partial output
    (as the core does after each token) and checking what streaming relies on: content and
    reasoning only grow and hold no markup, calls only grow, each call's name is its final
    one and its arguments a prefix of its final arguments."""

    def parse(fmt: Any, text: str) -> Any:
        final = fmt.parse(text, partial=False)
        markup = [marker for marker in fmt.markers if marker not in final.content]
        before = None
        for size in range(len(text) + 1):
            part = fmt.parse(text[:size], partial=True)
            assert final.content.startswith(part.content), (size, part.content)
            assert final.reasoning.startswith(part.reasoning), (size, part.reasoning)
            assert not [m for m in markup if m in part.content], (size, part.content)
            assert len(part.calls) <= len(final.calls), size
            for call, last in zip(part.calls, final.calls, strict=False):
                assert call.name == last.name, (size, call)
                assert last.arguments.startswith(call.arguments), (size, call, last)
                assert call.id in (None, last.id), (size, call)
            if before is not None:
                assert part.content.startswith(before.content), size
                assert len(part.calls) >= len(before.calls), size
                for old, new in zip(before.calls, part.calls, strict=False):
                    assert new.arguments.startswith(old.arguments), (size, old, new)
            before = part
        return final

    return parse


@pytest.fixture(scope="session")
def schema_tools() -> list[Any]:
    """Two tools whose schemas have what a grammar must follow: required and optional
    parameters, an enum, an integer, a nested object and an array."""
    from llorch.worker.chat.types import Tool

    weather = Tool(
        "get_weather",
        "The weather of a city",
        {
            "type": "object",
            "properties": {
                "city": {"type": "string"},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
                "days": {"type": "integer"},
            },
            "required": ["city"],
        },
    )
    search = Tool(
        "search",
        None,
        {
            "type": "object",
            "properties": {
                "query": {"type": "string"},
                "filters": {
                    "type": "object",
                    "properties": {
                        "site": {"type": "string"},
                        "tags": {"type": "array", "items": {"type": "string"}},
                    },
                    "required": ["site"],
                },
            },
            "required": ["query", "filters"],
        },
    )
    return [weather, search]


@pytest.fixture(scope="session")
def check_call_grammar(
    backend: Any, grammar_accepts: Callable[..., bool], schema_tools: list[Any]
) -> Callable[..., None]:
    """Checks a format's grammar over `schema_tools`, single and parallel: llama.cpp loads it;
    it takes `first` (a get_weather call) and `second` (a search call) in the family's syntax
    and both joined by `joiner` only when parallel (for a family whose calls come in one
    section, `section` writes it around the calls: around each alone, and around both); it
    refuses an unknown tool and each of `refused`; lazily (with its triggers) it lets `lead`
    through before a call; and the format parses what it takes."""

    def check(
        fmt: Any,
        first: str,
        second: str,
        *,
        joiner: str = "",
        section: Callable[..., str] | None = None,
        refused: Sequence[str] = (),
        lead: str = "Let me look that up.\n\n",
        parallel_differs: bool = True,
    ) -> None:
        from llorch.worker.chat.types import Tool

        if section is None:
            both = first + joiner + second
        else:
            first, second, both = section(first), section(second), section(first, second)
        single = fmt.grammar(schema_tools, parallel=False)
        several = fmt.grammar(schema_tools, parallel=True)
        backend.check_grammar(single.gbnf)
        backend.check_grammar(several.gbnf)
        # Tools whose parameters list nothing (any object) or nothing at all.
        free = [Tool("ping", None, {"type": "object"}), Tool("pong", None, {})]
        backend.check_grammar(fmt.grammar(free, parallel=True).gbnf)
        assert single.triggers and several.triggers
        assert grammar_accepts(single.gbnf, first)
        assert grammar_accepts(single.gbnf, second)
        if parallel_differs:
            assert grammar_accepts(several.gbnf, both)
            assert not grammar_accepts(single.gbnf, both)
            assert [c.name for c in fmt.parse(both, partial=False).calls] == [
                "get_weather",
                "search",
            ]
        unknown = first.replace("get_weather", "get_time")
        assert not grammar_accepts(single.gbnf, unknown)
        assert not grammar_accepts(several.gbnf, unknown)
        for text in refused:
            assert not grammar_accepts(single.gbnf, text), text
        triggers = single.triggers
        assert grammar_accepts(single.gbnf, lead + first, triggers=triggers)
        assert not grammar_accepts(single.gbnf, lead + unknown, triggers=triggers)
        for text, name in ((first, "get_weather"), (second, "search")):
            assert [c.name for c in fmt.parse(text, partial=False).calls] == [name]

    return check
