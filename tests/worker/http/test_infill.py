"""`POST /infill` and `/v1/completions` with `suffix`, over a scripted backend whose vocabulary
has FIM tokens: the prompt the engine gets, llama-server's answer shapes, the refusals."""

from __future__ import annotations

from dataclasses import replace

import pytest
from fakes import N_VOCAB, FakeBackend
from openai_helpers import assert_error, chunks_of, client_for

from llorch.worker.backend.protocol import FimTokens, ModelInfo

CONTROL = ["<PRE>", "<SUF>", "<MID>", "<REP>", "<SEP>"]
PRE, SUF, MID, REP, SEP = (N_VOCAB + i for i in range(len(CONTROL)))


def t(text: str) -> list[int]:
    return [ord(c) for c in text]


class FimBackend(FakeBackend):
    """The fake with a coder's FIM tokens (repository-level ones included)."""

    def __init__(self, **kw: object) -> None:
        super().__init__(control_tokens=CONTROL, n_ctx=512, **kw)  # type: ignore[arg-type]

    def info(self) -> ModelInfo:
        fim = FimTokens(pre=PRE, suf=SUF, mid=MID, rep=REP, sep=SEP)
        return replace(super().info(), fim=fim)


@pytest.fixture
def backend():
    return FimBackend(script="return a + b")


@pytest.fixture
def client(backend, open_client):
    return open_client(backend)


BODY = {"input_prefix": "def add(a, b):\n    ", "input_suffix": "\n\nprint(add(1, 2))\n"}
EXPECTED = [
    *[REP, *t("myproject\n"), SEP, *t("filename\n")],  # no chunks: the header and this file
    *[PRE, *t(BODY["input_prefix"]), SUF, *t(BODY["input_suffix"]), MID],
]


def test_infill_answers_like_llama_server(client, backend):
    response = client.post("/infill", json={**BODY, "n_predict": 64})
    assert response.status_code == 200, response.text
    body = response.json()
    assert backend.requests[0].prompt_tokens == tuple(EXPECTED)
    assert body["content"] == "return a + b" and body["stop"] is True
    assert body["tokens_predicted"] == 12 and body["tokens_evaluated"] == len(EXPECTED)
    assert body["stop_type"] == "eos" and body["stopping_word"] == "" and body["tokens"] == []
    assert body["model"] == "fake" and body["truncated"] is False
    assert body["timings"]["predicted_n"] == 12 and body["timings"]["prompt_n"] == len(EXPECTED)


def test_extra_chunks_prompt_and_limits(client, backend):
    extra = [{"filename": "util.py", "text": "X = 1\n"}, {"text": "y"}]
    body = {**BODY, "input_extra": extra, "prompt": "ret", "n_predict": 3, "stop": ["zz"]}
    answer = client.post("/infill", json=body).json()
    assert backend.requests[0].prompt_tokens == (
        *[REP, *t("myproject\n"), SEP, *t("util.py\n"), *t("X = 1\n"), SEP, *t("tmp\n"), *t("y")],
        *[SEP, *t("filename\n"), PRE, *t(BODY["input_prefix"]), *t("ret"), SUF],
        *[*t(BODY["input_suffix"]), MID],
    )
    assert answer["content"] == "ret" and answer["stop_type"] == "limit"
    assert backend.requests[0].max_tokens == 3


def test_stop_words_and_returned_tokens(client):
    answer = client.post("/infill", json={**BODY, "stop": ["a +"], "return_tokens": True}).json()
    assert answer["content"] == "return " and answer["stop_type"] == "word"
    assert answer["stopping_word"] == "a +" and answer["tokens"][:3] == t("ret")


def test_streaming_events_end_with_stop_and_no_done(client):
    with client.stream("POST", "/infill", json={**BODY, "stream": True}) as response:
        response.read()
    events = chunks_of(response)
    assert "[DONE]" not in events
    *pieces, last = events
    assert all(p["stop"] is False and set(p) >= {"content", "tokens_predicted"} for p in pieces)
    assert "".join(p["content"] for p in pieces) == "return a + b"
    assert [p["tokens_predicted"] for p in pieces] == list(range(1, 13))
    assert last["stop"] is True and last["content"] == "" and last["tokens_predicted"] == 12
    assert last["tokens_evaluated"] == len(EXPECTED) and "timings" in last


def test_response_fields_pick_paths_as_llama_server(client):
    fields = ["content", "timings/predicted_n", "truncated", "nope/x"]
    answer = client.post("/infill", json={**BODY, "response_fields": fields}).json()
    assert answer == {"content": "return a + b", "timings/predicted_n": 12, "truncated": False}


def test_n_predict_zero_answers_at_once(client, backend):
    answer = client.post("/infill", json={**BODY, "n_predict": 0}).json()
    assert answer["content"] == "" and answer["tokens_predicted"] == 0
    assert answer["tokens_evaluated"] == len(EXPECTED) and backend.requests == []


def test_editor_plugin_fields_are_accepted(client):
    # What llama.vscode / llama.vim send beside the FIM fields.
    extras = {"cache_prompt": True, "samplers": ["top_k", "top_p", "infill"], "n_indent": 4}
    extras |= {"t_max_prompt_ms": 500, "t_max_predict_ms": 1000, "top_k": 40, "top_p": 0.99}
    assert client.post("/infill", json={**BODY, **extras}).status_code == 200


def test_required_fields_and_types(client):
    response = client.post("/infill", json={"input_prefix": "a"})
    assert response.status_code == 400
    assert response.json()["errors"][0]["field"] == "input_suffix"
    bad = {**BODY, "input_extra": [{"filename": "x"}]}
    assert client.post("/infill", json=bad).status_code == 400


def test_a_model_without_fim_tokens_is_refused():
    with client_for(FakeBackend()) as client:
        response = client.post("/infill", json=BODY)
        assert response.status_code == 400
        error = response.json()["errors"][0]
        assert error["field"] == "input_prefix"
        assert "'fake'" in error["message"]
        assert "prefix, suffix, middle tokens" in error["message"]
        response = client.post("/v1/completions", json={"prompt": "a", "suffix": "b"})
        assert "cannot fill in the middle" in assert_error(response, 400, "suffix")["message"]


# -- /v1/completions with suffix --------------------------------------------------------------


def test_completion_suffix_is_a_fim_prompt(client, backend):
    body = {"prompt": "def f(", "suffix": "):\n", "max_tokens": 6}
    answer = client.post("/v1/completions", json=body).json()
    assert answer["choices"][0]["text"] == "return"
    assert backend.requests[0].prompt_tokens == (
        *[REP, *t("myproject\n"), SEP, *t("filename\n")],
        *[PRE, *t("def f("), SUF, *t("):\n"), MID],
    )


def test_completion_empty_suffix_is_a_plain_completion(client, backend):
    client.post("/v1/completions", json={"prompt": "ab", "suffix": "", "max_tokens": 2})
    assert backend.requests[0].prompt_tokens == tuple(t("ab"))


@pytest.mark.parametrize(
    "extra", [{"echo": True}, {"prompt": [1, 2]}], ids=["echo", "token-prompt"]
)
def test_completion_suffix_refusals(client, extra):
    body = {"prompt": "a", "suffix": "b", **extra}
    assert_error(client.post("/v1/completions", json=body), 400)
