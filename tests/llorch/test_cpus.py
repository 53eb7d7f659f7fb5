"""The default thread count follows the CPUs a process may run on, not the machine's."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from llorch.cpus import default_threads, usable_cpus

pytestmark = pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="Linux affinity")


def test_usable_cpus_are_the_affinity_mask() -> None:
    assert usable_cpus() == len(os.sched_getaffinity(0))


def test_a_process_pinned_to_one_cpu_defaults_to_one_thread() -> None:
    # As `taskset -c N llorch serve` or a container's one-CPU set would start it.
    cpu = min(os.sched_getaffinity(0))
    script = (
        f"import os; os.sched_setaffinity(0, {{{cpu}}}); "
        "from llorch.cpus import default_threads; print(default_threads())"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "1"


def test_smt_siblings_are_not_counted_on_larger_machines(monkeypatch) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(16)))
    assert default_threads() == 8
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1})
    assert default_threads() == 2
