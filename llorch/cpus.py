"""How many CPU threads llama.cpp gets when none are asked for."""

from __future__ import annotations

import os


def usable_cpus() -> int:
    """The CPUs this process may run on: a container's cpuset or `taskset` narrows them, which
    os.cpu_count() does not see (macOS has no affinity call: all of them)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1


def default_threads() -> int:
    # llama.cpp's own default is the number of physical cores; counting SMT siblings slows
    # decoding down (its threads meet at a spinning barrier, and a sibling is no core). More
    # threads than usable CPUs is worse still: a descheduled thread holds every barrier.
    count = usable_cpus()
    return max(1, count // 2) if count > 4 else count
