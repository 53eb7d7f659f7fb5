"""The families whose calls are JSON (Hermes/Qwen, Llama 3.x, Mistral Nemo, Mistral Small,
FireFunction v2, Functionary v3.1 and v3.2, Command R7B, the generic format): detection on
llama.cpp's real templates, parsing what those templates render for an assistant's calls (whole
and streamed a character at a time), malformed calls, and their grammars in llama.cpp."""

from __future__ import annotations

import importlib
import importlib.util
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from llorch.worker.chat.formats import detect
from llorch.worker.chat.formats.base import MalformedCall, Parsed, ToolFormat
from llorch.worker.chat.types import Tool

from .family_checks import calls_of

Call = tuple[str, dict[str, Any]]

WEATHER: Call = ("get_weather", {"city": "Paris", "unit": "celsius"})
TRIP: Call = (
    "book_trip",
    {"travellers": [{"name": "Ada", "age": 36}], "dates": {"from": "2025-06-01", "to": "06-08"}},
)
TOOLS = (
    Tool(
        "get_weather",
        "The weather in a city",
        {
            "type": "object",
            "properties": {
                "city": {"type": "string"},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
            },
            "required": ["city"],
        },
    ),
    Tool(
        "book_trip",
        "Book a trip",
        {
            "type": "object",
            "properties": {
                "travellers": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
                        "required": ["name"],
                    },
                },
                "dates": {
                    "type": "object",
                    "properties": {"from": {"type": "string"}, "to": {"type": "string"}},
                    "required": ["from", "to"],
                },
            },
            "required": ["travellers", "dates"],
        },
    ),
)
TEMPLATE_TOOLS = [
    {
        "type": "function",
        "function": {"name": t.name, "description": t.description, "parameters": t.parameters},
    }
    for t in TOOLS
]


def args(value: dict[str, Any]) -> str:
    return json.dumps(value)


@dataclass(frozen=True)
class Family:
    module: str
    templates: tuple[str, ...]  # the collection's templates this family's matches() accepts
    section: Callable[[list[Call]], str]  # the calls as the family writes them
    lazy_prefix: str  # text before the calls when the grammar is lazy
    malformed: tuple[str, ...]
    parallel: bool = True  # the family writes several calls in one answer
    extra: dict[str, Any] = field(default_factory=dict)  # template variables for rendering

    @property
    def format(self) -> ToolFormat:
        return importlib.import_module(f"llorch.worker.chat.formats.{self.module}").FORMAT  # type: ignore[no-any-return]


def _hermes(calls: list[Call]) -> str:
    return "\n".join(
        f'<tool_call>\n{{"name": "{n}", "arguments": {args(a)}}}\n</tool_call>' for n, a in calls
    )


def _command_r7b(calls: list[Call]) -> str:
    items = ",\n    ".join(
        f'{{"tool_call_id": "{i}", "tool_name": "{n}", "parameters": {args(a)}}}'
        for i, (n, a) in enumerate(calls)
    )
    return f"<|START_ACTION|>[\n    {items}\n]<|END_ACTION|>"


