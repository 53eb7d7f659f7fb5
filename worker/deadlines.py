"""The deadline thread: jobs whose request set a timeout are expired when it passes, whether
they wait in the queue or run (the model thread is never waited for)."""

from __future__ import annotations

import heapq
import threading
import time
from collections.abc import Callable

from llorch.worker.jobs import Job


class Deadlines:
    """One thread that expires jobs at their deadlines, queued ones included: a job waiting
    for a slot must not wait for a decode step to learn that its time is up."""

    def __init__(self, expire: Callable[[Job], None]) -> None:
        self._expire = expire
        self._heap: list[tuple[float, int, Job]] = []
        self._live: set[Job] = set()  # jobs whose deadline has not passed and that go on
        self._count = 0
        self._cond = threading.Condition()
        self._closed = False
        self._thread: threading.Thread | None = None

    def add(self, deadline: float, job: Job) -> None:
        with self._cond:
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="llorch-deadlines", daemon=True
                )
                self._thread.start()
            self._count += 1
            heapq.heappush(self._heap, (deadline, self._count, job))
            self._live.add(job)
            self._cond.notify()

    def discard(self, job: Job) -> None:
        """The job ended before its deadline."""
        with self._cond:
            self._live.discard(job)
            # Entries of ended jobs are skipped when they come up; rebuild before they pile up
            # (a deadline can be a day away).
            if len(self._heap) > 2 * len(self._live) + 64:
                self._heap = [entry for entry in self._heap if entry[2] in self._live]
                heapq.heapify(self._heap)

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._closed and (not self._heap or self._heap[0][0] > time.monotonic()):
                    timeout = self._heap[0][0] - time.monotonic() if self._heap else None
                    self._cond.wait(timeout)
                if self._closed:
                    return
                _, _, job = heapq.heappop(self._heap)
                due = job in self._live
                self._live.discard(job)
            if due:
                self._expire(job)
