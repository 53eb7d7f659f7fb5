"""Run jobs in their own processes, as many at a time as `jobs` and the memory bound allow.

A job starts when fewer than `jobs` run and its estimated peak fits in what the running jobs
leave of `max_ram` (a job larger than the whole bound runs alone rather than never). Each job
is `python -m llorch.convert.batch.job`: its JSON-line events are read by a thread and handed
to `on_event`; a non-zero exit, an exception or a kill (the OOM killer's SIGKILL included) is
that job's error and the others go on. Stopping the batch sends SIGTERM to every job, which
removes its temporaries; a batch killed outright closes the jobs' stdin, which they watch.
"""

from __future__ import annotations

import collections
import contextlib
import json
import queue
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import IO, Any

from llorch.convert.batch.memory import human

Event = dict[str, Any]
STOP_GRACE_S = 30.0
JOB_COMMAND = (sys.executable, "-m", "llorch.convert.batch.job")


@dataclass(frozen=True)
class Task:
    id: str
    spec: dict[str, Any]  # the job's JSON spec (llorch.convert.batch.job.run)
    estimate: int  # peak bytes


@dataclass
class Outcome:
    returncode: int | None = None
    error: str | None = None
    error_type: str | None = None
    stderr_tail: collections.deque[str] = field(
        default_factory=lambda: collections.deque(maxlen=20)
    )


def _describe_exit(code: int, tail: Sequence[str]) -> str:
    if code < 0:
        name = signal.Signals(-code).name
        hint = " (out of memory?)" if -code == signal.SIGKILL else ""
        return f"the job's process was killed by {name}{hint}"
    last = next((line.strip() for line in reversed(tail) if line.strip()), "")
    return f"the job's process exited with status {code}" + (f": {last}" if last else "")


def _pump(
    stream: IO[str], tag: str, job: str, inbox: queue.Queue[tuple[str, str, str | None]]
) -> None:
    for line in stream:
        inbox.put((tag, job, line))
    inbox.put((tag, job, None))


class LocalExecutor:
    """One child process per job on this machine."""

    def __init__(self, *, jobs: int, max_ram: int, command: Sequence[str] = JOB_COMMAND) -> None:
        self.jobs, self.max_ram, self.command = max(1, jobs), max_ram, list(command)

    def run(self, tasks: Sequence[Task], on_event: Callable[[Event], None]) -> dict[str, Outcome]:
        outcomes = {t.id: Outcome() for t in tasks}
        pending = list(tasks)
        running: dict[str, tuple[subprocess.Popen[str], Task, set[str]]] = {}
        inbox: queue.Queue[tuple[str, str, str | None]] = queue.Queue()
        waiting_said: set[str] = set()
        try:
            while pending or running:
                used = sum(t.estimate for _, t, _ in running.values())
                for task in list(pending):
                    if len(running) >= self.jobs:
                        break
                    if running and used + task.estimate > self.max_ram:
                        if task.id not in waiting_said:
                            waiting_said.add(task.id)
                            on_event(
                                {
                                    "event": "waiting",
                                    "job": task.id,
                                    "estimate": task.estimate,
                                    "reason": f"needs {human(task.estimate)}, "
                                    f"{human(max(0, self.max_ram - used))} of --max-ram left",
                                }
                            )
                        continue
                    pending.remove(task)
                    proc = self._start(task, inbox)
                    running[task.id] = (proc, task, {"out", "err"})
                    used += task.estimate
                    on_event(
                        {
                            "event": "job_start",
                            "job": task.id,
                            "pid": proc.pid,
                            "estimate": task.estimate,
                        }
                    )
                tag, job, line = inbox.get()
                proc, task, open_streams = running[job]
                if line is None:
                    open_streams.discard(tag)
                    if not open_streams:
                        self._finish(job, proc, outcomes[job], on_event)
                        del running[job]
                elif tag == "err":
                    outcomes[job].stderr_tail.append(line)
                else:
                    self._event(job, line, outcomes[job], on_event)
        except BaseException:
            self._stop_all([p for p, _, _ in running.values()])
            raise
        return outcomes

    def _start(
        self, task: Task, inbox: queue.Queue[tuple[str, str, str | None]]
    ) -> subprocess.Popen[str]:
        proc = subprocess.Popen(
            [*self.command, json.dumps(task.spec)],
            stdin=subprocess.PIPE,  # kept open: its end of file tells the job we are gone
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for tag, stream in (("out", proc.stdout), ("err", proc.stderr)):
            assert stream is not None
            threading.Thread(target=_pump, args=(stream, tag, task.id, inbox), daemon=True).start()
        return proc

    @staticmethod
    def _event(job: str, line: str, outcome: Outcome, on_event: Callable[[Event], None]) -> None:
        try:
            event = json.loads(line)
        except ValueError:
            outcome.stderr_tail.append(line)
            return
        if event.get("event") == "error":
            outcome.error, outcome.error_type = event.get("message"), event.get("type")
        on_event(event)

    @staticmethod
    def _finish(
        job: str, proc: subprocess.Popen[str], outcome: Outcome, on_event: Callable[[Event], None]
    ) -> None:
        outcome.returncode = proc.wait()
        if proc.stdin is not None:
            with contextlib.suppress(OSError):
                proc.stdin.close()
        if outcome.returncode != 0 and outcome.error is None:
            outcome.error = _describe_exit(outcome.returncode, list(outcome.stderr_tail))
            outcome.error_type = "JobCrashed"
        on_event(
            {"event": "job_end", "job": job, "ok": outcome.returncode == 0, "error": outcome.error}
        )

    @staticmethod
    def _stop_all(procs: list[subprocess.Popen[str]]) -> None:
        for proc in procs:
            with contextlib.suppress(OSError):
                proc.send_signal(signal.SIGTERM)  # the job unwinds, removing its temporaries
        for proc in procs:
            try:
                proc.wait(timeout=STOP_GRACE_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
