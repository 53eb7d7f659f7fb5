"""llorch.digests.file_sha256: remembered across processes by file identity, real sha256 always.

Each process below is a fresh interpreter, so nothing is remembered in memory: what it does not
read it took from the memo on disk. Reads are seen through Python's audit hook on `open`.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from llorch import digests

_CHILD = """
import json, os, sys
target = os.path.realpath(sys.argv[1])
opened = []

def hook(event, args):
    if event == "open" and args and isinstance(args[0], (str, bytes, os.PathLike)):
        if os.path.realpath(os.fsdecode(args[0])) == target:
            opened.append(args[1])

sys.addaudithook(hook)
from llorch.digests import file_sha256
print(json.dumps({"digest": file_sha256(sys.argv[1]), "opened": len(opened)}))
"""


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """LLORCH_CACHE names the GGUF folder; the memo lives in the folder that holds it."""
    monkeypatch.setenv("LLORCH_CACHE", str(tmp_path / "llorch" / "gguf"))
    return tmp_path / "llorch"


def _in_new_process(path: Path) -> dict:
    proc = subprocess.run(
        [sys.executable, "-c", _CHILD, str(path)],
        capture_output=True,
        text=True,
        check=True,
        env=os.environ.copy(),
    )
    return json.loads(proc.stdout)


def test_a_restart_does_not_read_an_unchanged_file_again(tmp_path: Path, cache: Path) -> None:
    weights = tmp_path / "model.gguf"
    weights.write_bytes(os.urandom(3 << 20))
    want = hashlib.sha256(weights.read_bytes()).hexdigest()

    first = _in_new_process(weights)
    assert first == {"digest": want, "opened": 1}
    assert (cache / digests.MEMO_NAME).is_file()
    assert _in_new_process(weights) == {"digest": want, "opened": 0}

    stamp = weights.stat().st_mtime_ns
    os.utime(weights, ns=(stamp + 10**9, stamp + 10**9))  # same bytes, new mtime: read again
    assert _in_new_process(weights) == {"digest": want, "opened": 1}

    weights.write_bytes(b"other content")  # new size and content: the new digest
    changed = _in_new_process(weights)
    assert changed == {"digest": hashlib.sha256(b"other content").hexdigest(), "opened": 1}
    assert _in_new_process(weights)["opened"] == 0
    assert [p.name for p in cache.iterdir()] == [digests.MEMO_NAME]  # no temporary left


def test_a_damaged_memo_is_rebuilt(tmp_path: Path, cache: Path) -> None:
    data = tmp_path / "f.bin"
    data.write_bytes(b"payload")
    cache.mkdir(parents=True)
    memo = cache / digests.MEMO_NAME
    memo.write_text('{"truncated": [1, 2')
    assert _in_new_process(data) == {"digest": hashlib.sha256(b"payload").hexdigest(), "opened": 1}
    entries = json.loads(memo.read_text())
    assert str(data.resolve()) in entries
    assert _in_new_process(data)["opened"] == 0


def test_a_forged_memo_entry_of_another_identity_is_not_trusted(
    tmp_path: Path, cache: Path
) -> None:
    data = tmp_path / "f.bin"
    data.write_bytes(b"payload")
    st = data.stat()
    cache.mkdir(parents=True)
    stale = {str(data.resolve()): [st.st_size, st.st_mtime_ns - 1, st.st_ino, "0" * 64]}
    (cache / digests.MEMO_NAME).write_text(json.dumps(stale))
    assert _in_new_process(data)["digest"] == hashlib.sha256(b"payload").hexdigest()


def test_hugging_face_blob_names_are_the_digest(tmp_path: Path, cache: Path) -> None:
    """LFS blobs are named by their sha256: not read. Git blobs (sha1 names) are hashed."""
    big, small = b"weights" * 1000, b'{"model_type": "llama"}'
    blobs = tmp_path / "models--org--name" / "blobs"
    snapshot = tmp_path / "models--org--name" / "snapshots" / "abc"
    blobs.mkdir(parents=True)
    snapshot.mkdir(parents=True)
    lfs_name = hashlib.sha256(big).hexdigest()
    git_name = hashlib.sha1(b"blob %d\0" % len(small) + small).hexdigest()
    (blobs / lfs_name).write_bytes(big)
    (blobs / git_name).write_bytes(small)
    (snapshot / "model.safetensors").symlink_to(f"../../blobs/{lfs_name}")
    (snapshot / "config.json").symlink_to(f"../../blobs/{git_name}")
    assert _in_new_process(snapshot / "model.safetensors") == {"digest": lfs_name, "opened": 0}
    small_run = _in_new_process(snapshot / "config.json")
    assert small_run == {"digest": hashlib.sha256(small).hexdigest(), "opened": 1}


def test_same_process_remembers_in_memory(tmp_path: Path, cache: Path) -> None:
    data = tmp_path / "f.bin"
    data.write_bytes(b"one")
    assert digests.file_sha256(data) == hashlib.sha256(b"one").hexdigest()
    (cache / digests.MEMO_NAME).unlink()  # the memory answers without the memo
    assert digests.file_sha256(data) == hashlib.sha256(b"one").hexdigest()
    assert not (cache / digests.MEMO_NAME).exists()


def test_processes_hashing_at_once_keep_every_entry(tmp_path: Path, cache: Path) -> None:
    """Parallel conversion jobs hash their sources at the same time; no entry may be lost."""
    groups = []
    for g in range(4):
        files = [tmp_path / f"g{g}-{i}.bin" for i in range(6)]
        for f in files:
            f.write_bytes(os.urandom(1 << 10))
        groups.append(files)
    script = (
        "import sys\nfrom llorch.digests import file_sha256\n"
        "for p in sys.argv[1:]: file_sha256(p)\n"
    )
    procs = [
        subprocess.Popen([sys.executable, "-c", script, *map(str, files)], env=os.environ.copy())
        for files in groups
    ]
    assert [p.wait() for p in procs] == [0] * len(procs)
    memo = json.loads((cache / digests.MEMO_NAME).read_text())
    want = {str(f.resolve()) for files in groups for f in files}
    assert want <= set(memo)