FAMILIES_UNDER_TEST = (
    Family(
        "hermes",
        (
            "Bielik-11B-v3.0-Instruct",
            "MiMo-VL",
            "NousResearch-Hermes-2-Pro-Llama-3-8B-tool_use",
            "NousResearch-Hermes-3-Llama-3.1-8B-tool_use",
            "Qwen-QwQ-32B",
            "Qwen-Qwen2.5-7B-Instruct",
            "Qwen-Qwen3-0.6B",
            "Reka-Edge",
            "ibm-granite-granite-4.0",  # granite's own module comes first in the registry
            "ibm-granite-granite-4.1",
        ),
        _hermes,
        "Let me check.\n",
        (
            '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Par',
            '<tool_call>\n{"name": "get_weather", "arguments": [1, 2]}\n</tool_call>',
            '<tool_call>\n{"name": "get_weather", "arguments": {}} and then\n</tool_call>',
            "<tool_call>\n<function=get_weather>\n<parameter=city>\nParis\n</parameter>",
            '<tool_call>\n{"arguments": {"city": "Paris"}}\n</tool_call>',
        ),
    ),
    Family(
        "llama3",
        (
            "meetkai-functionary-medium-v3.1",  # functionary_v31 comes first in the registry
            "meta-llama-Llama-3.1-8B-Instruct",
            "meta-llama-Llama-3.2-3B-Instruct",
            "meta-llama-Llama-3.3-70B-Instruct",
        ),
        lambda calls: "".join(f'{{"name": "{n}", "parameters": {args(a)}}}' for n, a in calls),
        "",
        (
            '{"name": "get_weather", "parameters": {"city": ',
            '{"name": "get_weather", "parameters": "Paris"}',
            '{"name": 5, "parameters": {}}',
            '{"name": "get_weather"}',
            "<|python_tag|>",
            '<|python_tag|>brave_search.call(query="x", 3)',
        ),
        parallel=False,
    ),
    Family(
        "mistral_nemo",
        ("mistralai-Mistral-Nemo-Instruct-2407",),
        lambda calls: (
            "[TOOL_CALLS]["
            + ", ".join(
                f'{{"name": "{n}", "arguments": {args(a)}, "id": "a1B2c3D4e"}}' for n, a in calls
            )
            + "]"
        ),
        "Let me check.",
        (
            '[TOOL_CALLS][{"name": "get_weather", "arguments": {"city": "Paris"}',
            '[TOOL_CALLS]{"name": "get_weather", "arguments": {"city": "Paris"}}',
            '[TOOL_CALLS][{"name": "get_weather", "arguments": 3}]',
            '[TOOL_CALLS][{"name": "get_weather", "arguments": {}} {"name": "x"}]',
        ),
    ),
    Family(
        "mistral_small",
        (
            "Mistral-Small-3.2-24B-Instruct-2506",
            "mistralai-Ministral-3-14B-Reasoning-2512",
            "unsloth-mistral-Devstral-Small-2507",
        ),
        lambda calls: "".join(f"[TOOL_CALLS]{n}[ARGS]{args(a)}" for n, a in calls),
        "Let me check.",
        (
            '[TOOL_CALLS]get_weather{"city": "Paris"}',
            '[TOOL_CALLS]get_weather[ARGS]{"city": ',
            "[TOOL_CALLS]get weather[ARGS]{}",
            "[TOOL_CALLS]get_weather[ARGS][1]",
            "[TOOL_CALLS]get_weather[CALL_ID]a1B2c3D4e",
        ),
    ),
    Family(
        "firefunction_v2",
        ("fireworks-ai-llama-3-firefunction-v2",),
        lambda calls: (
            " functools["
            + ", ".join(f'{{"name": "{n}", "arguments": {args(a)}}}' for n, a in calls)
            + "]"
        ),
        "Sure.",
        (
            ' functools[{"name": "get_weather", "arguments": {}}',
            ' functools[{"name": "get_weather"}]',
            ' functools[{"name": "get_weather", "arguments": {}} {"name": "x"}]',
            ' functools[{"name": "get_weather", "arguments": "Paris"}]',
        ),
        extra={"functions": "[]", "datetime": "Jan 01 2025"},
    ),
    Family(
        "functionary_v31",
        ("meetkai-functionary-medium-v3.1",),
        lambda calls: "".join(f"<function={n}>{args(a)}</function>" for n, a in calls),
        "Let me check.",
        (
            '<function=get_weather>{"city": "Paris"',
            '<function=get_weather {"city": "Paris"}</function>',
            '<function=get_weather>{"city": "Paris"} and then</function>',
            "<function=get_weather>[1]</function>",
            "<|python_tag|>",
        ),
    ),
    Family(
        "functionary_v32",
        ("meetkai-functionary-medium-v3.2",),
        lambda calls: ">>>".join(f"{n}\n{args(a)}" for n, a in calls),
        "all\nLet me check.>>>",
        (
            'get_weather\n{"city": ',
            "all\nLet me check.>>>get_weather",
            "get_weather\n[1]",
            'all\nLet me check.>>>not a recipient\n{"city": "Paris"}',
        ),
    ),
    Family(
        "command_r7b",
        ("CohereForAI-c4ai-command-r7b-12-2024-tool_use",),
        _command_r7b,
        "<|START_THINKING|>I will look it up.<|END_THINKING|>",
        (
            '<|START_ACTION|>[{"tool_call_id": "0", "tool_name": "get_weather", "parameters": {',
            '<|START_ACTION|>{"tool_name": "get_weather", "parameters": {}}<|END_ACTION|>',
            '<|START_ACTION|>[{"tool_call_id": "0", "tool_name": "get_weather", "parameters": '
            "{}}] and then<|END_ACTION|>",
            '<|START_ACTION|>[{"tool_call_id": "0", "name": "get_weather", "arguments": {}}]'
            "<|END_ACTION|>",
        ),
    ),
    Family(
        "generic",
        (),
        lambda calls: (
            '{"tool_calls": ['
            + ", ".join(f'{{"name": "{n}", "arguments": {args(a)}}}' for n, a in calls)
            + "]}"
        ),
        "",
        (
            '{"tool_calls": [{"name": "get_weather", "arguments": {"city": "Par',
            '{"tool_calls": [{"name": "get_weather", "arguments": []}]}',
            '{"tool_call": {"arguments": {}}}',
            '{"tool_calls": {"name": "get_weather", "arguments": {}}}',
        ),
    ),
)
BY_NAME = {family.module: family for family in FAMILIES_UNDER_TEST}
each_family = pytest.mark.parametrize("family", FAMILIES_UNDER_TEST, ids=lambda f: f.module)


