"""Gemma 4's audio served end to end: the tiny random Gemma 4 with both towers
(tests/tiny_alm.py `cached_gemma4`: its text part and the two-tower projector, clip `gemma4v`
and `gemma4a`, as llorch converts them) served with `--mmproj` over a real socket reads images
and audio; `/execute` with a WAV clip answers with the greedy tokens and log-probabilities of
llama.cpp's own mtmd path on the same files, prompt and samples, for two clips; a chat
request with an `input_audio` part and an image part together is served, the prompt holding
both."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import httpx
import numpy as np
import pytest
import tiny_alm
import tiny_vlm
from support import THREADS, start_worker
from tiny_alm import float_wav

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

N = 6
SECONDS, N_AUDIO = 2.56, tiny_alm.GEMMA4_SECONDS[2.56]
PROMPT = "<|turn>user\nlisten <__media__><turn|>\n<|turn>model\n"


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory):
    alm = tiny_alm.cached_gemma4(tmp_path_factory.getbasetemp())
    worker = start_worker(
        tmp_path_factory.mktemp("gemma4-audio"),
        *("--model", f"gemma={alm.text}", "--mmproj", f"gemma={alm.mmproj}"),
        *("--ctx-size", "1024", "--parallel", "2", "--threads", str(THREADS)),
    )
    try:
        yield alm, worker.url
    finally:
        worker.stop()


def test_execute_answers_as_llama_cpps_own_path(served, tmp_path: Path) -> None:
    alm, url = served
    listed = httpx.get(f"{url}/v1/models", timeout=30).json()["data"]
    assert [m["inputs"] for m in listed] == [["text", "vision", "audio"]]
    firsts = []
    for seed in (0, 1):
        samples = tiny_alm.pcm(seed, seconds=SECONDS)
        theirs = tiny_alm.mtmd_greedy(
            alm.text, alm.mmproj, samples, tmp_path / str(seed), PROMPT, N
        )
        ours = tiny_alm.execute(url, PROMPT, float_wav(samples), N, f"g4-{seed}")
        tiny_alm.assert_answers_as(ours, theirs)
        assert ours.prompt_tokens == len(theirs["before"]) + N_AUDIO + len(theirs["after"])
        firsts.append(ours.logprobs[0])
    assert abs(firsts[0] - firsts[1]) > 1e-4  # the clip is read


def test_a_chat_with_an_image_and_a_clip(served) -> None:
    from PIL import Image

    _, url = served
    size = tiny_vlm.GEMMA4_IMAGE_SIZE
    picture, _ = tiny_vlm.image(0, size=size)
    png = io.BytesIO()
    Image.fromarray(np.frombuffer(picture.rgb, np.uint8).reshape(size, size, 3)).save(png, "PNG")
    image_uri = "data:image/png;base64," + base64.b64encode(png.getvalue()).decode()
    clip = base64.b64encode(float_wav(tiny_alm.pcm(2, seconds=SECONDS))).decode()
    content = [
        {"type": "image_url", "image_url": {"url": image_uri}},
        {"type": "text", "text": "and "},
        {"type": "input_audio", "input_audio": {"data": clip, "format": "wav"}},
    ]
    body = {"model": "gemma", "max_tokens": 2, "messages": [{"role": "user", "content": content}]}
    reply = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=120)
    assert reply.status_code == 200, reply.text
    usage = reply.json()["usage"]
    assert usage["prompt_tokens"] > tiny_vlm.GEMMA4_IMAGE_TOKENS + N_AUDIO
