"""Audio served end to end: the tiny random Voxtral of tests/tiny_alm.py (2 stacked frames:
the layout the vendored mtmd runs; released Voxtrals stack 4, on which it aborts) served with
its projector (`--mmproj`) over a real socket.

- `/v1/models` says the model reads audio;
- `/execute` with a WAV clip for the prompt's marker answers with the greedy tokens of
  llama.cpp's own path on the same files, prompt and samples (mtmd_tokenize,
  mtmd_helper_eval_chunks, one token at a time): the clip is a float WAV, which miniaudio
  reads without conversion, so both sides see the same samples;
- the official openai client's `input_audio` part is served, its prompt counting the clip's
  tokens, and a second turn about the same clip reuses them (the prompt cache keys the clip
  by its decoded samples); an image part for this model, a clip over --max-audio-seconds, a
  corrupt clip and a clip whose part names another format are 400s naming the part.
"""

from __future__ import annotations

import base64
from pathlib import Path

import httpx
import pytest
import tiny_alm
from support import THREADS, start_worker
from tiny_alm import float_wav

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

N = 6
MARKER = "<__media__>"
PROMPT = f"[INST]{MARKER}describe it[/INST]"


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory):
    alm = tiny_alm.cached(tmp_path_factory.getbasetemp(), stack=2)
    worker = start_worker(
        tmp_path_factory.mktemp("audio"),
        *("--model", f"voxtral={alm.text}", "--mmproj", f"voxtral={alm.mmproj}"),
        *("--ctx-size", "1024", "--parallel", "2", "--threads", str(THREADS)),
        "--max-audio-seconds",
        "5",
    )
    try:
        yield alm, worker.url
    finally:
        worker.stop()


def test_execute_answers_as_llama_cpps_own_path(served, tmp_path: Path) -> None:
    alm, url = served
    listed = httpx.get(f"{url}/v1/models", timeout=30).json()["data"]
    assert [m["inputs"] for m in listed] == [["text", "audio"]]
    firsts = []
    for seed in (0, 1):
        samples = tiny_alm.pcm(seed)
        theirs = tiny_alm.mtmd_greedy(
            alm.text, alm.mmproj, samples, tmp_path / str(seed), PROMPT, N
        )
        ours = tiny_alm.execute(url, PROMPT, float_wav(samples), N, f"audio-{seed}")
        tiny_alm.assert_answers_as(ours, theirs)
        firsts.append(ours.logprobs[0])
    # the random model's greedy tokens may agree for two clips; their probabilities do not
    assert abs(firsts[0] - firsts[1]) > 1e-4


def _part(clip: bytes, fmt: str = "wav") -> dict:
    data = base64.b64encode(clip).decode()
    return {"type": "input_audio", "input_audio": {"data": data, "format": fmt}}


def test_the_openai_client_sends_a_clip_and_a_second_turn_reuses_it(served) -> None:
    from openai import OpenAI

    _, url = served
    client = OpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0)
    clip = float_wav(tiny_alm.pcm(3))
    messages = [{"role": "user", "content": [{"type": "text", "text": "hear "}, _part(clip)]}]
    first = client.chat.completions.create(
        model="voxtral", messages=messages, max_tokens=N, temperature=0
    )
    assert first.usage is not None
    # the clip's rows (a 30 s window, 375 rows here) are in the prompt
    assert first.usage.prompt_tokens > tiny_alm.CHUNK_ROWS
    again = client.chat.completions.create(
        model="voxtral", messages=messages, max_tokens=N, temperature=0
    )
    assert again.choices[0].message.content == first.choices[0].message.content
    details = again.usage.prompt_tokens_details if again.usage else None
    assert details is not None and details.cached_tokens is not None
    assert details.cached_tokens >= tiny_alm.CHUNK_ROWS  # not encoded again


@pytest.mark.parametrize(
    ("part", "said"),
    [
        (lambda: _part(float_wav(tiny_alm.pcm(0, seconds=6.0))), "at most 5 s"),
        (lambda: _part(float_wav(tiny_alm.pcm(0))[:-400]), "truncated WAV"),
        (lambda: _part(b"RIFF\x00\x00\x00\x00WAVEjunk"), "without a data chunk"),
        (lambda: _part(float_wav(tiny_alm.pcm(0)), "mp3"), "the part says mp3, its data is wav"),
        (lambda: _part(b"OggS" + bytes(64)), "not an audio clip llorch reads"),
    ],
)
def test_bad_clips_are_400s_naming_the_part(served, part, said) -> None:
    _, url = served
    message = {"role": "user", "content": [part()]}
    body = {"model": "voxtral", "max_tokens": 2, "messages": [message]}
    reply = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=60)
    assert reply.status_code == 400, reply.text
    error = reply.json()["error"]
    assert said in error["message"]
    assert error["param"] == "messages[0].content[0].input_audio.data"


def test_an_image_for_an_audio_model_is_a_400(served) -> None:
    _, url = served
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}
    body = {"model": "voxtral", "max_tokens": 2, "messages": [{"role": "user", "content": [image]}]}
    reply = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=60)
    assert reply.status_code == 400
    assert "takes no images; its projector reads audio" in reply.json()["error"]["message"]


def test_a_voxtral_projector_mtmd_aborts_on_is_refused_at_load(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """Voxtral as released (4 stacked frames): the vendored mtmd would abort the process at
    the first clip (tests/convert/test_voxtral_projector.py shows it in a child process); the
    load refuses the projector instead, saying why."""
    from llorch.worker.backend.errors import ModelLoadError
    from llorch.worker.backend.llama import LlamaCppBackend
    from llorch.worker.backend.protocol import LoadOptions

    alm = tiny_alm.cached(tmp_path_factory.getbasetemp(), stack=4)
    backend = LlamaCppBackend()
    try:
        options = LoadOptions(ctx_size=512, parallel=1, threads=THREADS, mmproj=alm.mmproj)
        with pytest.raises(ModelLoadError, match=r"stacking 4 frames.*issue 25496"):
            backend.load(alm.text, options)
    finally:
        backend.close()


def test_the_responses_api_takes_an_input_audio_part(served) -> None:
    from openai import OpenAI

    _, url = served
    client = OpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0)
    clip = base64.b64encode(float_wav(tiny_alm.pcm(4))).decode()
    content = [
        {"type": "input_text", "text": "hear "},
        {"type": "input_audio", "input_audio": {"data": clip, "format": "wav"}},
    ]
    response = client.responses.create(
        model="voxtral",
        input=[{"role": "user", "content": content}],  # type: ignore[list-item]
        max_output_tokens=N,
        temperature=0,
    )
    # the tiny random model writes on to max_output_tokens
    assert response.status in ("completed", "incomplete") and response.usage is not None
    assert response.usage.input_tokens > tiny_alm.CHUNK_ROWS