def streamed(fmt: ToolFormat, text: str) -> Parsed:
    """The final parse of `text`, after checking the partial parses of each of its prefixes:
    content never holds markup, and it and the calls only grow and stay a prefix of the final
    parse's; a call complete in a partial parse is final."""
    final = fmt.parse(text, partial=False)
    for n, parsed in enumerate(partials(fmt, text)):
        where = f"after {text[:n]!r}"
        assert final.content.startswith(parsed.content), where
        assert final.reasoning.startswith(parsed.reasoning), where
        assert len(parsed.calls) <= len(final.calls), where
        for call, last in zip(parsed.calls, final.calls, strict=False):
            assert call.name == last.name, where
            assert last.arguments.startswith(call.arguments), where
            if call.complete:
                assert call == last, where
    return final


def partials(fmt: ToolFormat, text: str) -> list[Parsed]:
    """The partial parses of each prefix of `text`, checked against each other: content holds
    no markup, content, reasoning, calls and each call's arguments only grow."""
    parses = [fmt.parse(text[:n], partial=True) for n in range(len(text) + 1)]
    for n in range(1, len(parses)):
        before, parsed, where = parses[n - 1], parses[n], f"after {text[:n]!r}"
        assert not any(marker in parsed.content for marker in fmt.markers), where
        assert parsed.content.startswith(before.content), where
        assert parsed.reasoning.startswith(before.reasoning), where
        assert len(before.calls) <= len(parsed.calls), where
        for old, new in zip(before.calls, parsed.calls, strict=False):
            assert new.name == old.name, where
            assert new.id == old.id or old.id is None, where
            assert new.arguments.startswith(old.arguments), where
    return parses


def model_output(reply: str) -> str:
    """What the model writes, from a template's rendering of an assistant turn: up to its
    end-of-turn token (generation stops there), without the thinking the core takes out."""
    ends = ("<|im_end|>", "<|eot_id|>", "<|eom_id|>", "<|END_OF_TURN_TOKEN|>", "</s>")
    cut = min((i for i in (reply.find(end) for end in ends) if i >= 0), default=len(reply))
    return re.sub(r"^<think>.*?</think>\s*", "", reply[:cut], flags=re.S)


# -- detection ---------------------------------------------------------------------------------


@each_family
def test_matches_exactly_its_templates(family: Family, templates_dir: Path) -> None:
    matched = {
        path.stem
        for path in sorted(templates_dir.glob("*.jinja"))
        if family.format.matches(path.read_text(encoding="utf-8"))
    }
    assert matched == set(family.templates)


