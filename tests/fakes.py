"""A scripted ModelBackend for HTTP and scheduler tests: no llama.cpp, deterministic output."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from llorch.worker.backend.errors import ContextOverflowError, ModelLoadError, NoChatTemplateError
from llorch.worker.backend.protocol import (
    BackendInfo,
    ChatMessage,
    Device,
    FinishEvent,
    GenerationEvent,
    GenerationRequest,
    LoadOptions,
    ModelInfo,
    SequenceFailed,
    StopReason,
    TokenEvent,
)


class IteratorDecoder:
    """A BatchDecoder over a backend's generate(): each step advances every sequence by one
    event, round robin, the way the real decoder advances every sequence by one token."""

    def __init__(self, backend: FakeBackend, n_slots: int) -> None:
        self.backend = backend
        self.n_slots = n_slots
        self.ctx_per_slot = backend.n_ctx
        self._live: dict[object, Iterator[GenerationEvent]] = {}
        self._cancelled: set[object] = set()

    def free_slots(self) -> int:
        return self.n_slots - len(self._live)

    def add(self, key: object, request: GenerationRequest) -> None:
        assert self.free_slots() > 0
        events = self.backend.generate(request, lambda: key in self._cancelled)
        self._live[key] = events

    def cancel(self, key: object) -> None:
        self._cancelled.add(key)

    def step(self) -> list[tuple[object, GenerationEvent | SequenceFailed]]:
        out: list[tuple[object, GenerationEvent | SequenceFailed]] = []
        for key, events in list(self._live.items()):
            try:
                event = next(events)
            except Exception as exc:
                del self._live[key]
                out.append((key, SequenceFailed(exc)))
                continue
            out.append((key, event))
            if isinstance(event, FinishEvent):
                del self._live[key]
                self._cancelled.discard(key)
        return out

    def kv_used(self) -> int:
        return 0


class FakeBackend:
    """Tokens are characters (id = code point); generation spells out `script` one character
    per token, with `delay` seconds between tokens."""

    def __init__(
        self,
        script: str = "Hello world",
        delay: float = 0.0,
        load_gate: threading.Event | None = None,
        load_error: str | None = None,
        n_ctx: int = 64,
        builtin_template: bool = True,
        parallel: int = 1,
        chat_template: str | None = None,
    ) -> None:
        self.builtin_template = builtin_template
        self.chat_template = chat_template
        self.script = script
        self.delay = delay
        self.load_gate = load_gate
        self.load_error = load_error
        self.n_ctx = n_ctx
        self.loaded = False
        self.closed = False
        self.requests: list[GenerationRequest] = []
        self.parallel = parallel
        self._decoder: IteratorDecoder | None = None

    def load(self, path: Path, options: LoadOptions) -> ModelInfo:
        if self.load_gate is not None:
            self.load_gate.wait(10)
        if self.load_error:
            raise ModelLoadError(self.load_error)
        self.loaded = True
        return self.info()

    def info(self) -> ModelInfo:
        return ModelInfo(
            path=Path("/models/fake.gguf"),
            architecture="fake",
            name="fake",
            description="scripted",
            size_bytes=1,
            n_params=1,
            n_ctx_train=self.n_ctx,
            n_ctx=self.n_ctx,
            n_vocab=0x110000,
            n_gpu_layers=0,
            sha256="0" * 64,
            chat_template=self.chat_template,
        )

    def backend_info(self) -> BackendInfo:
        return BackendInfo("fake", "0", "cpu", False, (Device("CPU", "fake cpu", "cpu"),), "")

    def tokenize(self, text: str, add_special: bool = True) -> list[int]:
        return [ord(c) for c in text]

    def detokenize(self, tokens: Sequence[int]) -> str:
        return "".join(chr(t) for t in tokens)

    def generate(
        self, request: GenerationRequest, cancelled: Callable[[], bool]
    ) -> Iterator[GenerationEvent]:
        if len(request.prompt_tokens) + request.max_tokens > self.n_ctx:
            raise ContextOverflowError(len(request.prompt_tokens), request.max_tokens, self.n_ctx)
        self.requests.append(request)
        out = ""
        for i, ch in enumerate(self.script[: request.max_tokens]):
            if cancelled():
                yield FinishEvent(StopReason.CANCELLED, i, 1.0, len(request.prompt_tokens))
                return
            if self.delay:
                time.sleep(self.delay)
            out += ch
            for stop in request.stop:
                if stop in out:
                    yield TokenEvent(i, ord(ch), "")
                    yield FinishEvent(
                        StopReason.STOP_SEQUENCE, i + 1, 1.0, 0, stop_sequence_matched=stop
                    )
                    return
            yield TokenEvent(i, ord(ch), ch)
        n = min(len(self.script), request.max_tokens)
        reason = StopReason.MAX_TOKENS if n == request.max_tokens else StopReason.EOS
        yield FinishEvent(reason, n, 2.0, len(request.prompt_tokens), seed=request.sampling.seed)

    def decoder(self) -> IteratorDecoder:
        if self._decoder is None:
            self._decoder = IteratorDecoder(self, self.parallel)
        return self._decoder

    def builtin_chat_template(
        self, messages: Sequence[ChatMessage], add_generation_prompt: bool
    ) -> str:
        if not self.builtin_template:
            raise NoChatTemplateError("the fake model has no chat template")
        turns = "".join(f"<{m.role}>{m.content}</{m.role}>" for m in messages)
        return turns + ("<assistant>" if add_generation_prompt else "")

    def close(self) -> None:
        self.closed = True
