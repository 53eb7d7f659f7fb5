"""JobStream: one job's events carried from the model thread to the event loop.

The scheduler calls a job's sink on its own thread; the stream queues the events and wakes the
event loop once for all that came meanwhile (`call_soon_threadsafe`), and the surfaces read
them as an async iterator. Leaving the stream early cancels the job.
"""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from types import TracebackType

from llorch.worker.backend.protocol import FinishEvent, GenerationRequest
from llorch.worker.jobs import CancelReason, Job, JobEvent, JobFailed
from llorch.worker.scheduler import Scheduler


class JobStream:
    """The events of one admitted job, as an async iterator that ends after the job's last
    event (FinishEvent or JobFailed). Leaving it early (`aclose`, or the `async with` block)
    cancels the job."""

    def __init__(self, scheduler: Scheduler, request: GenerationRequest) -> None:
        self._scheduler = scheduler
        self.request = request
        self._events: asyncio.Queue[JobEvent] = asyncio.Queue()
        self._loop = asyncio.get_running_loop()
        # Events from the model thread wait in the inbox; one wake-up of the loop carries all
        # that came meanwhile (a verified draft gives several tokens in one step), so the loop
        # and the sockets do not compete with the decode once per token.
        self._inbox: deque[JobEvent] = deque()
        self._inbox_lock = threading.Lock()
        self._wake_pending = False
        self._finished = False
        self._get: asyncio.Future[JobEvent] | None = None
        self.job: Job | None = None

    @property
    def prompt_tokens(self) -> int:
        return len(self.request.prompt_tokens)

    @property
    def job_id(self) -> str:
        assert self.job is not None
        return self.job.job_id

    @property
    def cancel_reason(self) -> CancelReason | None:
        return None if self.job is None else self.job.cancel_reason

    def sink(self, event: JobEvent) -> None:
        """Called on the model thread (or wherever the scheduler ends a queued job)."""
        with self._inbox_lock:
            self._inbox.append(event)
            if self._wake_pending:
                return
            self._wake_pending = True
        try:
            self._loop.call_soon_threadsafe(self._deliver)
        except RuntimeError:  # the event loop is gone: nobody is listening any more
            if self.job is not None:
                self._scheduler.cancel(self.job)

    def _deliver(self) -> None:
        with self._inbox_lock:
            events = list(self._inbox)
            self._inbox.clear()
            self._wake_pending = False
        for event in events:
            self._events.put_nowait(event)

    def ready(self) -> list[JobEvent]:
        """The events that have already arrived, without waiting (after the job's last event,
        none): a reader that writes them out together saves a write per event."""
        events: list[JobEvent] = []
        while not self._finished and self._get is None and not self._events.empty():
            event = self._events.get_nowait()
            events.append(event)
            if isinstance(event, FinishEvent | JobFailed):
                self._finished = True
        return events

    def __aiter__(self) -> JobStream:
        return self

    async def __anext__(self) -> JobEvent:
        event = await self.next_within(None)
        assert event is not None
        return event

    async def next_within(self, seconds: float | None) -> JobEvent | None:
        """The next event, or None when none came within `seconds`; the wait is kept, so no
        event is lost between calls (cancelling a queue's get() could lose one)."""
        if self._finished:
            raise StopAsyncIteration
        if self._get is None:
            self._get = asyncio.ensure_future(self._events.get())
        done, _ = await asyncio.wait({self._get}, timeout=seconds)
        if not done:
            return None
        event = self._get.result()
        self._get = None
        if isinstance(event, FinishEvent | JobFailed):
            self._finished = True
        return event

    def cancel(self) -> None:
        if self._get is not None:
            self._get.cancel()
            self._get = None
        if not self._finished and self.job is not None:
            self._scheduler.cancel(self.job)

    async def aclose(self) -> None:
        self.cancel()

    async def __aenter__(self) -> JobStream:
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.cancel()
