"""What the bench scripts share: a sibling script loaded as a module, and a section of
docs/BENCHMARKS.md rewritten between its markers. Standard library only: bench/gpu.py runs
where little else is installed. The scripts run as `python bench/NAME.py`, so this folder is
on their import path."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

REPO = Path(__file__).resolve().parent.parent
DOC = REPO / "docs" / "BENCHMARKS.md"


def load(name: str, path: Path) -> ModuleType:
    """The file at `path` as module `name` (registered first: dataclasses look their module
    up while the file runs)."""
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def write_section(text: str, begin: str, end: str) -> None:
    """`text` (which starts with `begin` and ends with `end`) in place of the section between
    those markers in docs/BENCHMARKS.md, or after the rest when there is none yet."""
    doc = DOC.read_text(encoding="utf-8") if DOC.is_file() else "# Benchmarks\n"
    if begin in doc:
        head, rest = doc.split(begin, 1)
        doc = head + text + rest.split(end, 1)[1]
    else:
        doc = doc.rstrip("\n") + "\n\n" + text + "\n"
    DOC.write_text(doc, encoding="utf-8")
