"""A scripted ModelBackend for HTTP and scheduler tests: no llama.cpp, deterministic output.

The fake stands in for llama.cpp only: its decoder implements the BatchDecoder the scheduler
really drives, and each token's bytes go through the production SequenceText (UTF-8 holding,
stop sequences, max_tokens), so HTTP tests of those run the product's code.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from llorch.worker.backend.errors import ModelLoadError, NoChatTemplateError
from llorch.worker.backend.grammar import GrammarError
from llorch.worker.backend.protocol import (
    BackendInfo,
    CacheSummary,
    ChatMessage,
    Device,
    FinishEvent,
    GenerationEvent,
    GenerationRequest,
    LoadOptions,
    LoraSpec,
    ModelInfo,
    SequenceFailed,
    StopReason,
)
from llorch.worker.backend.text import Emitted, SequenceText

# Tokens past Unicode's last code point are single raw bytes: id BYTE_BASE + b.
BYTE_BASE = 0x110000
N_VOCAB = BYTE_BASE + 256


@dataclass
class _Live:
    request: GenerationRequest
    output: SequenceText
    cancelled: bool = False


class FakeDecoder:
    """Each step advances every live sequence by one token of the backend's script, the way
    the real decoder advances every sequence by one token per llama_decode."""

    def __init__(self, backend: FakeBackend, n_slots: int) -> None:
        self.backend = backend
        self.n_slots = n_slots
        self.ctx_per_slot = backend.n_ctx
        self._live: dict[object, _Live] = {}
        self.steps = 0
        self.max_live = 0  # the most sequences decoded together in one step

    def free_slots(self) -> int:
        return self.n_slots - len(self._live)

    def add(self, key: object, request: GenerationRequest) -> None:
        assert self.free_slots() > 0, "the scheduler added a sequence without a free slot"
        self.backend.requests.append(request)
        self._live[key] = _Live(request, SequenceText(key, request.stop, request.max_tokens))

    def cancel(self, key: object) -> None:
        if key in self._live:
            self._live[key].cancelled = True

    def cache_summary(self) -> CacheSummary:
        return CacheSummary()

    def kv_used(self) -> int:
        return sum(len(s.request.prompt_tokens) + s.output.n_out for s in self._live.values())

    def step(self) -> list[tuple[object, GenerationEvent | SequenceFailed]]:
        out: Emitted = []
        self.steps += 1
        self.max_live = max(self.max_live, len(self._live))
        if self.backend.delay and self._live:
            time.sleep(self.backend.delay)
        for key, seq in list(self._live.items()):
            index = seq.output.n_out
            if seq.cancelled:
                self._finish(key, StopReason.CANCELLED, out)
            elif self.backend.fail is not None and index == self.backend.fail_at:
                del self._live[key]
                out.append((key, SequenceFailed(self.backend.fail)))
            elif index >= len(self.backend.tokens):
                self._finish(key, StopReason.EOS, out)
            else:
                token = self.backend.tokens[index]
                ended = seq.output.push(token, self.backend.token_bytes(token), out)
                if ended is not None:
                    self._finish(key, ended[0], out, ended[1])
        return out

    def _finish(
        self, key: object, reason: StopReason, out: Emitted, matched: str | None = None
    ) -> None:
        seq = self._live.pop(key)
        seq.output.close(out, matched)
        event = FinishEvent(
            stop_reason=reason,
            tokens_out=seq.output.n_out,
            decode_time_ms=2.0,
            prompt_tokens=len(seq.request.prompt_tokens),
            seed=seq.request.sampling.seed,
            stop_sequence_matched=matched,
        )
        out.append((key, event))


class FakeBackend:
    """Tokens are characters (id = code point); generation spells out `script`, one
    character per token, then ends with EOS. `pieces` replaces the script with raw byte
    tokens (to split UTF-8 characters across tokens). `delay`: seconds per decode step.
    `fail` is raised for a sequence at its token `fail_at`."""

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
        pieces: Sequence[bytes] | None = None,
        fail: Exception | None = None,
        fail_at: int = 0,
        control_tokens: Sequence[str] = (),
        embedding_only: bool = False,
    ) -> None:
        self.builtin_template = builtin_template
        self.chat_template = chat_template
        self.script = script
        self.pieces = pieces
        self.delay = delay
        self.load_gate = load_gate
        self.load_error = load_error
        self.n_ctx = n_ctx
        self.fail = fail
        self.fail_at = fail_at
        # Text that tokenizes to one control token when special tokens are parsed (ids past
        # the byte tokens), as `<end_of_turn>` does in Gemma's vocabulary.
        self.control_tokens = list(control_tokens)
        self.embedding_only = embedding_only
        self.lora: tuple[LoraSpec, ...] = ()
        self.embedded: list[list[int]] = []
        self.loaded = False
        self.closed = False
        self.requests: list[GenerationRequest] = []
        self.parallel = parallel
        self._decoder: FakeDecoder | None = None

    @property
    def tokens(self) -> list[int]:
        """The token ids generation spells out."""
        if self.pieces is not None:
            return [BYTE_BASE + b for piece in self.pieces for b in piece]
        return [ord(c) for c in self.script]

    def load(self, path: Path, options: LoadOptions) -> ModelInfo:
        if self.load_gate is not None:
            self.load_gate.wait(10)
        if self.load_error:
            raise ModelLoadError(self.load_error)
        self.loaded = True
        self.lora = options.lora
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
            n_vocab=N_VOCAB + len(self.control_tokens),
            n_gpu_layers=0,
            sha256="0" * 64,
            chat_template=self.chat_template,
            embedding_only=self.embedding_only,
            n_ctx_embed=self.n_ctx,
            lora=self.lora,
        )

    def backend_info(self) -> BackendInfo:
        return BackendInfo("fake", "0", "cpu", False, (Device("CPU", "fake cpu", "cpu"),), "")

    def tokenize(
        self, text: str, add_special: bool = True, parse_special: bool = True
    ) -> list[int]:
        tokens: list[int] = []
        at = 0
        while at < len(text):
            control = next(
                (c for c in self.control_tokens if parse_special and text.startswith(c, at)), None
            )
            if control is not None:
                tokens.append(N_VOCAB + self.control_tokens.index(control))
                at += len(control)
            else:
                tokens.append(ord(text[at]))
                at += 1
        return tokens

    def token_bytes(self, token: int) -> bytes:
        if token >= N_VOCAB:
            return self.control_tokens[token - N_VOCAB].encode()
        if token >= BYTE_BASE:
            return bytes([token - BYTE_BASE])
        # Surrogate code points are ids too (0xD800-0xDFFF): their bytes are not UTF-8, as a
        # real vocabulary's partial pieces are not, and detokenizing replaces them.
        return chr(token).encode("utf-8", "surrogatepass")

    def detokenize(self, tokens: Sequence[int]) -> str:
        return b"".join(self.token_bytes(t) for t in tokens).decode("utf-8", "replace")

    def embed(self, inputs: Sequence[Sequence[int]]) -> list[list[float]]:
        """A made-up vector per input: its length, and its first and last token."""
        self.embedded.extend(list(tokens) for tokens in inputs)
        return [[float(len(t)), float(t[0]), float(t[-1]), 1.0] for t in inputs]

    def check_grammar(self, grammar: str) -> None:
        if "root" not in grammar:  # llama.cpp needs a root rule
            raise GrammarError("the grammar does not parse (GBNF with a `root` rule)")

    def decoder(self) -> FakeDecoder:
        if self._decoder is None:
            self._decoder = FakeDecoder(self, self.parallel)
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
