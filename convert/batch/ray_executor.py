"""Run batch jobs as Ray tasks: the same job processes, scheduled by Ray across a cluster.

Each job is a Ray task that runs `python -m llorch.convert.batch.job` on whichever node Ray
picks, with the job's memory estimate as its `memory` resource request, so Ray's scheduler
(not llorch) keeps nodes within their memory. Outputs go to the batch's output folder, which
must be a path every node shares. Events of a job arrive when its task ends. `ray` is an
optional dependency (`pip install -e ".[cluster]"`).
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from typing import Any

from llorch.convert.batch.executor import Event, LocalExecutor, Outcome, Task, _describe_exit


def run_job_process(spec: dict[str, Any]) -> tuple[int, list[str], list[str]]:
    """On the node: the job in its own process (isolated as locally); (status, events, stderr)."""
    with tempfile.TemporaryFile("w+", encoding="utf-8") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "llorch.convert.batch.job", json.dumps(spec)],
            stdin=subprocess.PIPE,  # kept open while it runs: the job stops if this task dies
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
        )
        assert proc.stdout is not None
        lines = proc.stdout.readlines()
        code = proc.wait()
        with contextlib.suppress(OSError):
            assert proc.stdin is not None
            proc.stdin.close()
        err.seek(0)
        return code, lines, err.read().splitlines()[-20:]


class RayExecutor:
    """convert_batch's executor over Ray; `address` None starts or joins a local instance."""

    def __init__(self, *, address: str | None = None, max_ram: int | None = None) -> None:
        del max_ram  # Ray accounts memory per node from each task's request
        self.address = address

    def run(self, tasks: Sequence[Task], on_event: Callable[[Event], None]) -> dict[str, Outcome]:
        import ray

        if not ray.is_initialized():
            ray.init(address=self.address, include_dashboard=False, log_to_driver=False)
        remote = ray.remote(num_cpus=1, max_retries=0)(run_job_process)
        refs = {}
        for task in tasks:
            refs[remote.options(memory=task.estimate).remote(task.spec)] = task
            on_event({"event": "job_start", "job": task.id, "estimate": task.estimate})
        outcomes = {t.id: Outcome() for t in tasks}
        pending = list(refs)
        try:
            while pending:
                done, pending = ray.wait(pending, num_returns=1)
                self._finish(ray, done[0], refs[done[0]], outcomes, on_event)
        except BaseException:
            for ref in pending:  # a killed task's worker closes its job's stdin: the job stops
                ray.cancel(ref, force=True)
            raise
        return outcomes

    @staticmethod
    def _finish(
        ray: Any,
        ref: Any,
        task: Task,
        outcomes: dict[str, Outcome],
        on_event: Callable[[Event], None],
    ) -> None:
        outcome = outcomes[task.id]
        try:
            code, lines, tail = ray.get(ref)
        except ray.exceptions.RayError as exc:  # the task's worker died, or Ray failed it
            code, lines, tail = 1, [], []
            outcome.error = str(exc).strip().splitlines()[0] if str(exc).strip() else repr(exc)
            outcome.error_type = type(exc).__name__
        outcome.stderr_tail.extend(tail)
        for line in lines:
            LocalExecutor._event(task.id, line, outcome, on_event)
        outcome.returncode = code
        if code != 0 and outcome.error is None:
            outcome.error, outcome.error_type = _describe_exit(code, tail), "JobCrashed"
        on_event({"event": "job_end", "job": task.id, "ok": code == 0, "error": outcome.error})
