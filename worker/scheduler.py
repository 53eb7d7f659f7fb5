"""The one thread that owns the model.

Requests wait in a queue. The thread moves them into the backend's batch decoder as slots free
up, runs one decode step at a time over every live sequence (continuous batching), and sends
each job's events out through the job's own sink, a callable the caller provides (the engine
forwards them to its event loop). Loading happens on the same thread, so the server can listen
while it runs. A job cancelled or expired while it still waits leaves the queue at once: it
never waits for a slot only to be thrown away.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

from llorch.worker.backend.errors import (
    ContextOverflowError,
    DeadlineExceededError,
    DrainingError,
    DuplicateJobError,
    InferenceError,
    InvalidRequestError,
    ModelLoadError,
    NotReadyError,
    QueueFullError,
    ShuttingDownError,
    WorkerError,
)
from llorch.worker.backend.protocol import (
    BackendInfo,
    BatchDecoder,
    CacheSummary,
    ChatMessage,
    FinishEvent,
    GenerationEvent,
    GenerationRequest,
    LoadOptions,
    Media,
    MediaSpan,
    ModelBackend,
    ModelInfo,
    RankInput,
    SequenceFailed,
    StopReason,
)
from llorch.worker.deadlines import Deadlines
from llorch.worker.jobs import (
    CancelReason,
    Capacity,
    Job,
    JobEvent,
    JobFailed,
    JobStarted,
    Sink,
    State,
)
from llorch.worker.rerank import RankBatcher

__all__ = [
    "CancelReason",
    "Capacity",
    "Job",
    "JobEvent",
    "JobFailed",
    "JobStarted",
    "Scheduler",
    "Sink",
    "State",
]

log = logging.getLogger("llorch.scheduler")


class Scheduler:
    """Owns a ModelBackend on a dedicated thread."""

    def __init__(
        self,
        backend: ModelBackend,
        model_path: Callable[[], Path],
        options: LoadOptions,
        *,
        max_queue: int = 64,
        options_for: Callable[[Path], LoadOptions] | None = None,
    ) -> None:
        """`options_for`: the load options for the file `model_path` gave, where they depend
        on it (an HF folder's conversion brings its projector); `options` otherwise."""
        self._backend = backend
        self._model_path = model_path
        self._options = options
        self._options_for = options_for
        self._thread = threading.Thread(target=self._run, name="llorch-model", daemon=True)
        self._state = State.LOADING
        self._error: WorkerError | None = None
        self._ready = threading.Event()  # set once loading ended, well or not
        self.stopping = threading.Event()  # a stop was asked for (loading watches it too)
        self._lock = threading.Lock()
        self._wakeup = threading.Condition(self._lock)  # new work, or a stop
        self._idle = threading.Condition(self._lock)  # a job left
        self._jobs: dict[str, Job] = {}  # queued and running, by job id
        self._waiting: deque[Job] = deque()  # queued, in submission order
        self._running: list[Job] = []  # jobs holding a slot, in admission order
        self._stop_seen = False
        self._users = 0  # threads using the backend's vocabulary outside the model thread
        self._deadlines = Deadlines(self._expire)
        self._embedding = ThreadPoolExecutor(max_workers=1, thread_name_prefix="llorch-embed")
        # concurrent rerank requests' pairs decoded together on that thread
        self._ranks = RankBatcher(self._embedding)
        self._kv_used = 0  # snapshot after each step, read by capacity()
        self._cache_summary = CacheSummary()
        self._slots_total = 1
        self._avg_job_s: float | None = None  # moving average of finished jobs' durations
        self._draining = False
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
    def error(self) -> WorkerError | None:
        """Why loading failed (state ERROR)."""
        return self._error

    def wait_loaded(self, timeout: float | None = None) -> bool:
        return self._ready.wait(timeout)

    def cancel_all(self) -> None:
        """Refuse new jobs and cancel the running and queued ones (a stop was asked for)."""
        self.stopping.set()
        with self._lock:
            jobs = list(self._jobs.values())
        for job in jobs:
            self.cancel(job, CancelReason.SHUTDOWN)

    def cancel_job(self, job_id: str, reason: CancelReason = CancelReason.CLIENT) -> bool:
        """Cancel a queued or running job; False when no such job is in flight."""
        with self._lock:
            job = self._jobs.get(job_id)
        if job is None:
            return False
        self.cancel(job, reason)
        return True

    def cancel(self, job: Job, reason: CancelReason = CancelReason.CLIENT) -> None:
        """End a job: a waiting one leaves the queue now, with its end reported from here; a
        running one ends at the model thread's next step."""
        job.cancel(reason)
        with self._lock:
            try:
                self._waiting.remove(job)
            except ValueError:
                return  # running, or already taken by the model thread, which reports it
        self._report_cancelled(job)

    def _expire(self, job: Job) -> None:
        self.cancel(job, CancelReason.TIMEOUT)

    def drain(self) -> None:
        """Admit nothing new; queued and running jobs finish. A model still loading (or being
        converted) has no work to finish: its load stops now."""
        self._draining = True
        if self._state is State.LOADING:
            self.stopping.set()

    def wait_drained(self, timeout: float | None = None) -> bool:
        with self._idle:
            return self._idle.wait_for(lambda: not self._jobs, timeout)

    def capacity(self) -> Capacity:
        model = self.model
        with self._lock:
            busy = len(self._running)
            queued = len(self._waiting)
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
            cache=self._cache_summary,
        )

    def stop(self, timeout: float = 30.0) -> None:
        """Cancel queued and running jobs, close the model, and join the thread."""
        self.cancel_all()
        with self._wakeup:
            self._stop_seen = True
            self._wakeup.notify_all()
        if self._thread.is_alive():
            self._thread.join(timeout)
        self._deadlines.close()

    # -- requests --------------------------------------------------------------------------

    def _check_admitting(self) -> None:
        if self.stopping.is_set():
            raise ShuttingDownError("the worker is shutting down")
        if self._draining:
            raise DrainingError("the worker is draining and admits no new requests")
        if self._state is not State.READY or self.model is None:
            raise NotReadyError(f"the model is not ready (state: {self.state})")

    def admit_request(
        self, request: GenerationRequest, max_tokens: int | None
    ) -> GenerationRequest:
        """`request` with its token limit, once it is known to fit a slot's context;
        `max_tokens` None: the rest of the slot's context."""
        self._check_admitting()
        assert self.model is not None
        if self.model.embedding_only:
            raise InvalidRequestError(
                f"{self.model.name} is an embedding model (an encoder): it computes "
                "embeddings (POST /v1/embeddings) and cannot generate text",
                param="model",
            )
        n_ctx = self.model.n_ctx  # each slot's context (ModelInfo.n_ctx is per slot)
        n_prompt = len(request.prompt_tokens)
        if max_tokens is None:
            max_tokens = max(1, n_ctx - n_prompt)
        if n_prompt + max_tokens > n_ctx:
            raise ContextOverflowError(n_prompt, max_tokens, n_ctx)
        return replace(request, max_tokens=max_tokens)

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
            waiting = len(self._waiting)
            if waiting >= self.max_queue:
                raise QueueFullError(waiting, self.max_queue, self._retry_after(waiting))
            self._jobs[job_id] = job
            self._waiting.append(job)
            self._wakeup.notify()
        if deadline is not None:
            self._deadlines.add(deadline, job)
        return job

    def _retry_after(self, waiting: int) -> int:
        """Seconds until a place in the queue is likely free: the jobs ahead, spread over the
        slots, at the average duration of recent jobs (whole seconds, at least 1)."""
        per_job = self._avg_job_s if self._avg_job_s is not None else 1.0
        return max(1, math.ceil(per_job * (waiting + 1) / max(1, self._slots_total)))

    @contextmanager
    def _vocabulary(self) -> Iterator[ModelBackend]:
        """The backend, for read-only vocabulary calls from other threads. The model thread
        leaves READY and waits for these calls to end before it frees the model, so no call
        can reach freed handles."""
        with self._lock:
            if self._state is not State.READY:
                raise NotReadyError(f"the model is not ready (state: {self.state})")
            self._users += 1
        try:
            yield self._backend
        finally:
            with self._lock:
                self._users -= 1
                self._idle.notify_all()

    def builtin_chat_template(
        self, messages: Sequence[ChatMessage], add_generation_prompt: bool = True
    ) -> str:
        with self._vocabulary() as backend:
            return backend.builtin_chat_template(messages, add_generation_prompt)

    def tokenize(
        self, text: str, add_special: bool = True, parse_special: bool = True
    ) -> list[int]:
        with self._vocabulary() as backend:
            return backend.tokenize(text, add_special, parse_special)

    def detokenize(self, tokens: Sequence[int]) -> str:
        with self._vocabulary() as backend:
            return backend.detokenize(tokens)

    def embed(self, inputs: Sequence[Sequence[int]]) -> list[list[float]]:
        """Pooled vectors of `inputs`, computed on the embedding thread, which owns the
        embedding context (apart from the generation batch and its thread)."""
        with self._vocabulary() as backend:
            return self._embedding.submit(backend.embed, inputs).result()

    def rank(self, inputs: Sequence[RankInput]) -> list[float]:
        """Relevance scores of query-document pairs, on the embedding thread (as embed),
        with the pairs of the other rerank requests waiting then (worker/rerank.py)."""
        with self._vocabulary() as backend:
            return self._ranks.rank(backend.rank, inputs)

    def media_prompt(
        self, tokens: Sequence[int], media: Sequence[Media], marker: int
    ) -> tuple[tuple[int, ...], tuple[MediaSpan, ...]]:
        """The prompt with its media's pieces (ModelBackend.media_prompt), off the model thread."""
        with self._vocabulary() as backend:
            return backend.media_prompt(tokens, media, marker)

    def check_grammar(self, grammar: str) -> None:
        with self._vocabulary() as backend:
            backend.check_grammar(grammar)

    @property
    def queue_depth(self) -> int:
        with self._lock:
            return len(self._waiting)

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
            self._fail_waiting()
            failed = self._state is State.ERROR
            with self._lock:
                # Leave READY first, then wait for vocabulary calls in flight: only then free.
                self._state = State.STOPPED if not failed else State.ERROR
                self._idle.wait_for(lambda: self._users == 0)
            self._embedding.shutdown(wait=True)
            self._backend.close()

    def _load(self) -> None:
        started = time.monotonic()
        try:
            path = self._model_path()
            if self.stopping.is_set():
                raise ShuttingDownError("the worker stopped while the model was being prepared")
            options = self._options_for(path) if self._options_for else self._options
            self.model = self._backend.load(path, options)
            self.backend_info = self._backend.backend_info()
        except Exception as exc:
            log.exception("model loading failed")
            if not isinstance(exc, WorkerError):
                exc = ModelLoadError(str(exc) or type(exc).__name__)
            self._error = exc
            self._state = State.ERROR
        else:
            self.load_seconds = time.monotonic() - started
            self._state = State.READY
            log.info("model %s loaded in %.1fs", self.model.path, self.load_seconds)
        finally:
            self._ready.set()

    def _next_waiting(self, block: bool) -> Job | None:
        """The next queued job; waits for one when `block` (nothing to decode meanwhile)."""
        with self._wakeup:
            while not self._waiting and not self._stop_seen:
                if not block:
                    return None
                self._wakeup.wait()
            if self._stop_seen:
                return None
            return self._waiting.popleft()

    def _serve(self) -> None:
        """The engine loop: fill free slots from the queue, decode one step, route events."""
        assert self.model is not None
        if self.model.embedding_only:  # nothing to generate: wait for the stop
            with self._wakeup:
                self._wakeup.wait_for(lambda: self._stop_seen)
            return
        decoder = self._backend.decoder()
        self._slots_total = decoder.n_slots
        while not (self._stop_seen and not self._running):
            while not self._stop_seen and decoder.free_slots() > 0:
                job = self._next_waiting(block=not self._running)
                if job is None:
                    break
                self._start(decoder, job)
            for job in self._running:
                if job.cancelled or self.stopping.is_set():
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
            self._cache_summary = decoder.cache_summary()

    def _start(self, decoder: BatchDecoder, job: Job) -> None:
        if self.stopping.is_set():
            self._fail(job, ShuttingDownError("the worker is shutting down"))
            return
        if job.cancelled:
            self._report_cancelled(job)
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

    def _report_cancelled(self, job: Job) -> None:
        """The end of a job cancelled before it reached a slot; the model is not touched."""
        if job.cancel_reason is CancelReason.TIMEOUT:
            self._fail(job, DeadlineExceededError("the timeout passed while it was queued"))
            return
        if job.cancel_reason is CancelReason.SHUTDOWN:
            self._fail(job, ShuttingDownError("the worker stopped before the job started"))
            return
        self._forget(job)
        self._emit(job, JobStarted(job.job_id, time.time()))
        self._emit(job, FinishEvent(StopReason.CANCELLED, 0, 0.0, job.prompt_tokens))

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
        self._deadlines.discard(job)
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

    def _fail_waiting(self) -> None:
        with self._lock:
            waiting = list(self._waiting)
            self._waiting.clear()
        for job in waiting:
            self._fail(job, ShuttingDownError("the worker is shutting down"))
