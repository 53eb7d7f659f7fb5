"""The one thread that owns the model.

Requests reach it through a queue. The thread moves them into the backend's batch decoder as
slots free up, runs one decode step at a time over every live sequence (continuous batching),
and sends each job's events out through the job's own sink, a callable the caller provides (the
HTTP layer forwards them to its event loop). Loading happens on the same thread, so the server
can listen while it runs.
"""

from __future__ import annotations

import logging
import math
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

from llorch.worker.backend.errors import (
    ContextOverflowError,
    DeadlineExceededError,
    DrainingError,
    DuplicateJobError,
    InferenceError,
    NotReadyError,
    QueueFullError,
    ShuttingDownError,
    WorkerError,
)
from llorch.worker.backend.protocol import (
    BackendInfo,
    BatchDecoder,
    ChatMessage,
    FinishEvent,
    GenerationEvent,
    GenerationRequest,
    LoadOptions,
    ModelBackend,
    ModelInfo,
    SamplingParams,
    SequenceFailed,
    StopReason,
)

log = logging.getLogger("llorch.scheduler")


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
        if self.cancel_reason is None:
            self.cancel_reason = reason
        self._cancel.set()

    @property
    def cancelled(self) -> bool:
        expired = self.deadline is not None and time.monotonic() >= self.deadline
        if expired and not self._cancel.is_set():
            self.cancel(CancelReason.TIMEOUT)
        return self._cancel.is_set()


