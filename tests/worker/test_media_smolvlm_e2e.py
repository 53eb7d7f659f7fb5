"""SmolVLM served end to end: the tiny random SmolVLM (tests/tiny_vlm.py, family "smolvlm")
served from its Hugging Face folder, whose projector (clip `idefics3`) the conversion cache
writes beside the text part, answers chat requests with an image in one worker over a real
socket: the prompt holds both of mtmd's chunks of the image (its tile and the overview) and
the answer depends on the image."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import httpx
import numpy as np
import pytest
import tiny_vlm
from support import THREADS, start_worker

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def _png(seed: int) -> bytes:
    from PIL import Image

    size = tiny_vlm.IMAGE_SIZE
    pixels = np.random.default_rng(seed).integers(0, 255, (size, size, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="PNG")
    return out.getvalue()


def _chat(url: str, image: bytes | None) -> tuple[str, int]:
    content: list[dict[str, object]] = [{"type": "text", "text": "describe "}]
    if image is not None:
        uri = "data:image/png;base64," + base64.b64encode(image).decode()
        content.append({"type": "image_url", "image_url": {"url": uri}})
    body = {
        "model": "smolvlm",
        "max_tokens": 8,
        "temperature": 0,
        "messages": [{"role": "user", "content": content}],
    }
    reply = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=60)
    assert reply.status_code == 200, reply.text
    data = reply.json()
    return data["choices"][0]["message"]["content"], data["usage"]["prompt_tokens"]


def test_a_smolvlm_folder_is_served_with_its_projector(
    tmp_path: Path, tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    vlm = tiny_vlm.cached(tmp_path_factory.getbasetemp(), "smolvlm")
    monkeypatch.setenv("LLORCH_CACHE", str(tmp_path / "cache"))  # inherited by the worker
    worker = start_worker(
        tmp_path, "--model", f"smolvlm={vlm.folder}", "--ctx-size", "512", "--parallel", "1",
        "--threads", str(THREADS),
    )  # fmt: skip
    try:
        listed = httpx.get(f"{worker.url}/v1/models", timeout=30).json()["data"]
        assert [m["inputs"] for m in listed] == [["text", "vision"]]
        _, text_only = _chat(worker.url, None)
        answers = []
        for seed in (0, 5):
            answer, n_prompt = _chat(worker.url, _png(seed))
            # the tile and the overview (16 tokens each) and their markup: 2 + 3 + 1 tokens
            assert n_prompt == text_only + 2 * tiny_vlm.IMAGE_TOKENS + 6
            answers.append(answer)
        assert answers[0] != answers[1], "the answer does not depend on the image"
    finally:
        assert worker.stop() == 0
