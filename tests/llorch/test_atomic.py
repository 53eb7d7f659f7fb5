"""llorch.atomic: the destination changes in one rename or not at all; no temporary is left."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from llorch import atomic


def test_success_replaces_the_destination_in_one_rename(tmp_path: Path) -> None:
    dst = tmp_path / "model.gguf"
    dst.write_bytes(b"old")
    with atomic.atomic_output(dst, ".partial") as tmp:
        assert tmp.parent == tmp_path and tmp.name.startswith(".model.gguf.")
        assert tmp.name.endswith(".partial") and tmp.read_bytes() == b""
        tmp.write_bytes(b"new")
        assert dst.read_bytes() == b"old"  # nothing visible before the block ends
    assert dst.read_bytes() == b"new"
    assert [p.name for p in tmp_path.iterdir()] == ["model.gguf"]


def test_failure_leaves_the_destination_as_it_was(tmp_path: Path) -> None:
    dst = tmp_path / "model.gguf"
    dst.write_bytes(b"old")
    stamp = dst.stat().st_mtime_ns
    with pytest.raises(KeyboardInterrupt), atomic.atomic_output(dst) as tmp:
        tmp.write_bytes(b"half")
        raise KeyboardInterrupt
    assert dst.read_bytes() == b"old" and dst.stat().st_mtime_ns == stamp
    assert [p.name for p in tmp_path.iterdir()] == ["model.gguf"]


def test_a_temporary_is_a_normal_file_and_never_anothers(tmp_path: Path) -> None:
    umask = os.umask(0o022)
    try:
        with atomic.temp_path(tmp_path / "x") as a, atomic.temp_path(tmp_path / "x") as b:
            assert a != b
            assert a.stat().st_mode & 0o777 == 0o644
    finally:
        os.umask(umask)
    assert list(tmp_path.iterdir()) == []


def test_an_unwritable_folder_raises_and_registers_nothing(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError), atomic.temp_path(tmp_path / "missing" / "x"):
        pass
    assert not atomic._open
