"""Typed errors of the worker; the HTTP layer maps each class to a status code in one place."""

from __future__ import annotations


class WorkerError(Exception):
    """Base of every error the worker reports to a client."""

    code = "INFERENCE_FAILED"


class ModelLoadError(WorkerError):
    code = "MODEL_LOAD_FAILED"


class ContextOverflowError(WorkerError):
    """The prompt, or the prompt plus max_tokens, does not fit the context."""

    code = "INVALID_REQUEST"

    def __init__(self, prompt_tokens: int, max_tokens: int, n_ctx: int) -> None:
        self.prompt_tokens = prompt_tokens
        self.max_tokens = max_tokens
        self.n_ctx = n_ctx
        if prompt_tokens >= n_ctx:
            what = f"the prompt is {prompt_tokens} tokens, the context holds {n_ctx}"
        else:
            what = (
                f"prompt ({prompt_tokens} tokens) + max_tokens ({max_tokens}) = "
                f"{prompt_tokens + max_tokens} exceeds the context of {n_ctx} tokens; "
                f"max_tokens can be at most {n_ctx - prompt_tokens}"
            )
        super().__init__(what)


class NotReadyError(WorkerError):
    code = "NOT_READY"


class InferenceError(WorkerError):
    code = "INFERENCE_FAILED"


class ShuttingDownError(WorkerError):
    code = "SHUTTING_DOWN"


class QueueFullError(WorkerError):
    """Admission refused: the queue of waiting requests is full."""

    code = "QUEUE_FULL"

    def __init__(self, depth: int, limit: int, retry_after_s: int = 1) -> None:
        self.depth = depth
        self.limit = limit
        self.retry_after_s = retry_after_s
        super().__init__(f"the queue is full ({depth} requests waiting, the limit is {limit})")


class DrainingError(WorkerError):
    """Admission refused: the worker is draining and takes no new work."""

    code = "DRAINING"


class DeadlineExceededError(WorkerError):
    """The request's timeout_ms passed before it finished."""

    code = "TIMEOUT"


class OutOfMemoryError(WorkerError):
    """llama.cpp could not allocate memory (device or host) for the model or a batch."""

    code = "VRAM_OOM"


class NoChatTemplateError(WorkerError):
    code = "INVALID_REQUEST"


class InvalidRequestError(WorkerError):
    """A request that is well-formed JSON but that the model cannot run (bad grammar, ...)."""

    code = "INVALID_REQUEST"


class DuplicateJobError(WorkerError):
    """A job with this id is already queued or running."""

    code = "DUPLICATE_JOB"

    def __init__(self, job_id: str) -> None:
        self.job_id = job_id
        super().__init__(f"job {job_id!r} is already in flight; job ids must be unique")
