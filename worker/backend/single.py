"""One request on its own through a batch decoder: for tests and benchmarks, which want a
generation without a scheduler. The worker itself never calls this."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from llorch.worker.backend.errors import ContextOverflowError
from llorch.worker.backend.protocol import (
    BatchDecoder,
    FinishEvent,
    GenerationEvent,
    GenerationRequest,
    SequenceFailed,
)


def generate(
    decoder: BatchDecoder,
    request: GenerationRequest,
    cancelled: Callable[[], bool] = lambda: False,
) -> Iterator[GenerationEvent]:
    """Yield one TokenEvent per generated token, then exactly one FinishEvent. The decoder
    must be idle; a failed sequence raises its error."""
    if len(request.prompt_tokens) + request.max_tokens > decoder.ctx_per_slot:
        raise ContextOverflowError(
            len(request.prompt_tokens), request.max_tokens, decoder.ctx_per_slot
        )
    key = object()
    decoder.add(key, request)
    while True:
        if cancelled():
            decoder.cancel(key)
        for _, event in decoder.step():
            if isinstance(event, SequenceFailed):
                raise event.error
            yield event
            if isinstance(event, FinishEvent):
                return
