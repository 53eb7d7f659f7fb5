"""Typed errors of the worker. Each class carries its HTTP status and its code; each surface
(the worker contract, OpenAI's API) turns them into its own error shape in one handler, and
nothing ever classifies an error by its text."""

from __future__ import annotations

from typing import Any, ClassVar


class WorkerError(Exception):
    """Base of every error the worker reports to a client."""

    code: ClassVar[str] = "INFERENCE_FAILED"  # the worker contract's code
    status: ClassVar[int] = 500
    openai_code: ClassVar[str | None] = None  # OpenAI's `code`; None: `code` in lower case

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        constraint: str | None = None,
        value: Any = None,
    ) -> None:
        super().__init__(message)
        self.param = param  # the request field at fault, when one is
        self.constraint = constraint  # what that field must satisfy
        self.value = value

    @property
    def headers(self) -> dict[str, str]:
        """Headers that tell a client what to do next (when to retry, how to authenticate)."""
        return {}


class InvalidRequestError(WorkerError):
    """A request that is well-formed JSON but that the worker cannot run: a token id outside
    the vocabulary, a bad grammar or schema, a template that refuses the messages."""

    code = "INVALID_REQUEST"
    status = 400


class ModelLoadError(WorkerError):
    code = "MODEL_LOAD_FAILED"
    status = 503


class ContextOverflowError(InvalidRequestError):
    """The prompt, or the prompt plus max_tokens, does not fit the context."""

    openai_code = "context_length_exceeded"

    def __init__(self, prompt_tokens: int, max_tokens: int, n_ctx: int) -> None:
        self.prompt_tokens = prompt_tokens
        self.max_tokens = max_tokens
        self.n_ctx = n_ctx
        if prompt_tokens >= n_ctx:
            what = f"the prompt is {prompt_tokens} tokens, the context holds {n_ctx}"
            param, value = "prompt", prompt_tokens
        else:
            what = (
                f"prompt ({prompt_tokens} tokens) + max_tokens ({max_tokens}) = "
                f"{prompt_tokens + max_tokens} exceeds the context of {n_ctx} tokens; "
                f"max_tokens can be at most {n_ctx - prompt_tokens}"
            )
            param, value = "max_tokens", max_tokens
        super().__init__(
            what, param=param, constraint=f"prompt_tokens + max_tokens <= {n_ctx}", value=value
        )


class NotReadyError(WorkerError):
    code = "NOT_READY"
    status = 503


class InferenceError(WorkerError):
    code = "INFERENCE_FAILED"
    status = 500


class ShuttingDownError(WorkerError):
    code = "SHUTTING_DOWN"
    status = 503


class RequestCancelledError(WorkerError):
    """The request's job was cancelled by a client (DELETE /jobs/{id}) before it ended."""

    code = "CANCELLED"
    status = 409
    openai_code = "request_cancelled"


class QueueFullError(WorkerError):
    """Admission refused: the queue of waiting requests is full."""

    code = "QUEUE_FULL"
    status = 429
    openai_code = "rate_limit_exceeded"

    def __init__(self, depth: int, limit: int, retry_after_s: int = 1) -> None:
        self.depth = depth
        self.limit = limit
        self.retry_after_s = retry_after_s
        super().__init__(f"the queue is full ({depth} requests waiting, the limit is {limit})")

    @property
    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(max(1, self.retry_after_s))}


class DrainingError(WorkerError):
    """Admission refused: the worker is draining and takes no new work."""

    code = "DRAINING"
    status = 503


class DeadlineExceededError(WorkerError):
    """The request's timeout_ms passed before it finished."""

    code = "TIMEOUT"
    status = 504


class OutOfMemoryError(WorkerError):
    """llama.cpp could not allocate memory (device or host) for the model, its context or a
    batch. `needed_bytes`/`free_bytes`: what was asked for and what the device had, when known
    (at load), so that an operator sees by how much it missed."""

    code = "VRAM_OOM"
    status = 503

    def __init__(
        self,
        message: str,
        *,
        device: str | None = None,
        needed_bytes: int | None = None,
        free_bytes: int | None = None,
    ) -> None:
        super().__init__(message)
        self.device = device
        self.needed_bytes = needed_bytes
        self.free_bytes = free_bytes


class NoChatTemplateError(InvalidRequestError):
    pass


class DuplicateJobError(WorkerError):
    """A job with this id is already queued or running."""

    code = "DUPLICATE_JOB"
    status = 409

    def __init__(self, job_id: str) -> None:
        self.job_id = job_id
        super().__init__(
            f"job {job_id!r} is already in flight; job ids must be unique", param="job_id"
        )


class JobNotFoundError(WorkerError):
    """No job with this id is queued or running."""

    code = "NOT_FOUND"
    status = 404
