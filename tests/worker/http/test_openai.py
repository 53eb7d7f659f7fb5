"""The OpenAI-compatible routes with a scripted backend: shapes, streaming, usage, errors."""

from __future__ import annotations

import json
import math
import threading

import pytest
from fakes import N_VOCAB, FakeBackend
from openai_helpers import assert_error, chunks_of
from support import model_loaded

from llorch.worker.backend.errors import QueueFullError

GEMMA_STYLE = (
    "{{ bos_token }}{% for m in messages %}<start_of_turn>{{ m['role'] }}\n"
    "{{ m['content'] }}<end_of_turn>\n{% endfor %}"
    "{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)


@pytest.fixture
def backend():
    return FakeBackend(n_ctx=256)


@pytest.fixture
def client(backend, open_client):
    return open_client(backend)


# -- completions -----------------------------------------------------------------------------


def test_completion_shape_usage_and_length(client):
    response = client.post("/v1/completions", json={"model": "x", "prompt": "Hi", "max_tokens": 5})
    assert response.status_code == 200
    body = response.json()
    assert body["object"] == "text_completion" and body["id"].startswith("cmpl-")
    assert body["model"] == "fake" and isinstance(body["created"], int)
    assert body["choices"] == [
        {"index": 0, "text": "Hello", "logprobs": None, "finish_reason": "length"}
    ]
    assert body["usage"] == {
        "prompt_tokens": 2,
        "completion_tokens": 5,
        "total_tokens": 7,
        "prompt_tokens_details": {"cached_tokens": 0},
    }
    assert body["system_fingerprint"] == "llorch-" + "0" * 12


def test_completion_default_max_tokens_is_16(client, backend):
    backend.script = "x" * 40
    body = client.post("/v1/completions", json={"prompt": "Hi"}).json()
    assert body["usage"]["completion_tokens"] == 16
    assert backend.requests[0].max_tokens == 16


def test_eos_and_stop_sequence_finish_with_stop(client):
    body = client.post("/v1/completions", json={"prompt": "Hi", "max_tokens": 50}).json()
    assert body["choices"][0] == {
        "index": 0,
        "text": "Hello world",
        "logprobs": None,
        "finish_reason": "stop",
    }
    body = client.post("/v1/completions", json={"prompt": "Hi", "stop": "wor"}).json()
    assert body["choices"][0]["finish_reason"] == "stop"
    assert body["choices"][0]["text"].startswith("Hello ")  # the fake holds nothing back


@pytest.mark.parametrize("prompt", [["Hi"], [72, 105], [[72, 105]]])
def test_prompt_forms(client, backend, prompt):
    assert client.post("/v1/completions", json={"prompt": prompt}).status_code == 200
    assert backend.requests[0].prompt_tokens == (72, 105)


def test_completion_stream_chunks_then_done(client):
    body = {"prompt": "Hi", "max_tokens": 5, "stream": True}
    chunks = chunks_of(client.post("/v1/completions", json=body))
    assert chunks[-1] == "[DONE]"
    pieces = chunks[:-1]
    assert all(c["object"] == "text_completion" for c in pieces)
    assert len({c["id"] for c in pieces}) == 1
    assert "".join(c["choices"][0]["text"] for c in pieces) == "Hello"
    assert [c["choices"][0]["finish_reason"] for c in pieces] == [None] * 5 + ["length"]
    assert all("usage" not in c for c in pieces)


def test_stream_include_usage_adds_a_last_usage_chunk(client):
    body = {
        "prompt": "Hi",
        "max_tokens": 3,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    chunks = chunks_of(client.post("/v1/completions", json=body))
    *pieces, usage, done = chunks
    assert done == "[DONE]"
    assert usage["choices"] == []
    assert usage["usage"] == {
        "prompt_tokens": 2,
        "completion_tokens": 3,
        "total_tokens": 5,
        "prompt_tokens_details": {"cached_tokens": 0},
    }
    assert all(c["usage"] is None for c in pieces)


def test_sampling_fields_reach_the_backend(client, backend):
    body = {
        "prompt": "Hi",
        "temperature": 0.5,
        "top_p": 0.9,
        "seed": 7,
        "stop": ["zz", "yy"],
        "presence_penalty": 0.5,
        "frequency_penalty": -0.5,
        "logit_bias": {"65": -3, "66": False},
        "top_k": 40,
        "min_p": 0.05,
        "repeat_penalty": 1.1,
        "typical_p": 0.8,
        "grammar": 'root ::= "a"',
        "user": "ignored",
    }
    assert client.post("/v1/completions", json=body).status_code == 200
    request = backend.requests[0]
    s = request.sampling
    assert (s.temperature, s.top_p, s.seed, s.top_k, s.min_p) == (0.5, 0.9, 7, 40, 0.05)
    assert (s.presence_penalty, s.frequency_penalty, s.typical_p) == (0.5, -0.5, 0.8)
    assert s.repetition_penalty == 1.1 and s.grammar == 'root ::= "a"'
    assert s.logit_bias[0] == (65, -3.0)
    assert s.logit_bias[1][0] == 66 and s.logit_bias[1][1] == -math.inf
    assert request.stop == ("zz", "yy")


def test_response_format_becomes_a_grammar(client, backend):
    schema = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
    body = {
        "prompt": "Hi",
        "response_format": {"type": "json_schema", "json_schema": {"name": "c", "schema": schema}},
    }
    assert client.post("/v1/completions", json=body).status_code == 200
    assert '"\\"city\\""' in backend.requests[0].sampling.grammar
    body["response_format"] = {"type": "json_object"}
    assert client.post("/v1/completions", json=body).status_code == 200
    assert "root ::= object" in backend.requests[1].sampling.grammar


# -- chat ------------------------------------------------------------------------------------


def test_chat_uses_the_builtin_template_and_rest_of_context(client, backend):
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    body = client.post("/v1/chat/completions", json={"messages": messages}).json()
    assert body["object"] == "chat.completion" and body["id"].startswith("chatcmpl-")
    assert body["choices"] == [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "Hello world"},
            "logprobs": None,
            "finish_reason": "stop",
        }
    ]
    prompt = "<system>Be brief.</system><user>Hi</user><assistant>"
    assert backend.requests[0].prompt_tokens == tuple(ord(c) for c in prompt)
    assert backend.requests[0].max_tokens == 256 - len(prompt)
    assert body["usage"]["prompt_tokens"] == len(prompt)