class Scheduler:
    """Owns a ModelBackend on a dedicated thread."""

    def __init__(
        self,
        backend: ModelBackend,
        model_path: Callable[[], Path],
        options: LoadOptions,
        *,
        max_queue: int = 64,
    ) -> None:
        self._backend = backend
        self._model_path = model_path
        self._options = options
        self._queue: queue.Queue[Job | None] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="llorch-model", daemon=True)
        self._state = State.LOADING
        self._error: str | None = None
        self._ready = threading.Event()  # set once loading ended, well or not
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._jobs: dict[str, Job] = {}  # queued and running, by job id
        self._running: list[Job] = []  # jobs holding a slot, in admission order
        self._kv_used = 0  # snapshot after each step, read by capacity()
        self._slots_total = 1
        self._avg_job_s: float | None = None  # moving average of finished jobs' durations
        self._draining = False
        self._idle = threading.Condition(self._lock)
        self.max_queue = max_queue
        self.model: ModelInfo | None = None
        self.backend_info: BackendInfo | None = None
        self.load_seconds: float | None = None

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    @property
    def state(self) -> State:
        if self._state is State.READY and self._draining:
            return State.DRAINING
        return self._state

    @property
    def error(self) -> str | None:
        return self._error

    def wait_loaded(self, timeout: float | None = None) -> bool:
        return self._ready.wait(timeout)

    def cancel_all(self) -> None:
        """Refuse new jobs and cancel the running and queued ones (a stop was asked for)."""
        self._stopping.set()
        with self._lock:
            for job in self._jobs.values():
                job.cancel(CancelReason.SHUTDOWN)

    def cancel_job(self, job_id: str) -> bool:
        """Cancel a queued or running job; False when no such job is in flight."""
        with self._lock:
            job = self._jobs.get(job_id)
        if job is None:
            return False
        job.cancel(CancelReason.CLIENT)
        return True

    def drain(self) -> None:
        """Admit nothing new; queued and running jobs finish."""
        self._draining = True

    def wait_drained(self, timeout: float | None = None) -> bool:
        with self._idle:
            return self._idle.wait_for(lambda: not self._jobs, timeout)

    def capacity(self) -> Capacity:
        model = self.model
        with self._lock:
            busy = len(self._running)
            queued = len(self._jobs) - busy
        n_ctx = model.n_ctx if model else 0
        return Capacity(
            state=self.state.value,
            slots_total=self._slots_total,
            slots_busy=busy,
            queue_depth=queued,
            queue_max=self.max_queue,
            kv_used=self._kv_used,
            kv_total=n_ctx * self._slots_total,
            ctx_per_slot=n_ctx,
        )

    def stop(self, timeout: float = 30.0) -> None:
        """Cancel queued and running jobs, close the model, and join the thread."""
        self.cancel_all()
        self._queue.put(None)
        if self._thread.is_alive():
            self._thread.join(timeout)

    # -- requests --------------------------------------------------------------------------

    def _check_admitting(self) -> None:
        if self._stopping.is_set():
            raise ShuttingDownError("the worker is shutting down")
        if self._draining:
            raise DrainingError("the worker is draining and admits no new requests")
        if self._state is not State.READY or self.model is None:
            raise NotReadyError(f"the model is not ready (state: {self.state})")

    def admit(
        self, prompt: str, max_tokens: int, sampling: SamplingParams, stop: tuple[str, ...]
    ) -> GenerationRequest:
        """Tokenize and check that the request fits. Safe from any thread once loaded: the
        vocabulary is read-only (llama-server tokenizes on its HTTP threads the same way)."""
        self._check_admitting()
        tokens = self._backend.tokenize(prompt, add_special=True)
        return self.admit_tokens(tokens, max_tokens, sampling, stop)

    def admit_tokens(
        self,
        tokens: list[int],
        max_tokens: int,
        sampling: SamplingParams,
        stop: tuple[str, ...],
    ) -> GenerationRequest:
        self._check_admitting()
        assert self.model is not None
        n_ctx = self.model.n_ctx  # each slot's context (ModelInfo.n_ctx is per slot)
        if len(tokens) + max_tokens > n_ctx:
            raise ContextOverflowError(len(tokens), max_tokens, n_ctx)
        return GenerationRequest(tuple(tokens), max_tokens, sampling, stop)

    def submit(
        self,
        job_id: str,
        request: GenerationRequest,
        sink: Sink,
        timeout_s: float | None = None,
    ) -> Job:
        """Queue a job. Raises QueueFullError when max_queue requests already wait."""
        self._check_admitting()
        deadline = time.monotonic() + timeout_s if timeout_s is not None else None
        job = Job(job_id, request, sink, deadline)
        with self._lock:
            if job_id in self._jobs:
                raise DuplicateJobError(job_id)
            waiting = len(self._jobs) - len(self._running)
            if waiting >= self.max_queue:
                raise QueueFullError(waiting, self.max_queue, self._retry_after(waiting))
            self._jobs[job_id] = job
        self._queue.put(job)
        return job

    def _retry_after(self, waiting: int) -> int:
        """Seconds until a place in the queue is likely free: the jobs ahead, spread over the
        slots, at the average duration of recent jobs (whole seconds, at least 1)."""
        per_job = self._avg_job_s if self._avg_job_s is not None else 1.0
        return max(1, math.ceil(per_job * (waiting + 1) / max(1, self._slots_total)))

    def builtin_chat_template(
        self, messages: Sequence[ChatMessage], add_generation_prompt: bool = True
    ) -> str:
        if self._state is not State.READY:
            raise NotReadyError(f"the model is not ready (state: {self.state})")
        return self._backend.builtin_chat_template(messages, add_generation_prompt)

    def tokenize(self, text: str, add_special: bool = True) -> list[int]:
        if self._state is not State.READY:
            raise NotReadyError(f"the model is not ready (state: {self._state})")
        return self._backend.tokenize(text, add_special)

    def detokenize(self, tokens: list[int]) -> str:
        if self._state is not State.READY:
            raise NotReadyError(f"the model is not ready (state: {self._state})")
        return self._backend.detokenize(tokens)

    @property
    def queue_depth(self) -> int:
        with self._lock:
            return len(self._jobs) - len(self._running)

    @property
    def active_job_ids(self) -> list[str]:
        with self._lock:
            return [job.job_id for job in self._running]

    @property
    def active_job_id(self) -> str | None:
        """The oldest running job (None when idle)."""
        ids = self.active_job_ids
        return ids[0] if ids else None

    # -- the owner thread ------------------------------------------------------------------

    def _run(self) -> None:
        try:
            self._load()
            if self._state is State.READY:
                self._serve()
        finally:
            self._drain()
            self._backend.close()
            self._state = State.STOPPED if self._state is not State.ERROR else State.ERROR

    def _load(self) -> None:
        started = time.monotonic()
        try:
            path = self._model_path()
            self.model = self._backend.load(path, self._options)
            self.backend_info = self._backend.backend_info()
        except Exception as exc:
            log.exception("model loading failed")
            self._error = str(exc) or type(exc).__name__
            self._state = State.ERROR
        else:
            self.load_seconds = time.monotonic() - started
            self._state = State.READY
            log.info("model %s loaded in %.1fs", self.model.path, self.load_seconds)
        finally:
            self._ready.set()

    def _serve(self) -> None:
        """The engine loop: fill free slots from the queue, decode one step, route events."""
        decoder = self._backend.decoder()
        self._slots_total = decoder.n_slots
        stop_seen = False
        while not (stop_seen and not self._running):
            while not stop_seen and decoder.free_slots() > 0:
                try:
                    # Block only when there is nothing to decode.
                    job = self._queue.get(block=not self._running)
                except queue.Empty:
                    break
                if job is None:
                    stop_seen = True
                    break
                self._start(decoder, job)
            for job in self._running:
                if job.cancelled or self._stopping.is_set():
                    decoder.cancel(job)
            if not self._running:
                continue
            try:
                events = decoder.step()
            except Exception as exc:  # a bug, not a request's fault: fail the batch, go on
                log.exception("decode step failed")
                for job in list(self._running):
                    self._end(job, JobFailed(InferenceError(f"{type(exc).__name__}: {exc}")))
                continue
            for key, event in events:
                self._route(key, event)
            self._kv_used = decoder.kv_used()

    def _start(self, decoder: BatchDecoder, job: Job) -> None:
        if self._stopping.is_set():
            self._fail(job, ShuttingDownError("the worker is shutting down"))
            return
        if job.cancelled:
            if job.cancel_reason is CancelReason.TIMEOUT:
                self._fail(job, DeadlineExceededError("the timeout passed while it was queued"))
            else:
                # Cancelled while queued: report it without touching the model.
                job.sink(JobStarted(job.job_id, time.time()))
                prompt = len(job.request.prompt_tokens)
                self._finish(job, FinishEvent(StopReason.CANCELLED, 0, 0.0, prompt))
            return
        try:
            decoder.add(job, job.request)
        except WorkerError as exc:
            self._fail(job, exc)
            return
        except Exception as exc:
            log.exception("could not start job %s", job.job_id)
            self._fail(job, InferenceError(f"{type(exc).__name__}: {exc}"))
            return
        with self._lock:
            self._running.append(job)
        job.sink(JobStarted(job.job_id, time.time()))

    def _route(self, key: object, event: GenerationEvent | SequenceFailed) -> None:
        assert isinstance(key, Job)
        job = key
        if isinstance(event, SequenceFailed):
            error = event.error
            if not isinstance(error, WorkerError):
                error = InferenceError(f"{type(error).__name__}: {error}")
            self._end(job, JobFailed(error))
        elif isinstance(event, FinishEvent):
            if job.cancel_reason is CancelReason.TIMEOUT:
                timeout = DeadlineExceededError(
                    f"the timeout passed after {event.tokens_out} generated tokens"
                )
                self._end(job, JobFailed(timeout))
            else:
                self._end(job, event)
        else:
            self._emit(job, event)

    def _emit(self, job: Job, event: JobEvent) -> None:
        try:
            job.sink(event)
        except Exception:
            log.exception("the sink of job %s failed; cancelling it", job.job_id)
            job.cancel()

    def _end(self, job: Job, event: FinishEvent | JobFailed) -> None:
        with self._lock:
            if job in self._running:
                self._running.remove(job)
        if isinstance(event, JobFailed):
            self._fail(job, event.error)
        else:
            self._finish(job, event)

    def _finish(self, job: Job, event: FinishEvent) -> None:
        seconds = (event.prompt_time_ms + event.decode_time_ms) / 1000.0
        if self._avg_job_s is None:
            self._avg_job_s = seconds
        else:
            self._avg_job_s = 0.8 * self._avg_job_s + 0.2 * seconds
        self._forget(job)
        self._emit(job, event)

    def _forget(self, job: Job) -> None:
        with self._lock:
            if self._jobs.get(job.job_id) is job:
                del self._jobs[job.job_id]
            self._idle.notify_all()

    def _fail(self, job: Job, error: WorkerError) -> None:
        self._forget(job)
        try:
            job.sink(JobFailed(error))
        except Exception:
            log.exception("could not report the failure of job %s", job.job_id)

    def _drain(self) -> None:
        while True:
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                return
            if job is not None:
                self._fail(job, ShuttingDownError("the worker is shutting down"))