def detected(template: str) -> str:
    return detect(template).name


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        *[(t, "hermes") for t in BY_NAME["hermes"].templates if "granite" not in t],
        ("meta-llama-Llama-3.1-8B-Instruct", "llama3"),
        ("meta-llama-Llama-3.2-3B-Instruct", "llama3"),
        ("meta-llama-Llama-3.3-70B-Instruct", "llama3"),
        ("mistralai-Mistral-Nemo-Instruct-2407", "mistral_nemo"),
        ("Mistral-Small-3.2-24B-Instruct-2506", "mistral_small"),
        ("mistralai-Ministral-3-14B-Reasoning-2512", "mistral_small"),
        ("unsloth-mistral-Devstral-Small-2507", "mistral_small"),
        ("fireworks-ai-llama-3-firefunction-v2", "firefunction_v2"),
        ("meetkai-functionary-medium-v3.1", "functionary_v31"),
        ("meetkai-functionary-medium-v3.2", "functionary_v32"),
        ("CohereForAI-c4ai-command-r7b-12-2024-tool_use", "command_r7b"),
        # This SmolLM3 template takes no tools; Phi 3.5's neither.
        ("HuggingFaceTB-SmolLM3-3B", "generic"),
        ("microsoft-Phi-3.5-mini-instruct", "generic"),
        ("Qwen3-Coder", "qwen3_coder"),
    ],
)
def test_detect(name: str, expected: str, template: Callable[[str], str]) -> None:
    assert detected(template(name)) == expected


# -- what the templates render -----------------------------------------------------------------

LLAMA_HEADER = "<|start_header_id|>assistant<|end_header_id|>\n\n"
CHATML_HEADER = "<|im_start|>assistant\n"
RENDERED = [
    # (family, template, assistant header, calls, content, extra template variables)
    (
        "hermes",
        "NousResearch-Hermes-2-Pro-Llama-3-8B-tool_use",
        CHATML_HEADER,
        [WEATHER, TRIP],
        None,
        {},
    ),
    ("hermes", "NousResearch-Hermes-3-Llama-3.1-8B-tool_use", CHATML_HEADER, [WEATHER], None, {}),
    ("hermes", "Qwen-Qwen2.5-7B-Instruct", CHATML_HEADER, [WEATHER, TRIP], "Let me check.", {}),
    ("hermes", "Qwen-Qwen3-0.6B", CHATML_HEADER, [WEATHER, TRIP], "Let me check.", {}),
    ("hermes", "Qwen-QwQ-32B", CHATML_HEADER, [TRIP], "Let me check.", {}),
    ("hermes", "Qwen-QwQ-32B", CHATML_HEADER, [WEATHER], None, {}),
    ("llama3", "meta-llama-Llama-3.1-8B-Instruct", LLAMA_HEADER, [WEATHER], None, {}),
    ("llama3", "meta-llama-Llama-3.2-3B-Instruct", LLAMA_HEADER, [TRIP], None, {}),
    ("llama3", "meta-llama-Llama-3.3-70B-Instruct", LLAMA_HEADER, [WEATHER], None, {}),
    (
        "llama3",
        "meta-llama-Llama-3.1-8B-Instruct",
        LLAMA_HEADER,
        [("brave_search", {"query": "weather in Paris"})],
        None,
        {"builtin_tools": ["brave_search", "wolfram_alpha"]},
    ),
    ("mistral_nemo", "mistralai-Mistral-Nemo-Instruct-2407", "", [WEATHER, TRIP], None, {}),
    ("mistral_small", "Mistral-Small-3.2-24B-Instruct-2506", "", [WEATHER, TRIP], None, {}),
    ("mistral_small", "mistralai-Ministral-3-14B-Reasoning-2512", "", [WEATHER, TRIP], "", {}),
    ("mistral_small", "unsloth-mistral-Devstral-Small-2507", "", [WEATHER], "", {}),
    ("firefunction_v2", "fireworks-ai-llama-3-firefunction-v2", "", [WEATHER, TRIP], "Sure.", {}),
    (
        "functionary_v31",
        "meetkai-functionary-medium-v3.1",
        LLAMA_HEADER,
        [WEATHER, TRIP],
        "Let me check.",
        {},
    ),
    # Its generation prompt ends with ">>>": the model writes the first recipient.
    (
        "functionary_v32",
        "meetkai-functionary-medium-v3.2",
        LLAMA_HEADER + ">>>",
        [WEATHER, TRIP],
        "Let me check.",
        {},
    ),
    (
        "functionary_v32",
        "meetkai-functionary-medium-v3.2",
        LLAMA_HEADER + ">>>",
        [WEATHER],
        None,
        {},
    ),
    # The template always ends with the next turn's start (thinking closed unless enabled).
    ("command_r7b", "CohereForAI-c4ai-command-r7b-12-2024-tool_use", "", [WEATHER, TRIP], None, {}),
    (
        "command_r7b",
        "CohereForAI-c4ai-command-r7b-12-2024-tool_use",
        "",
        [WEATHER],
        None,
        {"enable_thinking": True},
    ),
]