def test_chat_uses_the_models_jinja_template(open_client):
    backend = FakeBackend(n_ctx=256, chat_template=GEMMA_STYLE)
    c = open_client(backend)
    messages = [{"role": "user", "content": [{"type": "text", "text": "Hi"}]}]
    body = {"messages": messages, "max_completion_tokens": 3, "max_tokens": 9}
    assert c.post("/v1/chat/completions", json=body).json()["choices"][0]["message"] == {
        "role": "assistant",
        "content": "Hel",
    }
    prompt = "<start_of_turn>user\nHi<end_of_turn>\n<start_of_turn>model\n"
    assert backend.requests[0].prompt_tokens == tuple(ord(c) for c in prompt)


def test_chat_stream_role_then_content_then_finish(client):
    body = {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4, "stream": True}
    chunks = chunks_of(client.post("/v1/chat/completions", json=body))
    assert chunks[-1] == "[DONE]"
    pieces = chunks[:-1]
    assert all(c["object"] == "chat.completion.chunk" for c in pieces)
    assert pieces[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in pieces) == "Hell"
    assert pieces[-1]["choices"][0] == {
        "index": 0,
        "delta": {},
        "logprobs": None,
        "finish_reason": "length",
    }


def test_no_chat_template_is_a_400(open_client):
    c = open_client(FakeBackend(builtin_template=False))
    response = c.post("/v1/chat/completions", json={"messages": [{"role": "user"}]})
    assert "no chat template" in assert_error(response, 400)["message"]


def test_template_raise_exception_is_a_400(open_client):
    template = "{{ raise_exception('roles must alternate') }}"
    c = open_client(FakeBackend(chat_template=template))
    body = {"messages": [{"role": "user", "content": "x"}]}
    error = assert_error(c.post("/v1/chat/completions", json=body), 400)
    assert "roles must alternate" in error["message"]


