"""One module per architecture family; llorch.detector.table names the module per HF name."""

from __future__ import annotations

import importlib
from typing import cast

from llorch.convert.families.base import Family


def load_family(name: str) -> Family:
    return cast(Family, importlib.import_module(f"llorch.convert.families.{name}"))
