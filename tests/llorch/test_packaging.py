"""The wheel holds one import package, `llorch`: worker/ and convert/ ship inside it, so that
installing llorch never adds (or, when uninstalled, removes) top-level `worker` or `convert`
packages in site-packages."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow


def test_the_wheel_has_one_top_level_package(tmp_path: Path) -> None:
    # Built from a copy, so no build tool writes into the repository (build/ holds our own
    # build scripts, not a build tool's scratch files).
    source = tmp_path / "src"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, source / name)
    for name in ("llorch", "worker", "convert"):
        shutil.copytree(
            REPO / name, source / name, symlinks=True, ignore=shutil.ignore_patterns("__pycache__")
        )
    wheels = tmp_path / "wheels"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(wheels),
            str(source),
        ],
        check=True,
        capture_output=True,
    )
    [wheel] = wheels.glob("llorch-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert top == {"llorch"}
    # The folders are there, as subpackages, with their files (not links).
    for module in ("llorch/worker/engine.py", "llorch/worker/http/app.py", "llorch/convert/api.py"):
        assert module in names
    assert "llorch/convert/families/llama.py" in names
