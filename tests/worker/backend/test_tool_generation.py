"""What tool calling and reasoning models need of the batch decoder, on the real default model
(Gemma 3 270M, a base model): lazy grammars, control tokens whose text is kept, and a
reasoning budget that forces the thinking block's closing tag."""

from __future__ import annotations

import ctypes
import re
from collections.abc import Iterator
from pathlib import Path

import llama_cpp as ll
import pytest
from support import FRANCE, THREADS

from llorch.worker.backend import sampling
from llorch.worker.backend.budget import Phase, ThinkingBudget
from llorch.worker.backend.grammar import GrammarError, check_trigger_patterns, json_grammar
from llorch.worker.backend.llama import LlamaCppBackend
from llorch.worker.backend.protocol import (
    FinishEvent,
    GenerationRequest,
    LoadOptions,
    ReasoningBudget,
    SamplingParams,
    StopReason,
    TokenEvent,
)
from llorch.worker.backend.single import generate

GREEDY = SamplingParams(temperature=0.0)
# Greedy Gemma continues this with `<tool_call>def</tool_call>\n<tool_call>def</tool_call>...`.
TOOL_CALLS = "<tool_call>abc</tool_call>\n<tool_call>def</tool_call>\n"
# Only x, y and z inside the tags: what the model would not write on its own.
XYZ_CALL = 'root ::= "<tool_call>" [xyz]{3} "</tool_call>"'


def run(backend: LlamaCppBackend, request: GenerationRequest) -> tuple[list[int], str, FinishEvent]:
    """(token ids, text, finish) of one request; every event count is checked."""
    events = list(generate(backend.decoder(), request))
    tokens = [e for e in events if isinstance(e, TokenEvent)]
    finish = events[-1]
    assert isinstance(finish, FinishEvent) and len(tokens) == len(events) - 1
    assert [t.index for t in tokens] == list(range(len(tokens)))
    assert finish.tokens_out == len(tokens)
    return [t.token_id for t in tokens], "".join(t.text for t in tokens), finish


def request(
    backend: LlamaCppBackend,
    prompt: str | list[int],
    max_tokens: int,
    params: SamplingParams = GREEDY,
    **kw,
) -> GenerationRequest:
    tokens = backend.tokenize(prompt) if isinstance(prompt, str) else prompt
    return GenerationRequest(tuple(tokens), max_tokens, params, **kw)


def tokens_of(backend: LlamaCppBackend, text: str) -> tuple[int, ...]:
    return tuple(backend.tokenize(text, add_special=False, parse_special=False))


# -- lazy grammars -----------------------------------------------------------------------------


def lazy(grammar: str, *triggers: str) -> SamplingParams:
    return SamplingParams(temperature=0.0, grammar=grammar, grammar_triggers=triggers)


def llama_cpp_greedy(
    backend: LlamaCppBackend, prompt: list[int], n: int, grammar: str, triggers: tuple[str, ...]
) -> list[int]:
    """The reference for a lazy grammar: llama.cpp's lazy grammar sampler, then greedy."""
    vocab = ll.llama_model_get_vocab(backend._model)  # type: ignore[attr-defined]
    patterns = (ctypes.c_char_p * len(triggers))(*(t.encode() for t in triggers))
    lazy_grammar = ll.llama_sampler_init_grammar_lazy_patterns(
        vocab, grammar.encode(), b"root", patterns, len(triggers), None, 0
    )
    return llama_cpp_tokens(backend, prompt, n, [lazy_grammar])


def llama_cpp_tokens(
    backend: LlamaCppBackend, prompt: list[int], n: int, samplers: list[ll.llama_sampler_p]
) -> list[int]:
    """The reference: llama.cpp on its own, through its low-level API: a context of its own,
    a chain of `samplers` and greedy, llama_sampler_sample token by token."""
    model = backend._model  # type: ignore[attr-defined]
    vocab = ll.llama_model_get_vocab(model)
    params = ll.llama_context_default_params()
    params.n_ctx = params.n_batch = params.n_ubatch = 512
    params.n_threads = params.n_threads_batch = THREADS
    ctx = ll.llama_init_from_model(model, params)
    chain = ll.llama_sampler_chain_init(ll.llama_sampler_chain_default_params())
    for sampler in [*samplers, ll.llama_sampler_init_greedy()]:
        ll.llama_sampler_chain_add(chain, sampler)
    out: list[int] = []
    try:
        batch = (ll.llama_token * len(prompt))(*prompt)
        assert ll.llama_decode(ctx, ll.llama_batch_get_one(batch, len(prompt))) == 0
        while len(out) < n:
            token = ll.llama_sampler_sample(chain, ctx, -1)
            if ll.llama_vocab_is_eog(vocab, token):
                break
            out.append(token)
            one = (ll.llama_token * 1)(token)
            assert ll.llama_decode(ctx, ll.llama_batch_get_one(one, 1)) == 0
    finally:
        ll.llama_sampler_free(chain)
        ll.llama_free(ctx)
    return out


