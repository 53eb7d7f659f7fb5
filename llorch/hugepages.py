"""numpy's huge-page advice, off where it costs.

numpy asks the kernel to back every array of 4 MiB or more with huge pages
(madvise(MADV_HUGEPAGE), numpy 1.20's release notes); under transparent huge pages' default
`defrag = madvise`, each first touch of such an array may then compact memory synchronously.
Measured on this project's work: the quality pass's first measurement of a 76-chunk run took
15-16 s with the advice and 9-10 s without; reading the frame headers of 3 MB of MP3 data,
2.5 s against 0.26 s. The switch is numpy's own (`_set_madvise_hugepage`, private but kept
since 1.20); where a numpy lacks it, nothing changes.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import numpy as np


def set_huge_page_advice(on: bool) -> bool:
    """Turn numpy's advice on or off; whether it was on before."""
    multiarray = getattr(getattr(np, "_core", None), "multiarray", None)
    toggle = getattr(multiarray, "_set_madvise_hugepage", None)
    return bool(toggle(on)) if toggle is not None else on


@contextlib.contextmanager
def without_huge_page_advice() -> Iterator[None]:
    before = set_huge_page_advice(False)
    try:
        yield
    finally:
        set_huge_page_advice(before)
