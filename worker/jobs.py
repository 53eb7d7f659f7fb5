"""The types a job is made of and what it sends back: shared by the scheduler (which runs
jobs), the engine (which admits them) and the HTTP surfaces (which render their events), so
that no surface needs the scheduler itself."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum

from llorch.worker.backend.errors import (
    DeadlineExceededError,
    RequestCancelledError,
    ShuttingDownError,
    WorkerError,
)
from llorch.worker.backend.protocol import CacheSummary, GenerationEvent, GenerationRequest


class State(StrEnum):
    LOADING = "loading"
    READY = "ready"
    DRAINING = "draining"  # finishing in-flight work, admitting nothing new
    ERROR = "error"
    STOPPED = "stopped"


class CancelReason(StrEnum):
    CLIENT = "client"  # DELETE /jobs/{id} or the client went away: ends with CANCELLED
    TIMEOUT = "timeout"  # the request's deadline passed: ends with an error event TIMEOUT
    SHUTDOWN = "shutdown"  # the worker is stopping: ends with CANCELLED


@dataclass(frozen=True)
class Capacity:
    """What an orchestrator routes on (GET /capacity)."""

    state: str
    slots_total: int
    slots_busy: int
    queue_depth: int
    queue_max: int
    kv_used: int  # KV cells holding tokens of live sequences
    kv_total: int
    ctx_per_slot: int
    cache: CacheSummary = field(default_factory=CacheSummary)


@dataclass(frozen=True)
class JobStarted:
    job_id: str
    started_at: float  # unix time


@dataclass(frozen=True)
class JobFailed:
    error: WorkerError


JobEvent = JobStarted | GenerationEvent | JobFailed
Sink = Callable[[JobEvent], None]


@dataclass(eq=False)  # identity: a job is a key of the decoder's tables
class Job:
    job_id: str
    request: GenerationRequest
    sink: Sink
    deadline: float | None = None  # time.monotonic() value
    cancel_reason: CancelReason | None = None
    _cancel: threading.Event = field(default_factory=threading.Event)

    def cancel(self, reason: CancelReason = CancelReason.CLIENT) -> None:
        """Mark the job; the model thread ends it at its next step. Callers outside the
        scheduler use Scheduler.cancel, which also takes a waiting job off the queue."""
        if self.cancel_reason is None:
            self.cancel_reason = reason
        self._cancel.set()

    @property
    def cancelled(self) -> bool:
        expired = self.deadline is not None and time.monotonic() >= self.deadline
        if expired and not self._cancel.is_set():
            self.cancel(CancelReason.TIMEOUT)
        return self._cancel.is_set()

    @property
    def prompt_tokens(self) -> int:
        return len(self.request.prompt_tokens)


def cancellation_error(reason: CancelReason | None) -> WorkerError:
    """What a surface that must answer in full reports for a cancelled job."""
    if reason is CancelReason.TIMEOUT:
        return DeadlineExceededError("the request's timeout passed")
    if reason is CancelReason.CLIENT:
        return RequestCancelledError("the request was cancelled (DELETE /jobs/{id})")
    return ShuttingDownError("the generation was cancelled: the worker is stopping")