# -- errors ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"prompt": "Hi", "n": 17}, "n"),
        ({"prompt": "Hi", "temperature": 3}, "temperature"),
        ({"prompt": "Hi", "max_tokens": 0}, "max_tokens"),
        ({"prompt": ["a", "b"]}, "prompt"),
        ({"prompt": "Hi", "stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({"prompt": "Hi", "logit_bias": {"abc": 1}}, "logit_bias"),
        ({"prompt": "Hi", "seed": -5}, "seed"),
        ({}, "prompt"),
        ({"prompt": "Hi", "logprobs": 21}, "logprobs"),
        ({"prompt": "Hi", "grammar": "x", "response_format": {"type": "json_object"}}, None),
        ({"prompt": "Hi", "response_format": {"type": "json_schema"}}, "response_format"),
    ],
)
def test_validation_errors_are_400_in_openai_shape(client, body, param):
    error = assert_error(client.post("/v1/completions", json=body), 400)
    if param is not None:
        assert error["param"].split(".")[0] == param


def test_chat_validation(client):
    assert_error(client.post("/v1/chat/completions", json={"messages": []}), 400, "messages")
    body = {"messages": [{"role": "wizard", "content": "x"}]}
    assert_error(client.post("/v1/chat/completions", json=body), 400)
    image = [{"type": "image_url", "image_url": {"url": "data:"}}]
    body = {"messages": [{"role": "user", "content": image}]}
    # a model served without a projector takes no images; the error says how to serve one
    error = assert_error(client.post("/v1/chat/completions", json=body), 400)
    assert "--mmproj" in error["message"]
    assert error["param"] == "messages[0].content[0].image_url.url"
    audio = [{"type": "input_audio", "input_audio": {"data": "UklGRg==", "format": "wav"}}]
    body = {"messages": [{"role": "user", "content": audio}]}
    # nor audio: the part is named, before its data is read
    error = assert_error(client.post("/v1/chat/completions", json=body), 400)
    assert "takes no audio" in error["message"] and "--mmproj" in error["message"]
    assert error["param"] == "messages[0].content[0].input_audio.data"
    audio = [{"type": "input_audio", "input_audio": {"data": "x", "format": "ogg"}}]
    body = {"messages": [{"role": "user", "content": audio}]}
    error = assert_error(client.post("/v1/chat/completions", json=body), 400)
    assert "format" in error["message"] and "'wav' or 'mp3'" in error["message"]
    a_file = [{"type": "file", "file": {"file_id": "f"}}]
    body = {"messages": [{"role": "user", "content": a_file}]}
    error = assert_error(client.post("/v1/chat/completions", json=body), 400)
    assert "'file'" in error["message"] and "input_audio" in error["message"]
    body = {"messages": [{"role": "user", "content": "x"}], "tools": [{"type": "function"}]}
    assert_error(client.post("/v1/chat/completions", json=body), 400)


def test_malformed_json_and_out_of_vocab_ids(client):
    response = client.post(
        "/v1/completions", content=b"{nope", headers={"content-type": "application/json"}
    )
    assert "JSON" in assert_error(response, 400)["message"]
    assert_error(client.post("/v1/completions", json={"prompt": [-1]}), 400, "prompt")
    body = {"prompt": "Hi", "logit_bias": {str(N_VOCAB): 1}}
    assert_error(client.post("/v1/completions", json=body), 400, "logit_bias")


def test_bad_json_schema_is_a_400(client):
    fmt = {"type": "json_schema", "json_schema": {"schema": {"type": "nope"}}}
    response = client.post("/v1/completions", json={"prompt": "Hi", "response_format": fmt})
    assert "grammar" in assert_error(response, 400)["message"]


def test_context_overflow(client):
    response = client.post("/v1/completions", json={"prompt": "Hi", "max_tokens": 255})
    error = assert_error(response, 400, "max_tokens")
    assert error["code"] == "context_length_exceeded"
    body = {"messages": [{"role": "user", "content": "x" * 300}]}
    error = assert_error(client.post("/v1/chat/completions", json=body), 400, "messages")
    assert error["code"] == "context_length_exceeded"


def test_not_ready_is_503(open_client):
    gate = threading.Event()
    c = open_client(FakeBackend(load_gate=gate), loaded=False)
    # Listed while it loads, with its state; generation waits for it: 503.
    assert c.get("/v1/models").json()["data"][0]["state"] == "loading"
    assert_error(c.post("/v1/completions", json={"prompt": "Hi"}), 503)
    gate.set()
    model_loaded(c)


def test_queue_full_is_429_with_retry_after(client, monkeypatch):
    def full(*args, **kwargs):
        raise QueueFullError(64, 64)

    monkeypatch.setattr(client.app.state.fleet.default.scheduler, "submit", full)
    response = client.post("/v1/completions", json={"prompt": "Hi"})
    error = assert_error(response, 429)
    assert error["code"] == "rate_limit_exceeded" and response.headers["retry-after"] == "1"


