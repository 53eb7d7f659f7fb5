"""JobStream: events from the model thread reach the event loop in order, the events of one
step with one wake-up of the loop, and `ready()` hands over what has arrived without waiting."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

from llorch.worker.backend.protocol import FinishEvent, GenerationRequest, StopReason, TokenEvent
from llorch.worker.engine import JobStream


class _Loop:
    """Counts the loop's wake-ups from other threads."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop, self.wakeups = loop, 0

    def call_soon_threadsafe(self, callback: Any, *args: Any) -> Any:
        self.wakeups += 1
        return self.loop.call_soon_threadsafe(callback, *args)


def test_a_steps_events_arrive_together_and_in_order() -> None:
    async def run() -> tuple[list[Any], int]:
        stream = JobStream(scheduler=None, request=GenerationRequest((1, 2), 8))  # type: ignore[arg-type]
        counting = _Loop(asyncio.get_running_loop())
        stream._loop = counting  # type: ignore[assignment]
        tokens = [TokenEvent(i, 100 + i, f"t{i}") for i in range(5)]
        finish = FinishEvent(StopReason.MAX_TOKENS, 5, 1.0, 2)

        def model_thread() -> None:  # one step's events, as the scheduler emits them
            for event in [*tokens, finish]:
                stream.sink(event)

        worker = threading.Thread(target=model_thread)
        worker.start()
        worker.join()
        first = await stream.next_within(5)
        got = [first, *stream.ready()]
        assert stream.ready() == []  # nothing after the job's last event
        return got, counting.wakeups

    got, wakeups = asyncio.run(run())
    assert got == [*[TokenEvent(i, 100 + i, f"t{i}") for i in range(5)],
                   FinishEvent(StopReason.MAX_TOKENS, 5, 1.0, 2)]  # fmt: skip
    assert wakeups == 1