@pytest.mark.parametrize(
    ("module", "name", "header", "calls", "content", "extra"),
    RENDERED,
    ids=[f"{r[1]}-{len(r[3])}" for r in RENDERED],
)
def test_parses_what_the_template_renders(
    module: str,
    name: str,
    header: str,
    calls: list[Call],
    content: str | None,
    extra: dict[str, Any],
    template: Callable[[str], str],
    rendered_reply: Callable[..., str],
) -> None:
    family = BY_NAME[module]
    # Functionary v3.2's template writes the arguments as given: a JSON string.
    as_text = module == "functionary_v32"
    ids = [f"a1B2c3D4{i}" for i in range(len(calls))]  # Mistral's: 9 alphanumerics
    tool_calls = [
        {"name": n, "arguments": args(a) if as_text else a, "id": id_}
        for (n, a), id_ in zip(calls, ids, strict=True)
    ]
    context = {"tools": TEMPLATE_TOOLS, **family.extra, **extra}
    output = model_output(rendered_reply(template(name), tool_calls, content, header, **context))
    parsed = streamed(family.format, output)
    assert calls_of(parsed) == calls, output
    assert parsed.content == (content or ""), output
    if "[CALL_ID]" in output or module == "mistral_nemo":
        assert [call.id for call in parsed.calls] == ids


@each_family
def test_parses_single_and_parallel_calls(family: Family) -> None:
    for calls in ([WEATHER], [WEATHER, TRIP]) if family.parallel else ([TRIP],):
        parsed = streamed(family.format, family.section(calls))
        assert calls_of(parsed) == calls
        assert parsed.content == ""


@pytest.mark.parametrize(
    "family",
    # In Llama 3's and the generic format a call is the whole answer: no content before it.
    [f for f in FAMILIES_UNDER_TEST if f.module not in ("llama3", "generic")],
    ids=lambda f: f.module,
)
def test_content_before_calls(family: Family) -> None:
    text = family.lazy_prefix + family.section([WEATHER])
    parsed = streamed(family.format, text)
    assert calls_of(parsed) == [WEATHER]
    # What comes before is content, but for Command R7B: its plan, reasoning.
    expected = {"command_r7b": "", "firefunction_v2": "Sure."}.get(family.module, "Let me check.")
    assert parsed.content == expected


@each_family
def test_content_only(family: Family) -> None:
    text = "The weather is sunny, 21 °C.\n\nAnything else?"
    if family.module == "functionary_v32":
        text = "all\n" + text
    parsed = streamed(family.format, text)
    assert parsed.calls == ()
    assert parsed.content == text.removeprefix("all\n")


@pytest.mark.parametrize(
    ("module", "text"),
    [(family.module, text) for family in FAMILIES_UNDER_TEST for text in family.malformed],
)
def test_malformed_call(module: str, text: str) -> None:
    fmt = BY_NAME[module].format
    partials(fmt, text)  # partial parses do not judge, and still only grow
    with pytest.raises(MalformedCall):
        fmt.parse(text, partial=False)


# -- grammars ----------------------------------------------------------------------------------


@each_family
@pytest.mark.parametrize("parallel", [False, True])
def test_grammar_parses_in_llama_cpp(family: Family, parallel: bool, backend: Any) -> None:
    for tools in (TOOLS, TOOLS[:1]):
        grammar = family.format.grammar(tools, parallel=parallel)
        backend.check_grammar(grammar.gbnf)
        for trigger in grammar.triggers:
            re.compile(trigger)


