"""`serve --model HF_FOLDER` of a multimodal checkpoint brings its projector: the tiny random
Gemma 3 vision model (tests/tiny_vlm.py) served from its Hugging Face folder with no --mmproj
reads images as the same converted files served with --mmproj do, in one worker over a real
socket, through the official openai client."""

from __future__ import annotations

import base64
import io
from pathlib import Path
from typing import Any

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


def _chat(client: Any, model: str, image: bytes) -> tuple[str, int]:
    uri = "data:image/png;base64," + base64.b64encode(image).decode()
    reply = client.chat.completions.create(
        model=model,
        max_tokens=12,
        temperature=0,
        messages=[
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "describe "},
                    {"type": "image_url", "image_url": {"url": uri}},
                ],
            }
        ],
    )
    return reply.choices[0].message.content, reply.usage.prompt_tokens


def test_an_hf_folder_brings_its_projector(
    tmp_path: Path, tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    from openai import OpenAI

    from llorch.convert.cache import cached_gguf, cached_projector

    vlm = tiny_vlm.cached(tmp_path_factory.getbasetemp())
    cache = tmp_path / "cache"
    monkeypatch.setenv("LLORCH_CACHE", str(cache))  # inherited by the worker process
    # Converted here first, as the worker would: the "given" model names the same files.
    text = cached_gguf(vlm.folder)
    projector = cached_projector(text)
    assert projector is not None and projector.name.endswith("-mmproj-f16.gguf")
    worker = start_worker(
        tmp_path, "--model", f"folder={vlm.folder}", "--model", f"given={text}",
        "--mmproj", f"given={projector}", "--ctx-size", "512", "--parallel", "1",
        "--threads", str(THREADS),
    )  # fmt: skip
    try:
        listed = httpx.get(f"{worker.url}/v1/models", timeout=30).json()["data"]
        assert {m["id"]: m["inputs"] for m in listed} == {
            "folder": ["text", "vision"],
            "given": ["text", "vision"],
        }
        capacity = httpx.get(f"{worker.url}/capacity", timeout=30).json()
        assert capacity["inputs"] == ["text", "vision"]  # the first model's: the folder's
        health = httpx.get(f"{worker.url}/health", timeout=30).json()
        assert Path(health["model"]["path"]) == text  # served from the cache, not converted again
        client = OpenAI(base_url=f"{worker.url}/v1", api_key="unused")
        answers = []
        for image in (_png(0), _png(5)):
            ours = _chat(client, "folder", image)
            assert ours == _chat(client, "given", image)
            assert ours[1] > tiny_vlm.IMAGE_TOKENS  # the image's tokens were read
            answers.append(ours[0])
        assert answers[0] != answers[1], "the answer does not depend on the image"
    finally:
        assert worker.stop() == 0
