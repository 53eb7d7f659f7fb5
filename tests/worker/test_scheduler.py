"""The scheduler thread: one job at a time, in order; cancellation; clean stop."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from fakes import FakeBackend

from llorch.worker.backend.errors import DuplicateJobError, QueueFullError, ShuttingDownError
from llorch.worker.backend.protocol import (
    FinishEvent,
    LoadOptions,
    SamplingParams,
    StopReason,
    TokenEvent,
)
from llorch.worker.scheduler import JobEvent, JobFailed, JobStarted, Scheduler, State


def started_scheduler(backend: FakeBackend) -> Scheduler:
    scheduler = Scheduler(backend, lambda: Path("/models/fake.gguf"), LoadOptions())
    scheduler.start()
    assert scheduler.wait_loaded(5) and scheduler.state is State.READY
    return scheduler


class Collector:
    def __init__(self) -> None:
        self.events: list[JobEvent] = []
        self.done = threading.Event()

    def __call__(self, event: JobEvent) -> None:
        self.events.append(event)
        if isinstance(event, FinishEvent | JobFailed):
            self.done.set()

    @property
    def text(self) -> str:
        return "".join(e.text for e in self.events if isinstance(e, TokenEvent))


def test_jobs_run_one_at_a_time_in_submission_order():
    backend = FakeBackend(script="abcdef", delay=0.01)
    scheduler = started_scheduler(backend)
    order: list[str] = []
    sinks = []
    for name in ("first", "second", "third"):
        sink = Collector()
        request = scheduler.admit("p", 6, SamplingParams(), ())
        scheduler.submit(name, request, lambda e, s=sink, n=name: (order.append(n), s(e)))
        sinks.append(sink)
    for sink in sinks:
        assert sink.done.wait(5)
        assert sink.text == "abcdef"
    # Every event of one job comes before any event of the next.
    assert order == ["first"] * 8 + ["second"] * 8 + ["third"] * 8
    scheduler.stop()
    assert backend.closed and scheduler.state is State.STOPPED


def test_cancel_a_running_job():
    scheduler = started_scheduler(FakeBackend(script="x" * 200, delay=0.01))
    sink = Collector()
    job = scheduler.submit("j", scheduler.admit("p", 60, SamplingParams(), ()), sink)
    while not any(isinstance(e, TokenEvent) for e in sink.events):
        threading.Event().wait(0.005)
    job.cancel()
    assert sink.done.wait(5)
    finish = sink.events[-1]
    assert isinstance(finish, FinishEvent) and finish.stop_reason is StopReason.CANCELLED
    assert finish.tokens_out < 60
    scheduler.stop()


def test_a_job_cancelled_while_queued_never_reaches_the_model():
    backend = FakeBackend(script="y" * 30, delay=0.01)
    scheduler = started_scheduler(backend)
    first, queued = Collector(), Collector()
    scheduler.submit("a", scheduler.admit("p", 30, SamplingParams(), ()), first)
    job = scheduler.submit("b", scheduler.admit("q", 30, SamplingParams(), ()), queued)
    job.cancel()
    assert queued.done.wait(5) and first.done.wait(5)
    assert isinstance(queued.events[0], JobStarted)
    assert queued.events[-1].stop_reason is StopReason.CANCELLED  # type: ignore[union-attr]
    assert len(backend.requests) == 1
    scheduler.stop()


def test_stop_cancels_running_and_fails_queued_jobs():
    scheduler = started_scheduler(FakeBackend(script="z" * 500, delay=0.01))
    running, queued = Collector(), Collector()
    scheduler.submit("a", scheduler.admit("p", 60, SamplingParams(), ()), running)
    scheduler.submit("b", scheduler.admit("p", 60, SamplingParams(), ()), queued)
    while not any(isinstance(e, TokenEvent) for e in running.events):
        threading.Event().wait(0.005)
    scheduler.stop()
    assert running.done.is_set() and queued.done.is_set()
    assert running.events[-1].stop_reason is StopReason.CANCELLED  # type: ignore[union-attr]
    assert isinstance(queued.events[-1], JobFailed)
    assert isinstance(queued.events[-1].error, ShuttingDownError)


def test_a_job_id_already_in_flight_is_refused():
    scheduler = started_scheduler(FakeBackend(script="w" * 100, delay=0.01))
    sink = Collector()
    scheduler.submit("same", scheduler.admit("p", 50, SamplingParams(), ()), sink)
    with pytest.raises(DuplicateJobError, match="'same'"):
        scheduler.submit("same", scheduler.admit("p", 5, SamplingParams(), ()), Collector())
    assert scheduler.cancel_job("same")
    assert sink.done.wait(5)
    # Once it has ended, the id is free again.
    again = Collector()
    scheduler.submit("same", scheduler.admit("p", 3, SamplingParams(), ()), again)
    assert again.done.wait(5) and again.text == "www"
    scheduler.stop()


def test_a_full_queue_is_refused_with_a_retry_estimate():
    scheduler = started_scheduler(FakeBackend(script="v" * 40, delay=0.02))
    scheduler.max_queue = 2
    done = Collector()
    scheduler.submit("warm", scheduler.admit("p", 40, SamplingParams(), ()), done)
    assert done.done.wait(10)
    running = Collector()
    scheduler.submit("running", scheduler.admit("p", 40, SamplingParams(), ()), running)
    while not running.events:
        threading.Event().wait(0.005)
    for i in range(2):
        scheduler.submit(f"j{i}", scheduler.admit("p", 40, SamplingParams(), ()), Collector())
    with pytest.raises(QueueFullError) as info:
        scheduler.submit("over", scheduler.admit("p", 40, SamplingParams(), ()), Collector())
    assert info.value.depth == 2 and info.value.limit == 2
    assert info.value.retry_after_s >= 1
    scheduler.stop()