def test_models(client):
    body = client.get("/v1/models").json()
    assert body["object"] == "list"
    [card] = body["data"]
    assert card["id"] == "fake" and card["object"] == "model"
    assert client.get("/v1/models/fake").json() == card
    assert assert_error(client.get("/v1/models/other"), 404)["code"] == "model_not_found"


def test_a_closed_stream_cancels_the_job(open_client):
    backend = FakeBackend(script="x" * 2000, delay=0.01, n_ctx=4096)
    c = open_client(backend)
    body = {"prompt": "Hi", "max_tokens": 2000, "stream": True}
    with c.stream("POST", "/v1/completions", json=body) as response:
        for line in response.iter_lines():
            if line.startswith("data: "):
                break
    # The whole script takes 20 s; a cancelled job ends at its next token.
    assert c.app.state.fleet.default.scheduler.wait_drained(3)


def test_a_failure_mid_generation(open_client):
    # Two tokens, then the sequence fails.
    c = open_client(FakeBackend(n_ctx=256, fail=RuntimeError("the device fell over"), fail_at=2))
    error = assert_error(c.post("/v1/completions", json={"prompt": "Hi"}), 500)
    assert error["type"] == "server_error" and "fell over" in error["message"]
    body = {"messages": [{"role": "user", "content": "x"}], "stream": True}
    chunks = chunks_of(c.post("/v1/chat/completions", json=body))
    assert "[DONE]" not in chunks  # the stream ends with the error, as OpenAI's does
    assert chunks[-1]["error"]["type"] == "server_error"
    assert "".join(ch["choices"][0]["delta"].get("content", "") for ch in chunks[:-1]) == "He"


def test_developer_role_is_the_system_role(client, backend):
    messages = [{"role": "developer", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    assert client.post("/v1/chat/completions", json={"messages": messages}).status_code == 200
    prompt = "".join(chr(t) for t in backend.requests[0].prompt_tokens)
    assert prompt.startswith("<system>Be brief.</system>")


def test_n_choices_whole_and_streamed(client, backend):
    body = {"prompt": "Hi", "max_tokens": 3, "n": 3, "seed": 7}
    answer = client.post("/v1/completions", json=body).json()
    assert [c["index"] for c in answer["choices"]] == [0, 1, 2]
    assert all(c["text"] == "Hel" for c in answer["choices"])
    assert answer["usage"]["prompt_tokens"] == 2 and answer["usage"]["completion_tokens"] == 9
    # Each choice has its own seed: the request's, then the next ones.
    assert [r.sampling.seed for r in backend.requests[-3:]] == [7, 8, 9]
    chat = {"messages": [{"role": "user", "content": "x"}], "max_tokens": 2, "n": 2}
    chunks = chunks_of(client.post("/v1/chat/completions", json=chat | {"stream": True}))
    assert chunks[-1] == "[DONE]"
    by_choice: dict[int, str] = {}
    finishes = {}
    for ch in chunks[:-1]:
        [choice] = ch["choices"]
        by_choice[choice["index"]] = by_choice.get(choice["index"], "") + (
            choice["delta"].get("content") or ""
        )
        if choice["finish_reason"]:
            finishes[choice["index"]] = choice["finish_reason"]
    assert by_choice == {0: "He", 1: "He"} and finishes == {0: "length", 1: "length"}


def test_a_chat_deleted_by_its_job_id_is_reported_as_cancelled(open_client):
    # A /v1 request's job id is its reply id: DELETE /jobs/{id} ends it, and the stream says
    # it was cancelled (not that the worker is stopping).
    backend = FakeBackend(script="x" * 2000, delay=0.01, n_ctx=4096)
    c = open_client(backend)
    body = {"messages": [{"role": "user", "content": "Hi"}], "stream": True}
    frames = []
    with c.stream("POST", "/v1/chat/completions", json=body) as response:
        for line in response.iter_lines():
            if not line.startswith("data: "):
                continue
            frames.append(json.loads(line.removeprefix("data: ")))
            if len(frames) == 2:  # the role chunk, then the first text
                assert c.delete(f"/jobs/{frames[0]['id']}").status_code == 202
    error = frames[-1]["error"]
    assert error["code"] == "request_cancelled" and "cancelled" in error["message"]
