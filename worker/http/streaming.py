"""What every generating route does with the engine's streams: wait for the next events while
watching for a client that went away, and merge several choices' streams as they come."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import TypeVar

from fastapi import Request

from llorch.worker.backend.errors import ShuttingDownError
from llorch.worker.job_stream import JobStream
from llorch.worker.jobs import JobEvent

T = TypeVar("T")

DISCONNECT_POLL_S = 1.0  # how often a route answering in full checks that its client is there


async def next_or_gone(request: Request, wait: Callable[[float], Awaitable[T | None]]) -> T:
    """What `wait` (a stream's next_within / next_group) gives next. A client that goes away
    before then ends the wait with ShuttingDownError (its job is cancelled by the caller)."""
    while True:
        got = await wait(DISCONNECT_POLL_S)
        if got is not None:
            return got
        if await request.is_disconnected():
            raise ShuttingDownError("the client went away")


async def job_groups(stream: JobStream) -> AsyncIterator[list[JobEvent]]:
    """A job's events in groups that arrived together (one decode step's tokens)."""
    async for event in stream:
        yield [event, *stream.ready()]


async def merged(sources: Sequence[AsyncIterator[list[T]]]) -> AsyncIterator[tuple[int, list[T]]]:
    """The groups of several sources (a request's choices) as they come, each with its
    source's index."""
    queue: asyncio.Queue[tuple[int, list[T] | None]] = asyncio.Queue()

    async def pump(index: int, source: AsyncIterator[list[T]]) -> None:
        async for group in source:
            await queue.put((index, group))
        await queue.put((index, None))

    tasks = [asyncio.ensure_future(pump(i, s)) for i, s in enumerate(sources)]
    try:
        running = len(tasks)
        while running:
            index, group = await queue.get()
            if group is None:
                running -= 1
            else:
                yield index, group
    finally:
        for task in tasks:
            task.cancel()