def test_a_lazy_grammar_is_a_grammar_sampler_off_the_graph(backend):
    chain = sampling.build_chain(lazy(XYZ_CALL, "<tool_call>"), 1000, 64, backend._vocab)
    try:
        assert sampling.chain_names(chain) == ["grammar", "greedy"]
        assert not sampling.runs_in_graph(chain)
    finally:
        sampling.free_chain(chain)


def test_a_lazy_grammar_constrains_from_its_trigger_on(backend):
    _, plain_text, _ = run(backend, request(backend, TOOL_CALLS, 24))
    assert plain_text.startswith("<tool_call>def</tool_call>\n")
    # The trigger's group starts the grammar: "\n" is free text, "<tool_call>" the grammar's.
    triggers = ("\n(<tool_call>)",)
    ids, text, end = run(backend, request(backend, TOOL_CALLS, 40, lazy(XYZ_CALL, *triggers)))
    first = "<tool_call>def</tool_call>\n"
    assert text.startswith(first)  # free until the trigger: the model's own first call
    assert re.fullmatch(r"<tool_call>[xyz]{3}</tool_call>", text[len(first) :]), text
    assert end.stop_reason is StopReason.EOS  # the grammar is complete: only EOG is left
    prompt = backend.tokenize(TOOL_CALLS)
    assert ids == llama_cpp_greedy(backend, prompt, 40, XYZ_CALL, triggers)


def test_a_trigger_at_the_first_token_constrains_everything(backend):
    _, text, end = run(backend, request(backend, TOOL_CALLS, 24, lazy(XYZ_CALL, "<tool_call>")))
    assert re.fullmatch(r"<tool_call>[xyz]{3}</tool_call>", text), text
    assert end.stop_reason is StopReason.EOS


def test_without_its_trigger_a_lazy_grammar_changes_nothing(backend):
    plain, plain_text, _ = run(backend, request(backend, FRANCE, 12))
    ids, text, _ = run(backend, request(backend, FRANCE, 12, lazy(XYZ_CALL, "<tool_call>")))
    assert (ids, text) == (plain, plain_text)
    assert "<tool_call>" not in text


def test_greedy_under_a_grammar_picks_as_llama_cpp_does(backend):
    """The best allowed candidate, found among the best few first (sampling.py): the same
    tokens as llama.cpp's chain of grammar, logit bias, penalties and greedy over every
    candidate, through picks the model makes itself (inside strings) and picks only the
    grammar's whole-vocabulary pass finds (the keys and the markup)."""
    schema = {
        "type": "object",
        "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
        "required": ["city", "days"],
    }
    grammar = json_grammar(schema)
    banned = tokens_of(backend, " Paris")[0]
    params = SamplingParams(
        temperature=0.0, grammar=grammar, repetition_penalty=1.3, logit_bias=((banned, -5.0),)
    )
    prompt = backend.tokenize(FRANCE)
    ids, text, _ = run(backend, request(backend, prompt, 40, params))
    assert text.startswith('{"city"'), text
    vocab = ll.llama_model_get_vocab(backend._model)  # type: ignore[attr-defined]
    n_vocab = ll.llama_vocab_n_tokens(vocab)
    bias = (ll.llama_logit_bias * 1)()
    bias[0].token, bias[0].bias = banned, -5.0
    penalties = ll.llama_sampler_init_penalties(n_vocab, 512, 1.3, 0.0, 0.0)
    for token in prompt:  # the penalties see the prompt, the grammar only the output
        ll.llama_sampler_accept(penalties, token)
    samplers = [
        ll.llama_sampler_init_grammar(vocab, grammar.encode(), b"root"),
        ll.llama_sampler_init_logit_bias(n_vocab, 1, bias),
        penalties,
    ]
    expected = llama_cpp_tokens(backend, prompt, 40, samplers)
    assert ids == expected


@pytest.mark.parametrize(
    "pattern", ["(?i)tool", "(?<=a)b", "(?P<name>x)", "(unclosed", "", "a{5000}", "a\x00b"]
)
def test_trigger_regexes_llama_cpp_would_throw_on_are_refused(pattern):
    with pytest.raises(GrammarError):
        check_trigger_patterns((pattern,))
    with pytest.raises(GrammarError):
        sampling.build_chain(lazy("root ::= [a-z]+", pattern), 1000, 64, object())


