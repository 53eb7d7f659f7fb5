"""Fixtures shared by the tests: the real default model, a loaded backend, a worker process."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import THREADS, WorkerProcess, start_worker

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session")
def model_path() -> Path:
    from llorch.worker.models import default_model_path

    return default_model_path()


@pytest.fixture(scope="session")
def backend(model_path: Path) -> Iterator[object]:
    from llorch.worker.backend.llama import LlamaCppBackend
    from llorch.worker.backend.protocol import LoadOptions

    instance = LlamaCppBackend()
    instance.load(model_path, LoadOptions(ctx_size=1024, threads=THREADS))
    yield instance
    instance.close()


@pytest.fixture(scope="session")
def worker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WorkerProcess]:
    # Gemma alone: the built-in chat model has tests of its own (test_default_chat_model.py).
    proc = start_worker(
        tmp_path_factory.mktemp("worker"),
        "--ctx-size",
        "2048",
        "--threads",
        str(THREADS),
        "--no-chat-model",
    )
    yield proc
    proc.stop()