@each_family
def test_grammar_accepts_calls(family: Family, grammar_accepts: Callable[..., bool]) -> None:
    single = family.format.grammar(TOOLS, parallel=False).gbnf
    parallel = family.format.grammar(TOOLS, parallel=True).gbnf
    for call in (WEATHER, TRIP, ("get_weather", {"city": "Paris"})):
        assert grammar_accepts(single, family.section([call])), call
        assert grammar_accepts(parallel, family.section([call])), call
    two = family.section([WEATHER, TRIP])
    assert not grammar_accepts(single, two)
    assert grammar_accepts(parallel, two) == family.parallel


@each_family
def test_grammar_refuses_wrong_calls(family: Family, grammar_accepts: Callable[..., bool]) -> None:
    gbnf = family.format.grammar(TOOLS, parallel=True).gbnf
    for call in (
        ("get_wether", {"city": "Paris"}),  # no such tool
        ("get_weather", {"city": 12}),  # wrong type
        ("get_weather", {"city": "Paris", "unit": "kelvin"}),  # not in the enum
        ("book_trip", {"travellers": []}),  # a required field missing
    ):
        assert not grammar_accepts(gbnf, family.section([call]), complete=False), call


@each_family
def test_lazy_grammar_starts_at_the_trigger(
    family: Family, grammar_accepts: Callable[..., bool]
) -> None:
    grammar = family.format.grammar(TOOLS, parallel=True)
    text = family.lazy_prefix + family.section([WEATHER])
    # Where llama.cpp starts the grammar: the first group of the first trigger found, or the
    # match (checked here with Python's re, which reads these patterns the same way).
    starts = []
    for trigger in grammar.triggers:
        match = re.search(trigger, text)
        if match is not None:
            starts.append(match.start(1) if match.re.groups else match.start())
    assert starts, grammar.triggers
    assert text[: min(starts)].strip() == family.lazy_prefix.strip()
    assert grammar_accepts(grammar.gbnf, text, triggers=grammar.triggers)


# -- each family's own forms -------------------------------------------------------------------


def test_hermes_variants() -> None:
    fmt = BY_NAME["hermes"].format
    weather = '{"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}}'
    # Models forget the closing tag, before the next call or at the end.
    parsed = streamed(fmt, f"<tool_call>\n{weather}\n<tool_call>\n{weather}")
    assert calls_of(parsed) == [WEATHER, WEATHER]
    # Key order and "parameters" as some fine-tunes write them.
    other = '{"parameters": {"city": "Paris", "unit": "celsius"}, "name": "get_weather"}'
    assert calls_of(streamed(fmt, f"<tool_call>{other}</tool_call>")) == [WEATHER]
    # Arguments written as a string holding the object.
    quoted = json.dumps({"name": "get_weather", "arguments": json.dumps(WEATHER[1])})
    assert calls_of(streamed(fmt, f"<tool_call>\n{quoted}\n</tool_call>")) == [WEATHER]
    # Text after the calls is kept.
    parsed = streamed(fmt, f"Checking.\n<tool_call>\n{weather}\n</tool_call>\nDone.")
    assert (parsed.content, calls_of(parsed)) == ("Checking.\nDone.", [WEATHER])


def test_llama3_forms() -> None:
    fmt = BY_NAME["llama3"].format
    weather = '{"city": "Paris", "unit": "celsius"}'
    typed = f'{{"type": "function", "name": "get_weather", "parameters": {weather}}}'
    assert calls_of(streamed(fmt, typed)) == [WEATHER]
    tagged = f'<|python_tag|>{{"name": "get_weather", "arguments": {weather}}}'
    assert calls_of(streamed(fmt, tagged)) == [WEATHER]
    parsed = streamed(fmt, '<|python_tag|>wolfram_alpha.call(query="2+2")')
    assert calls_of(parsed) == [("wolfram_alpha", {"query": "2+2"})]
    parsed = streamed(fmt, "Let me compute.<|python_tag|>import math\nprint(math.pi)")
    assert parsed.content == "Let me compute."
    assert calls_of(parsed) == [("python", {"code": "import math\nprint(math.pi)"})]
    # JSON that is not a call, and a call that is not at the start of the answer, are content.
    for text in (
        '{"answer": 42}',
        f'Here it is: {{"name": "get_weather", "parameters": {weather}}}',
    ):
        parsed = streamed(fmt, text)
        assert (parsed.content, parsed.calls) == (text, ())