def test_ecmascript_trigger_regexes_pass():
    check_trigger_patterns(("<tool_call>", r"[\s\S]*?(<tool_call>)[\s\S]*", r"(?:a|b)(?=c)\("))


# -- preserved control tokens --------------------------------------------------------------------


def test_a_preserved_control_token_keeps_its_text(backend):
    [start] = backend.tokenize("<start_of_turn>", add_special=False)
    vocab = backend._vocab
    assert ll.llama_vocab_is_control(vocab, start) and not ll.llama_vocab_is_eog(vocab, start)
    forced = SamplingParams(temperature=0.0, logit_bias=((start, 100.0),))
    ids, text, _ = run(backend, request(backend, FRANCE, 2, forced))
    assert ids == [start, start] and text == ""
    ids, text, _ = run(backend, request(backend, FRANCE, 2, forced, preserved_tokens={start}))
    assert ids == [start, start] and text == "<start_of_turn><start_of_turn>"


def test_a_preserved_end_of_generation_token_still_ends_without_text(backend):
    [end_of_turn] = backend.tokenize("<end_of_turn>", add_special=False)
    forced = SamplingParams(temperature=0.0, logit_bias=((end_of_turn, 100.0),))
    keep = frozenset({end_of_turn})
    ids, text, end = run(backend, request(backend, FRANCE, 4, forced, preserved_tokens=keep))
    assert (ids, text, end.stop_reason) == ([], "", StopReason.EOS)


# -- reasoning budget ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def think(backend) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """`<think>` and `</think>` in Gemma's vocabulary: three ordinary tokens each."""
    return tokens_of(backend, "<think>"), tokens_of(backend, "</think>")


def budget(think, tokens: int, started: bool = True) -> ReasoningBudget:
    return ReasoningBudget(tokens, think[0], think[1], started)


def test_a_spent_budget_forces_the_closing_tag_then_the_model_goes_on(backend, think):
    close = think[1]
    plain, _, _ = run(backend, request(backend, FRANCE, 6))
    ids, text, end = run(backend, request(backend, FRANCE, 12, reasoning_budget=budget(think, 4)))
    assert ids[:4] == plain[:4]  # free inside the budget
    assert ids[4:7] == list(close) and end.tokens_out == 12
    assert backend.detokenize(ids[:4]) + "</think>" == text[: text.index("</think>") + 8]
    # After the tag: the model's own greedy continuation of everything before it.
    after, _, _ = run(backend, request(backend, backend.tokenize(FRANCE) + ids[:7], 5))
    assert ids[7:] == after


def test_a_budget_of_zero_closes_at_once(backend, think):
    ids, text, _ = run(backend, request(backend, FRANCE, 5, reasoning_budget=budget(think, 0)))
    assert ids[:3] == list(think[1]) and text.startswith("</think>")


def test_the_opening_tag_starts_the_count(backend, think):
    # Greedy writes " Paris\nQuestion: What is ...": "\nQuestion:" opens this block.
    opening = tokens_of(backend, "\nQuestion:")
    limit = ReasoningBudget(2, opening, think[1], started=False)
    plain, _, _ = run(backend, request(backend, FRANCE, 6))
    ids, text, _ = run(backend, request(backend, FRANCE, 9, reasoning_budget=limit))
    assert ids[:6] == plain[:6] and ids[6:9] == list(think[1])
    assert text == " Paris\nQuestion: What is</think>"


def test_a_block_the_model_closes_itself_is_left_alone(backend, think):
    # " capital" closes the block before the budget of 8 is spent: nothing is forced.
    limit = ReasoningBudget(8, think[0], tokens_of(backend, " capital"), started=True)
    plain, _, _ = run(backend, request(backend, FRANCE, 10))
    ids, _, _ = run(backend, request(backend, FRANCE, 10, reasoning_budget=limit))
    assert ids == plain


def test_forced_tokens_count_toward_max_tokens(backend, think):
    ids, _, end = run(backend, request(backend, FRANCE, 3, reasoning_budget=budget(think, 1)))
    assert ids[1:] == list(think[1][:2])
    assert end.stop_reason is StopReason.MAX_TOKENS and end.tokens_out == 3


def test_the_grammar_sees_the_forced_tokens(backend, think):
    # Free letters, then the tag, then digits only: after the forced tag the grammar is in
    # its digits, which it only is if it accepted the tag's tokens.
    grammar = 'root ::= [a-zA-Z :\\n]* "</think>" [0-9]+'
    params = SamplingParams(temperature=0.0, grammar=grammar)
    ids, text, _ = run(
        backend, request(backend, FRANCE, 10, params, reasoning_budget=budget(think, 4))
    )
    assert ids[4:7] == list(think[1])
    assert re.fullmatch(r"[a-zA-Z :\n]*</think>[0-9]+", text), text


