"""The scheduler thread: one job at a time, in order; cancellation; clean stop."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from fakes import FakeBackend
from support import wait_for

from llorch.worker.backend.errors import (
    DeadlineExceededError,
    DuplicateJobError,
    NotReadyError,
    QueueFullError,
    ShuttingDownError,
)
from llorch.worker.backend.protocol import (
    FinishEvent,
    GenerationRequest,
    LoadOptions,
    StopReason,
    TokenEvent,
)
from llorch.worker.scheduler import JobEvent, JobFailed, JobStarted, Scheduler, State


def admit(scheduler: Scheduler, prompt: str, max_tokens: int) -> GenerationRequest:
    """A request for `prompt` (its tokens, control tokens parsed) checked to fit."""
    tokens = tuple(scheduler.tokenize(prompt, add_special=True))
    return scheduler.admit_request(GenerationRequest(tokens), max_tokens)


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
        request = admit(scheduler, "p", 6)
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
    job = scheduler.submit("j", admit(scheduler, "p", 60), sink)
    wait_for(lambda: any(isinstance(e, TokenEvent) for e in sink.events))
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
    scheduler.submit("a", admit(scheduler, "p", 30), first)
    job = scheduler.submit("b", admit(scheduler, "q", 30), queued)
    job.cancel()
    assert queued.done.wait(5) and first.done.wait(5)
    assert isinstance(queued.events[0], JobStarted)
    assert queued.events[-1].stop_reason is StopReason.CANCELLED  # type: ignore[union-attr]
    assert len(backend.requests) == 1
    scheduler.stop()


def test_stop_cancels_running_and_fails_queued_jobs():
    scheduler = started_scheduler(FakeBackend(script="z" * 500, delay=0.01))
    running, queued = Collector(), Collector()
    scheduler.submit("a", admit(scheduler, "p", 60), running)
    scheduler.submit("b", admit(scheduler, "p", 60), queued)
    wait_for(lambda: any(isinstance(e, TokenEvent) for e in running.events))
    scheduler.stop()
    assert running.done.is_set() and queued.done.is_set()
    assert running.events[-1].stop_reason is StopReason.CANCELLED  # type: ignore[union-attr]
    assert isinstance(queued.events[-1], JobFailed)
    assert isinstance(queued.events[-1].error, ShuttingDownError)


def test_a_job_id_already_in_flight_is_refused():
    scheduler = started_scheduler(FakeBackend(script="w" * 100, delay=0.01))
    sink = Collector()
    scheduler.submit("same", admit(scheduler, "p", 50), sink)
    with pytest.raises(DuplicateJobError, match="'same'"):
        scheduler.submit("same", admit(scheduler, "p", 5), Collector())
    assert scheduler.cancel_job("same")
    assert sink.done.wait(5)
    # Once it has ended, the id is free again.
    again = Collector()
    scheduler.submit("same", admit(scheduler, "p", 3), again)
    assert again.done.wait(5) and again.text == "www"
    scheduler.stop()


def test_a_full_queue_is_refused_with_a_retry_estimate():
    scheduler = started_scheduler(FakeBackend(script="v" * 40, delay=0.02))
    scheduler.max_queue = 2
    done = Collector()
    scheduler.submit("warm", admit(scheduler, "p", 40), done)
    assert done.done.wait(10)
    running = Collector()
    scheduler.submit("running", admit(scheduler, "p", 40), running)
    wait_for(lambda: running.events)
    for i in range(2):
        scheduler.submit(f"j{i}", admit(scheduler, "p", 40), Collector())
    with pytest.raises(QueueFullError) as info:
        scheduler.submit("over", admit(scheduler, "p", 40), Collector())
    assert info.value.depth == 2 and info.value.limit == 2
    assert info.value.retry_after_s >= 1
    scheduler.stop()


# -- a queued job ends at once (issue: cancel and deadline of jobs still waiting) ----------


def _hold_the_slot(scheduler: Scheduler) -> Collector:
    """A job that holds the only slot for a long time (500 steps of 10 ms)."""
    running = Collector()
    scheduler.submit("holder", admit(scheduler, "p", 500), running)
    wait_for(lambda: any(isinstance(e, TokenEvent) for e in running.events))
    return running


def test_cancelling_a_queued_job_ends_it_while_the_slot_stays_busy():
    backend = FakeBackend(script="h" * 500, delay=0.01, n_ctx=1024)
    scheduler = started_scheduler(backend)
    scheduler.max_queue = 1
    running = _hold_the_slot(scheduler)
    queued = Collector()
    scheduler.submit("waiting", admit(scheduler, "q", 5), queued)
    assert scheduler.capacity().queue_depth == 1
    assert scheduler.cancel_job("waiting")
    # Reported from the cancel itself: no slot had to free up.
    assert queued.done.is_set() and not running.done.is_set()
    assert isinstance(queued.events[0], JobStarted)
    finish = queued.events[-1]
    assert isinstance(finish, FinishEvent) and finish.stop_reason is StopReason.CANCELLED
    # Its place in the queue is free again: max_queue is 1 and another job is admitted.
    assert scheduler.capacity().queue_depth == 0
    scheduler.submit("next", admit(scheduler, "q", 5), Collector())
    assert not running.done.is_set()
    assert len(backend.requests) == 1  # the cancelled job never reached the model
    scheduler.stop()


def test_a_queued_job_times_out_while_the_slot_stays_busy():
    scheduler = started_scheduler(FakeBackend(script="t" * 500, delay=0.01, n_ctx=1024))
    scheduler.max_queue = 1
    running = _hold_the_slot(scheduler)
    queued = Collector()
    request = admit(scheduler, "q", 5)
    scheduler.submit("late", request, queued, timeout_s=0.05)
    assert queued.done.wait(4)
    assert not running.done.is_set()
    assert isinstance(queued.events[-1], JobFailed)
    assert isinstance(queued.events[-1].error, DeadlineExceededError)
    assert scheduler.capacity().queue_depth == 0
    scheduler.submit("next", admit(scheduler, "q", 5), Collector())
    scheduler.stop()


def test_a_job_that_ends_before_its_deadline_is_not_expired():
    scheduler = started_scheduler(FakeBackend(script="abc"))
    sink = Collector()
    scheduler.submit("quick", admit(scheduler, "p", 3), sink, timeout_s=0.2)
    assert sink.done.wait(5)
    threading.Event().wait(0.3)  # past the deadline: nothing more may arrive
    assert isinstance(sink.events[-1], FinishEvent) and sink.text == "abc"
    assert sum(isinstance(e, FinishEvent | JobFailed) for e in sink.events) == 1
    scheduler.stop()


# -- several slots ------------------------------------------------------------------------


def test_several_slots_decode_together_and_queue_the_rest():
    backend = FakeBackend(script="abcdefgh", delay=0.005, parallel=3)
    scheduler = started_scheduler(backend)
    sinks = [Collector() for _ in range(5)]
    for i, sink in enumerate(sinks):
        scheduler.submit(f"j{i}", admit(scheduler, "p", 8), sink)
    for sink in sinks:
        assert sink.done.wait(10)
        assert sink.text == "abcdefgh"
    decoder = backend.decoder()
    assert decoder.max_live == 3  # never more than the slots, and the slots were shared
    # Five jobs of 8 tokens on 3 slots take fewer steps than one after another (40 + 5).
    assert decoder.steps < 40
    assert scheduler.capacity().slots_total == 3
    scheduler.stop()


def test_cancelling_one_of_several_running_jobs_leaves_the_others():
    backend = FakeBackend(script="x" * 300, delay=0.005, parallel=2, n_ctx=1024)
    scheduler = started_scheduler(backend)
    kept, cancelled = Collector(), Collector()
    scheduler.submit("kept", admit(scheduler, "p", 40), kept)
    scheduler.submit("gone", admit(scheduler, "p", 300), cancelled)
    wait_for(lambda: any(isinstance(e, TokenEvent) for e in cancelled.events))
    assert scheduler.cancel_job("gone")
    assert cancelled.done.wait(5) and kept.done.wait(10)
    assert cancelled.events[-1].stop_reason is StopReason.CANCELLED  # type: ignore[union-attr]
    assert kept.events[-1].stop_reason is StopReason.MAX_TOKENS  # type: ignore[union-attr]
    assert kept.text == "x" * 40
    scheduler.stop()


# -- shutdown never frees what a call is using ---------------------------------------------


class _SlowTokenizer(FakeBackend):
    """tokenize() blocks until released; close() records whether a call was still inside."""

    def __init__(self) -> None:
        super().__init__()
        self.inside = threading.Event()
        self.release = threading.Event()
        self.closed_while_inside = False
        self._busy = False

    def tokenize(self, text: str, add_special: bool = True, parse_special: bool = True):
        self._busy = True
        self.inside.set()
        self.release.wait(5)
        self._busy = False
        return super().tokenize(text, add_special, parse_special)

    def close(self) -> None:
        self.closed_while_inside = self._busy
        super().close()


def test_the_model_is_freed_only_after_calls_in_flight_and_refused_after():
    backend = _SlowTokenizer()
    scheduler = started_scheduler(backend)
    caller = threading.Thread(target=scheduler.tokenize, args=("hello",))
    caller.start()
    assert backend.inside.wait(5)
    stopper = threading.Thread(target=scheduler.stop)
    stopper.start()
    threading.Event().wait(0.1)
    assert scheduler.state is not State.READY  # no new call gets in...
    assert not backend.closed  # ...and the model is not freed under the one inside
    with pytest.raises(NotReadyError):
        scheduler.tokenize("more")
    backend.release.set()
    caller.join(5)
    stopper.join(5)
    assert backend.closed and not backend.closed_while_inside
