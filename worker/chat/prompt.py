"""A chat request made ready for the decoder: the prompt's tokens from the model's template,
the grammar that forces or watches for calls, the control tokens to render, the thinking
budget, and how the output will be read back (output.OutputPlan).

It runs at admission, off the event loop and the model thread: everything here only reads the
vocabulary. Bad requests (a tool_choice naming no tool, a tool result answering no call, a
parameter schema no grammar can be made of) are 400s naming the field.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from functools import lru_cache
from typing import Any, Protocol

from llorch.worker.backend.errors import InvalidRequestError
from llorch.worker.backend.protocol import (
    ChatMessage,
    GenerationRequest,
    ModelInfo,
    ReasoningBudget,
)
from llorch.worker.chat import formats
from llorch.worker.chat.formats.base import ToolFormat, ToolGrammar, gbnf_literal, gbnf_until
from llorch.worker.chat.output import OutputPlan
from llorch.worker.chat.reasoning import ThinkTags, opened_in_prompt, think_tags
from llorch.worker.chat.template import ChatTemplateError, prompt_tokens, render_chat
from llorch.worker.chat.types import (
    ChatRequest,
    Message,
    ReasoningFormat,
    Tool,
    ToolCall,
    ToolChoiceMode,
)


class ChatVocabulary(Protocol):
    """What preparing a chat needs of the model: its vocabulary and llama.cpp's own templates
    (the scheduler provides them). The grammar is parsed by the engine at admission."""

    def builtin_chat_template(
        self, messages: Sequence[ChatMessage], add_generation_prompt: bool = True
    ) -> str: ...

    def tokenize(
        self, text: str, add_special: bool = True, parse_special: bool = True
    ) -> list[int]: ...


@dataclass(frozen=True)
class ChatDefaults:
    """What the server sets for every chat of a model (serve's flags)."""

    template: str | None = None  # --chat-template-file: replaces the GGUF's
    template_kwargs: Mapping[str, Any] | None = None  # --chat-template-kwargs
    reasoning_format: ReasoningFormat = ReasoningFormat.AUTO  # --reasoning-format
    reasoning_budget: int | None = None  # --reasoning-budget (None: unbounded)


@dataclass(frozen=True)
class TemplateFacts:
    """What the core reads once from a template's text."""

    tool_format: ToolFormat
    takes_tools: bool  # the template reads `tools` (else tools are described in a system turn)
    think: ThinkTags | None
    object_arguments: bool  # the template serialises a call's arguments itself
    shows_calls: bool  # the template renders an assistant's earlier calls
    takes_system: bool  # the template renders a system turn


@lru_cache(maxsize=16)
def template_facts(source: str | None) -> TemplateFacts:
    # A template reads its tools as `tools` (Firefunction v2 as `functions`, which the
    # renderer passes too); one that reads neither gets them described in a turn.
    takes_tools = bool(source) and re.search(r"\b(tools|functions)\b", source or "") is not None
    return TemplateFacts(
        formats.detect(source),
        takes_tools,
        think_tags(source),
        *_call_rendering(source),
        _takes_system(source),
    )


def _call_rendering(source: str | None) -> tuple[bool, bool]:
    """(whether the template wants a call's arguments as an object, whether it shows calls at
    all). Rendered with an object, a template that prints arguments as they are shows
    Python's notation ({'k': ...}); one that shows no calls (Granite 3.3's) shows neither."""
    if not source:
        return True, False
    from llorch.worker.chat.template import render_template

    call = ToolCall("call_probe", "probe", '{"probe_key": "probe_value"}')
    probe = [
        Message("user", "hi"),
        Message("assistant", "", tool_calls=(call,)),
        Message("tool", "ok", tool_call_id="call_probe", name="probe"),
    ]
    try:
        text = render_template(source, probe, tools=[Tool("probe")])
    except ChatTemplateError:
        # Some templates concatenate the arguments as text (Functionary v3.2): an object
        # fails there, where the JSON text renders.
        try:
            text = render_template(source, probe, tools=[Tool("probe")], object_arguments=False)
        except ChatTemplateError:
            return True, True
        return False, "probe_value" in text
    return "'probe_key'" not in text, "probe_value" in text


def _takes_system(source: str | None) -> bool:
    """Whether the template renders a system turn (Gemma 2's refuses one)."""
    if not source:
        return True
    from llorch.worker.chat.template import render_template

    try:
        render_template(source, [Message("system", "s"), Message("user", "u")])
    except ChatTemplateError:
        return False
    return True


@dataclass(frozen=True)
class PreparedChat:
    tokens: list[int]
    generation: GenerationRequest  # prompt tokens, limits and adapters are filled at admission
    plan: OutputPlan
    # The request field a grammar the engine refuses comes from (the engine parses it).
    grammar_param: str = "grammar"


def prepare(
    request: ChatRequest,
    model: ModelInfo,
    vocab: ChatVocabulary,
    defaults: ChatDefaults,
    generation: GenerationRequest,
    json_grammar: Callable[[Mapping[str, Any] | None], str],
) -> PreparedChat:
    """The prompt, grammar and reading plan of `request` (`generation` carries what the
    surface set: sampling, stops, log-probabilities, speculation)."""
    source = defaults.template or model.chat_template
    facts = template_facts(source)
    messages = _checked_messages(request.messages)
    mode = request.tool_choice.mode
    tools = _checked_tools(request, json_grammar)
    calling = bool(tools) and mode is not ToolChoiceMode.NONE
    generic = facts.tool_format.name == formats.GENERIC
    # The generic JSON format is ours, not the model's: the model is told about it (and the
    # tools) in a turn, as llama.cpp does; a family's template that does not show the tools
    # (DeepSeek V3.1's) gets them listed the same way.
    described = calling and (generic or not facts.takes_tools)
    if described:
        messages = _describe_tools(messages, tools, facts.takes_system, answer_format=generic)
    if generic and any(m.tool_calls or m.role == "tool" for m in messages):
        messages = _calls_as_text(messages)
    elif not facts.shows_calls and any(m.tool_calls for m in messages):
        # The template drops earlier calls (llama.cpp fills them in the same way): the model
        # would see results answering nothing.
        messages = _calls_as_text(messages, results=False)
    kwargs = dict(defaults.template_kwargs or {}) | dict(request.template_kwargs)
    reasoning = request.reasoning
    budget = reasoning.budget if reasoning.budget is not None else defaults.reasoning_budget
    if budget == 0:
        kwargs.setdefault("enable_thinking", False)  # Qwen 3, SmolLM3, GLM: no thinking turn
    if reasoning.effort is not None:
        kwargs.setdefault("reasoning_effort", reasoning.effort)

    def render(turns: Sequence[Message | ChatMessage]) -> str:
        return render_chat(
            model,
            turns,
            vocab.builtin_chat_template,
            template=source,
            tools=() if described else tools,
            kwargs=kwargs,
            object_arguments=facts.object_arguments,
        )

    tokens, text = prompt_tokens(vocab, model, messages, render)
    think = facts.think
    separate = (reasoning.format or defaults.reasoning_format) is ReasoningFormat.AUTO
    separate = separate and think is not None
    started = opened_in_prompt(text, think)
    tool_format = facts.tool_format if calling else None
    sampling = generation.sampling
    if calling:
        chosen = tools
        if mode is ToolChoiceMode.NAMED:
            chosen = tuple(t for t in tools if t.name == request.tool_choice.name)
        section = _tool_grammar(tool_format, chosen, request.parallel_tool_calls)  # type: ignore[arg-type]
        forced = mode is not ToolChoiceMode.AUTO
        gbnf_text = section.gbnf
        if forced and budget == 0 and section.unthinking is not None:
            gbnf_text = section.unthinking
        body = _renamed_root(gbnf_text, "tool-call-section")
        if mode is ToolChoiceMode.AUTO:
            triggers = tuple(
                _after_thinking(t, think if started else None) for t in section.triggers
            )
            grammar_text = body + "\nroot ::= tool-call-section"
            sampling = replace(sampling, grammar=grammar_text, grammar_triggers=triggers)
        else:
            prefix = _thinking_prefix(think, started, budget)
            grammar_text = body + f"\nroot ::= {prefix}tool-call-section"
            sampling = replace(sampling, grammar=grammar_text)
    elif request.json_format is not None:
        try:
            answer = json_grammar(request.json_format.schema)
        except InvalidRequestError as exc:
            exc.param = request.json_format.param
            raise
        body = _renamed_root(answer, "json-answer")
        prefix = _thinking_prefix(think, started, budget)
        sampling = replace(sampling, grammar=body + f"\nroot ::= {prefix}json-answer")
    markers = list(tool_format.markers if tool_format is not None else ())
    if think is not None:
        markers += [think.open, think.close]
    gen = replace(
        generation,
        sampling=sampling,
        preserved_tokens=frozenset(_control_tokens(vocab, markers)),
        reasoning_budget=_budget(vocab, think, started, budget),
    )
    plan = OutputPlan(
        tool_format=tool_format,
        think=think if separate else None,
        thinking_started=started,
        max_calls=None if request.parallel_tool_calls else 1,
    )
    grammar_param = "grammar"
    if calling:
        grammar_param = "tools"
    elif request.json_format is not None:
        grammar_param = request.json_format.param
    return PreparedChat(tokens, gen, plan, grammar_param)


def _checked_messages(messages: Sequence[Message]) -> list[Message]:
    """The messages with each tool result's function name filled in from the call it
    answers; a result that answers no earlier call is a 400."""
    calls: dict[str, str] = {}
    out = []
    for i, message in enumerate(messages):
        for call in message.tool_calls:
            calls[call.id] = call.name
        if message.role == "tool":
            if message.tool_call_id is None:
                raise InvalidRequestError(
                    f"messages[{i}] is a tool result without tool_call_id",
                    param=f"messages[{i}].tool_call_id",
                )
            if message.tool_call_id not in calls:
                known = ", ".join(sorted(calls)[:8]) or "none"
                raise InvalidRequestError(
                    f"messages[{i}].tool_call_id {message.tool_call_id[:64]!r} answers no "
                    f"earlier assistant tool call (calls made: {known})",
                    param=f"messages[{i}].tool_call_id",
                    value=message.tool_call_id[:64],
                )
            if message.name is None:
                message = replace(message, name=calls[message.tool_call_id])
        out.append(message)
    return out


def _checked_tools(
    request: ChatRequest, json_grammar: Callable[[Mapping[str, Any] | None], str]
) -> tuple[Tool, ...]:
    tools = request.tools
    names = [t.name for t in tools]
    choice = request.tool_choice
    if choice.mode in (ToolChoiceMode.REQUIRED, ToolChoiceMode.NAMED) and not tools:
        raise InvalidRequestError(
            f"tool_choice {choice.mode.value!r} needs tools; none were given",
            param="tool_choice",
        )
    if choice.mode is ToolChoiceMode.NAMED and choice.name not in names:
        raise InvalidRequestError(
            f"tool_choice names the function {str(choice.name)[:64]!r}, which is not in tools "
            f"(tools: {', '.join(names[:16])})",
            param="tool_choice",
            value=choice.name,
        )
    for i, tool in enumerate(tools):
        if names.index(tool.name) != i:
            raise InvalidRequestError(
                f"tools[{i}] repeats the function name {tool.name[:64]!r}",
                param=f"tools[{i}].function.name",
            )
        param = f"tools[{i}].function.parameters"
        kind = tool.parameters.get("type", "object")
        if kind != "object":
            raise InvalidRequestError(
                f"{param} must describe an object (type 'object'), got type {kind!r}",
                param=param,
            )
        try:
            json_grammar(tool.parameters)
        except InvalidRequestError as exc:
            exc.param = param
            raise
    if request.json_format is not None and tools and choice.mode is not ToolChoiceMode.NONE:
        raise InvalidRequestError(
            "response_format asks for a JSON answer while tools may be called; give one of "
            "them, or tool_choice 'none'",
            param="response_format",
        )
    if request.sampling.grammar is not None and tools and choice.mode is not ToolChoiceMode.NONE:
        raise InvalidRequestError(
            "grammar constrains the whole answer while tools may be called; give one of them, "
            "or tool_choice 'none'",
            param="grammar",
        )
    return tools


def _describe_tools(
    messages: list[Message], tools: Sequence[Tool], system: bool, *, answer_format: bool
) -> list[Message]:
    """For a template that takes no tools: the tools and the answer's JSON shape in a system
    turn (llama.cpp's generic format does the same), or before the first user message's
    text where the template renders no system turn."""
    listing = json.dumps(
        [
            {"name": t.name, "description": t.description or "", "parameters": t.parameters}
            for t in tools
        ],
        ensure_ascii=False,
    )
    text = f"You can call these tools:\n{listing}"
    if answer_format:
        text += (
            '\nTo call tools, answer only with JSON: {"tool_calls": [{"name": TOOL_NAME, '
            '"arguments": {...}}]}. Otherwise answer normally.'
        )
    if messages and messages[0].role == "system":
        first = replace(messages[0], content=messages[0].content + "\n\n" + text)
        return [first, *messages[1:]]
    if system:
        return [Message("system", text), *messages]
    for i, message in enumerate(messages):
        if message.role == "user":
            return [
                *messages[:i],
                replace(message, content=text + "\n\n" + message.content),
                *messages[i + 1 :],
            ]
    return [Message("user", text), *messages]


def _calls_as_text(messages: list[Message], *, results: bool = True) -> list[Message]:
    """Earlier calls (and their results) as the generic format's JSON text, in turns every
    template renders: calls in the assistant's content, results as user turns."""
    out = []
    for message in messages:
        if message.tool_calls:
            calls = [
                {"name": c.name, "arguments": json.loads(c.arguments), "id": c.id}
                for c in message.tool_calls
            ]
            text = json.dumps({"tool_calls": calls}, ensure_ascii=False)
            content = f"{message.content}\n{text}" if message.content else text
            out.append(Message("assistant", content, reasoning=message.reasoning))
        elif message.role == "tool" and results:
            result = {"tool": message.name, "id": message.tool_call_id, "content": message.content}
            out.append(Message("user", json.dumps({"tool_response": result}, ensure_ascii=False)))
        else:
            out.append(message)
    return out


# Agents send the same tools with every turn: their call section's grammar (20 tools: ~20 ms
# of schema conversion) is made once. Tool lists longer than this are converted every time, so
# that the cache's memory stays bounded.
_CACHED_TOOLS_CHARS = 65536


def _tool_grammar(tool_format: ToolFormat, tools: Sequence[Tool], parallel: bool) -> ToolGrammar:
    described = json.dumps([[t.name, t.description, t.parameters, t.strict] for t in tools])
    if len(described) > _CACHED_TOOLS_CHARS:
        return tool_format.grammar(tools, parallel=parallel)
    return _cached_tool_grammar(tool_format.name, described, parallel)


@lru_cache(maxsize=64)
def _cached_tool_grammar(format_name: str, described: str, parallel: bool) -> ToolGrammar:
    tools = [Tool(n, d, p, s) for n, d, p, s in json.loads(described)]
    return formats.load(format_name).grammar(tools, parallel=parallel)


def _renamed_root(grammar: str, name: str) -> str:
    return re.sub(r"^root(\s*::=)", name + r"\1", grammar, flags=re.MULTILINE)


def _thinking_prefix(think: ThinkTags | None, started: bool, budget: int | None) -> str:
    """The grammar of the thinking a forced answer may start with."""
    if think is None:
        return ""
    block = f"{gbnf_until(think.close)} {gbnf_literal(think.close)} [ \\t\\n]* "
    if started:
        return block
    if budget == 0:
        return ""
    return f"( {gbnf_literal(think.open)} {block})? "


def _after_thinking(trigger: str, think: ThinkTags | None) -> str:
    """A lazy grammar's trigger, matched only after the thinking block closed (a model may
    mention the markup while it thinks); llama.cpp starts the grammar at the first group."""
    if think is None:
        return trigger
    anchored = trigger.startswith("^")  # at the answer's start: right after the block
    body = trigger[1:] if anchored else trigger
    if re.compile(body).groups == 0:
        body = f"({body})"
    close = re.escape(think.close)
    if anchored:
        return r"^[\s\S]*?" + close + r"\s*" + body
    return close + r"[\s\S]*?" + body


def _control_tokens(vocab: ChatVocabulary, markers: Sequence[str]) -> list[int]:
    """The markers that are one control token: their text is rendered in the output."""
    out = []
    for marker in dict.fromkeys(markers):
        tokens = vocab.tokenize(marker, False, True)
        if len(tokens) == 1 and vocab.tokenize(marker, False, False) != tokens:
            out.append(tokens[0])
    return out


def _budget(
    vocab: ChatVocabulary, think: ThinkTags | None, started: bool, budget: int | None
) -> ReasoningBudget | None:
    if think is None or budget is None:
        return None
    return ReasoningBudget(
        budget,
        tuple(vocab.tokenize(think.open, False, True)),
        tuple(vocab.tokenize(think.close, False, True)),
        started,
    )