def test_a_forced_closing_tag_can_trigger_a_lazy_grammar(backend, think):
    params = lazy('root ::= "</think>" [0-9]+', "</think>")
    _, text, _ = run(
        backend, request(backend, FRANCE, 8, params, reasoning_budget=budget(think, 2))
    )
    assert re.fullmatch(r" Paris\n</think>[0-9]+", text), text


def test_a_grammar_that_refuses_the_tag_wins(backend, think):
    params = SamplingParams(temperature=0.0, grammar="root ::= [a-zA-Z :\\n]+")
    _, text, _ = run(
        backend, request(backend, FRANCE, 6, params, reasoning_budget=budget(think, 2))
    )
    assert "</think>" not in text and re.fullmatch(r"[a-zA-Z :\n]+", text), text


def test_speculation_with_a_budget_gives_the_same_tokens(backend, think):
    code = "def add(a, b):\n    return a + b\n\n\ndef sub(a, b):\n    return a - b\n"
    block = f"```python\n{code}```\n\n"
    prompt = f"Copy this code exactly.\n\n{block}{block}```python\n"
    limit = budget(think, 24)
    alone, text, _ = run(backend, request(backend, prompt, 32, reasoning_budget=limit))
    spec, _, end = run(
        backend, request(backend, prompt, 32, reasoning_budget=limit, speculative=True)
    )
    assert "</think>" in text and end.drafted > 0
    assert spec == alone


@pytest.fixture(scope="module")
def in_graph(model_path: Path) -> Iterator[LlamaCppBackend]:
    instance = LlamaCppBackend()
    instance.load(model_path, LoadOptions(ctx_size=256, backend_sampling=True, threads=THREADS))
    yield instance
    instance.close()


def test_a_budget_keeps_sampling_on_the_cpu(backend, in_graph, think):
    limit = budget(think, 3)
    cpu, _, _ = run(backend, request(backend, FRANCE, 7, reasoning_budget=limit))
    decoder = in_graph.decoder()
    decoder.add("budget", request(in_graph, FRANCE, 7, reasoning_budget=limit))
    seq = decoder._slots[0].seq  # type: ignore[attr-defined]
    assert seq is not None and seq.key == "budget" and not seq.in_graph
    graph: list[int] = []
    done = 0
    while done < 1:
        for key, event in decoder.step():
            if isinstance(event, TokenEvent) and key == "budget":
                graph.append(event.token_id)
            done += isinstance(event, FinishEvent)
    assert graph == cpu


# -- the budget's state machine on its own ------------------------------------------------------


OPEN, CLOSE = (1, 2), (8, 9)


def feed_all(state: ThinkingBudget, tokens: list[int], piece: bytes = b"a") -> list[int | None]:
    """The forced token before each fed token."""
    forced = []
    for token in tokens:
        forced.append(state.forced())
        state.feed(token, piece)
    return forced


def test_budget_states_follow_llama_cpp():
    state = ThinkingBudget(ReasoningBudget(2, OPEN, CLOSE))
    assert state.phase is Phase.IDLE
    assert feed_all(state, [5, 1, 2, 5, 5]) == [None] * 5
    assert state.phase is Phase.FORCING and state.forced() == 8
    assert feed_all(state, [8, 9]) == [8, 9] and state.phase is Phase.DONE
    # A second block gets a fresh budget; closing it in time forces nothing (the closing
    # tag's first token still counts: the tag is only known once it is whole).
    assert feed_all(state, [1, 2, 8, 9]) == [None] * 4
    assert state.phase is Phase.DONE and state.forced() is None
    feed_all(state, [1, 2, 5, 8])
    assert state.phase is Phase.FORCING and state.forced() == 8


def test_a_started_budget_of_zero_forces_first():
    state = ThinkingBudget(ReasoningBudget(0, OPEN, CLOSE, started=True))
    assert state.forced() == 8


def test_a_spent_budget_waits_for_the_end_of_a_character():
    state = ThinkingBudget(ReasoningBudget(1, OPEN, CLOSE, started=True))
    state.feed(5, "é".encode()[:1])  # the budget is spent inside "é"
    assert state.phase is Phase.WAITING_UTF8 and state.forced() is None
    state.feed(6, "é".encode()[1:])
    assert state.forced() == 8


def test_giving_up_ends_the_block():
    state = ThinkingBudget(ReasoningBudget(0, OPEN, CLOSE, started=True))
    state.give_up()
    assert state.phase is Phase.DONE and state.forced() is None
