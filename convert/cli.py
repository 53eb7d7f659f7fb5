"""CLI for detection and conversion (filled in by the converter)."""

from __future__ import annotations

import argparse
from typing import Any


def register(subparsers: Any) -> None:
    del subparsers  # no converter commands yet


__all__ = ["argparse", "register"]
