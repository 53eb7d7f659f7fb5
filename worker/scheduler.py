"""The one thread that owns the model.

Requests reach it through a queue and are generated one at a time; each job's events go out
through the job's own sink, a callable the caller provides (the HTTP layer forwards them to its
event loop). Loading happens on the same thread, so the server can listen while it runs.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

from worker.backend.errors import (
    ContextOverflowError,
    InferenceError,
    NotReadyError,
    ShuttingDownError,
    WorkerError,
)
from worker.backend.protocol import (
    BackendInfo,
    FinishEvent,
    GenerationEvent,
    GenerationRequest,
    LoadOptions,
    ModelBackend,
    ModelInfo,
    SamplingParams,
    StopReason,
)

log = logging.getLogger("llorch.scheduler")


class State(StrEnum):
    LOADING = "loading"
    READY = "ready"
    ERROR = "error"
    STOPPED = "stopped"


@dataclass(frozen=True)
class JobStarted:
    job_id: str
    started_at: float  # unix time


@dataclass(frozen=True)
class JobFailed:
    error: WorkerError


JobEvent = JobStarted | GenerationEvent | JobFailed
Sink = Callable[[JobEvent], None]


@dataclass
class Job:
    job_id: str
    request: GenerationRequest
    sink: Sink
    _cancel: threading.Event = field(default_factory=threading.Event)

    def cancel(self) -> None:
        self._cancel.set()

    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()


class Scheduler:
    """Owns a ModelBackend on a dedicated thread."""

    def __init__(
        self,
        backend: ModelBackend,
        model_path: Callable[[], Path],
        options: LoadOptions,
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
        self._active: Job | None = None
        self._lock = threading.Lock()
        self.model: ModelInfo | None = None
        self.backend_info: BackendInfo | None = None
        self.load_seconds: float | None = None

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    @property
    def state(self) -> State:
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
            if self._active is not None:
                self._active.cancel()

    def stop(self, timeout: float = 30.0) -> None:
        """Cancel queued and running jobs, close the model, and join the thread."""
        self._stopping.set()
        with self._lock:
            if self._active is not None:
                self._active.cancel()
        self._queue.put(None)
        if self._thread.is_alive():
            self._thread.join(timeout)

    # -- requests --------------------------------------------------------------------------

    def admit(
        self, prompt: str, max_tokens: int, sampling: SamplingParams, stop: tuple[str, ...]
    ) -> GenerationRequest:
        """Tokenize and check that the request fits. Safe from any thread once loaded: the
        vocabulary is read-only (llama-server tokenizes on its HTTP threads the same way)."""
        if self._stopping.is_set():
            raise ShuttingDownError("the worker is shutting down")
        if self._state is not State.READY or self.model is None:
            raise NotReadyError(f"the model is not ready (state: {self._state})")
        tokens = self._backend.tokenize(prompt, add_special=True)
        if len(tokens) + max_tokens > self.model.n_ctx:
            raise ContextOverflowError(len(tokens), max_tokens, self.model.n_ctx)
        return GenerationRequest(tuple(tokens), max_tokens, sampling, stop)

    def submit(self, job_id: str, request: GenerationRequest, sink: Sink) -> Job:
        if self._stopping.is_set():
            raise ShuttingDownError("the worker is shutting down")
        job = Job(job_id, request, sink)
        self._queue.put(job)
        return job

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
        return self._queue.qsize()

    @property
    def active_job_id(self) -> str | None:
        job = self._active
        return job.job_id if job else None

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
        while True:
            job = self._queue.get()
            if job is None or self._stopping.is_set():
                if job is not None:
                    self._fail(job, ShuttingDownError("the worker is shutting down"))
                return
            self._execute(job)

    def _execute(self, job: Job) -> None:
        with self._lock:
            self._active = job
        try:
            if job.cancelled:
                # Cancelled while queued: report it without touching the model.
                job.sink(JobStarted(job.job_id, time.time()))
                job.sink(FinishEvent(StopReason.CANCELLED, 0, 0.0, len(job.request.prompt_tokens)))
                return
            job.sink(JobStarted(job.job_id, time.time()))
            cancelled = lambda: job.cancelled or self._stopping.is_set()  # noqa: E731
            for event in self._backend.generate(job.request, cancelled):
                job.sink(event)
        except WorkerError as exc:
            self._fail(job, exc)
        except Exception as exc:
            log.exception("generation of job %s failed", job.job_id)
            self._fail(job, InferenceError(f"{type(exc).__name__}: {exc}"))
        finally:
            with self._lock:
                self._active = None

    def _fail(self, job: Job, error: WorkerError) -> None:
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