def test_mistral_small_forms() -> None:
    fmt = BY_NAME["mistral_small"].format
    weather = '{"city": "Paris", "unit": "celsius"}'
    parsed = streamed(fmt, f"[TOOL_CALLS]get_weather[CALL_ID]a1B2c3D4e[ARGS]{weather}")
    assert (calls_of(parsed), parsed.calls[0].id) == ([WEATHER], "a1B2c3D4e")
    # The JSON list older Mistral models write after [TOOL_CALLS].
    listed = f'[TOOL_CALLS][{{"name": "get_weather", "arguments": {weather}, "id": "a1B2c3D4e"}}]'
    assert calls_of(streamed(fmt, listed)) == [WEATHER]


def test_functionary_v31_code_interpreter() -> None:
    fmt = BY_NAME["functionary_v31"].format
    parsed = streamed(fmt, "Computing.<|python_tag|>print(2 + 2)")
    assert parsed.content == "Computing."
    assert calls_of(parsed) == [("python", {"code": "print(2 + 2)"})]


def test_functionary_v32_blocks() -> None:
    fmt = BY_NAME["functionary_v32"].format
    weather = '{"city": "Paris", "unit": "celsius"}'
    text = f"get_weather\n{weather}>>>python\nprint(1)>>>all\nDone."
    parsed = streamed(fmt, text)
    assert calls_of(parsed) == [WEATHER, ("python", {"code": "print(1)"})]
    assert parsed.content == "Done."
    # An answer written without a recipient is content.
    assert streamed(fmt, "Hello there.").content == "Hello there."


def test_command_r7b_thinking_and_response() -> None:
    fmt = BY_NAME["command_r7b"].format
    parsed = streamed(
        fmt,
        "<|START_THINKING|>The user wants the weather.<|END_THINKING|>" + _command_r7b([WEATHER]),
    )
    assert (parsed.reasoning, parsed.content) == ("The user wants the weather.", "")
    assert calls_of(parsed) == [WEATHER]
    parsed = streamed(
        fmt,
        "<|START_THINKING|>Easy.<|END_THINKING|><|START_RESPONSE|>It is sunny.<|END_RESPONSE|>",
    )
    assert (parsed.reasoning, parsed.content, parsed.calls) == ("Easy.", "It is sunny.", ())
    # Cut off while thinking.
    parsed = fmt.parse("<|START_THINKING|>Let me see", partial=False)
    assert (parsed.reasoning, parsed.content) == ("Let me see", "")


def test_generic_answers() -> None:
    fmt = BY_NAME["generic"].format
    weather = '{"city": "Paris", "unit": "celsius"}'
    single = f'{{"tool_call": {{"name": "get_weather", "arguments": {weather}}}}}'
    assert calls_of(streamed(fmt, single)) == [WEATHER]
    parsed = streamed(fmt, '{"response": "It is sunny.\\nWarm, too: \\u00e9t\\u00e9."}')
    assert (parsed.content, parsed.calls) == ("It is sunny.\nWarm, too: été.", ())
    for text in ("Plain text.", '{"answer": 42}'):
        assert streamed(fmt, text).content == text


def test_command_r7b_forced_grammar_without_thinking(
    backend: Any, grammar_accepts: Callable[..., bool]
) -> None:
    fmt = BY_NAME["command_r7b"].format
    grammar = fmt.grammar(TOOLS, parallel=True)
    assert grammar.unthinking is not None
    backend.check_grammar(grammar.unthinking)
    planned = "<|START_THINKING|>I will look it up.<|END_THINKING|>" + _command_r7b([WEATHER])
    assert grammar_accepts(grammar.gbnf, planned)
    assert not grammar_accepts(grammar.unthinking, planned)
    assert grammar_accepts(grammar.unthinking, _command_r7b([WEATHER, TRIP]))
