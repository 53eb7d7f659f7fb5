"""The engine: the model thread's async face, and the one object the HTTP layer talks to.

Routes call `generate`, `abort`, `tokenize`, `detokenize`, `chat_prompt`, `capacity`, `health`
and `drain`; they never touch the scheduler's queue, a job's sink or the event loop. The bridge
from the model thread to the event loop lives here once: each job's events cross with
`call_soon_threadsafe` into an asyncio queue that its JobStream reads.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from llorch.worker import media, rerank
from llorch.worker.backend import grammar
from llorch.worker.backend.errors import InvalidRequestError, NotReadyError, WorkerError
from llorch.worker.backend.protocol import (
    MAX_SEED,
    BackendInfo,
    ChatMessage,
    GenerationRequest,
    LoraKey,
    MediaSpan,
    ModelInfo,
    RankInput,
    lora_key,
)
from llorch.worker.chat import prompt
from llorch.worker.chat import template as chat
from llorch.worker.chat.prompt import ChatDefaults
from llorch.worker.chat.stream import ChatStream
from llorch.worker.chat.types import ChatRequest, JsonFormat
from llorch.worker.job_stream import JobStream
from llorch.worker.jobs import Capacity, JobEvent, State
from llorch.worker.media import MarkedVocabulary, MediaLimits, MediaRef
from llorch.worker.rerank import TemplateForm
from llorch.worker.scheduler import Scheduler

__all__ = ["Embeddings", "Engine", "Health", "JobRequest", "JobStream"]

log = logging.getLogger("llorch.engine")

# Observes each job's events on the model thread (metrics); built per job from its prompt size.
JobObserverFactory = Callable[[int], Callable[[JobEvent], None]]


@dataclass(frozen=True)
class JobRequest:
    """A generation from a prompt, as a surface asks for it. `generation` carries whatever
    the decoder reads (sampling, stops, log-probabilities, ...) and travels whole: the engine
    fills in the prompt's tokens, the token limit and the adapters at admission."""

    job_id: str
    prompt: str | Sequence[int]  # text (control tokens parsed, as documented) or token ids
    max_tokens: int | None  # None: the rest of the slot's context
    generation: GenerationRequest = field(default_factory=GenerationRequest)
    timeout_s: float | None = None  # for the whole job, queueing included
    # Adapters by name with a scale (None: the served one); None: every served adapter.
    lora: Sequence[tuple[str, float | None]] | None = None
    json_format: JsonFormat | None = None  # the answer is JSON (becomes the grammar)
    grammar_param: str = "grammar"  # the request field an error about the grammar names
    # Images, in the order of their markers in the prompt (media.EXECUTE_MARKER in text; a
    # chat's tokens carry media.MARKER_ID where its template put media.CHAT_MARKER).
    media: tuple[MediaRef, ...] = ()


@dataclass(frozen=True)
class Health:
    """Everything /health shows; built from data cached at load time, never waiting on the
    model thread."""

    state: State
    error: WorkerError | None
    queue_depth: int
    active_job: str | None
    model: ModelInfo | None
    backend: BackendInfo | None
    load_seconds: float | None
    uptime_s: float


@dataclass(frozen=True)
class Embeddings:
    vectors: np.ndarray  # (inputs, dimensions), float32
    prompt_tokens: int


def _embedding_prompt(model: ModelInfo, name: str | None) -> str:
    """The text put before each text to embed: the named prompt, else the default one."""
    name = name if name is not None else model.default_prompt
    if name is None:
        return ""
    if name not in model.embedding_prompts:
        names = ", ".join(sorted(model.embedding_prompts)) or "none"
        raise InvalidRequestError(
            f"prompt_name {name!r} is not one of {model.name}'s prompts ({names})",
            param="prompt_name",
            constraint=f"one of: {names}",
        )
    return model.embedding_prompts[name]


class Engine:
    """Backend → scheduler → engine; the composition root (server.py) builds the chain."""

    def __init__(
        self,
        scheduler: Scheduler,
        observe_job: JobObserverFactory | None = None,
        json_grammar: Callable[[dict[str, Any] | None], str] = grammar.json_grammar,
        chat_defaults: ChatDefaults | None = None,
        media_limits: MediaLimits | None = None,
    ) -> None:
        self.scheduler = scheduler
        self.chat_defaults = chat_defaults or ChatDefaults()
        self.media_limits = media_limits or MediaLimits()
        self._observe_job = observe_job
        # JSON schema (None: any object) -> GBNF; the converter is llama.cpp's, imported only
        # when it runs, so that importing the HTTP layer loads no llama_cpp.
        self._json_grammar = json_grammar
        self._started = time.monotonic()

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        self._started = time.monotonic()
        self.scheduler.start()

    async def stop(self) -> None:
        await asyncio.to_thread(self.scheduler.stop)

    def wait_loaded(self, timeout: float | None = None) -> bool:
        return self.scheduler.wait_loaded(timeout)

    def drain(self) -> State:
        """Admit nothing new; what is queued and running finishes."""
        self.scheduler.drain()
        return self.scheduler.state

    def drained(self) -> bool:
        """Draining and nothing left in flight: safe to stop the process."""
        return self.scheduler.state is State.DRAINING and self.scheduler.wait_drained(0)

    def cancel_all(self) -> None:
        self.scheduler.cancel_all()

    def idle(self) -> bool:
        """Nothing queued or running."""
        return self.scheduler.wait_drained(0)

    def wait_drained(self, timeout: float | None = None) -> bool:
        return self.scheduler.wait_drained(timeout)

    # -- what the routes read --------------------------------------------------------------

    @property
    def state(self) -> State:
        return self.scheduler.state

    @property
    def model(self) -> ModelInfo | None:
        return self.scheduler.model

    def loaded(self) -> ModelInfo:
        """The model, or NotReadyError while there is none."""
        model = self.scheduler.model
        if model is None or self.scheduler.state not in (State.READY, State.DRAINING):
            raise NotReadyError(f"the model is not ready (state: {self.scheduler.state})")
        return model

    def capacity(self) -> Capacity:
        return self.scheduler.capacity()

    def health(self) -> Health:
        scheduler = self.scheduler
        return Health(
            state=scheduler.state,
            error=scheduler.error,
            queue_depth=scheduler.queue_depth,
            active_job=scheduler.active_job_id,
            model=scheduler.model,
            backend=scheduler.backend_info,
            load_seconds=scheduler.load_seconds,
            uptime_s=time.monotonic() - self._started,
        )

    # -- text ------------------------------------------------------------------------------

    async def tokenize(
        self, text: str, add_special: bool = True, parse_special: bool = True
    ) -> list[int]:
        return await asyncio.to_thread(self.scheduler.tokenize, text, add_special, parse_special)

    async def tokenize_all(self, texts: Sequence[str], add_special: bool = True) -> list[list[int]]:
        """Each text tokenized, in one hop to a thread: an await a text was ~0.4 ms of event
        loop and thread handoffs each, a tenth of a batch of 32 short texts' time."""
        return await asyncio.to_thread(
            lambda: [self.scheduler.tokenize(text, add_special) for text in texts]
        )

    async def detokenize(self, tokens: Sequence[int], param: str = "tokens") -> str:
        self.check_token_ids(tokens, param)
        return await asyncio.to_thread(self.scheduler.detokenize, tokens)

    def check_token_ids(self, tokens: Sequence[int], param: str) -> None:
        n_vocab = self.loaded().n_vocab
        bad = [t for t in tokens if not 0 <= t < n_vocab]
        if bad:
            raise InvalidRequestError(
                f"token ids out of the vocabulary (0..{n_vocab - 1}): {bad[:10]}",
                param=param,
                constraint=f"0 <= id < {n_vocab}",
                value=bad[:10],
            )

    async def chat_prompt(self, messages: Sequence[ChatMessage]) -> list[int]:
        """The tokens of a chat prompt, ready for the assistant's turn. Only the template's
        own markup becomes control tokens; the messages' text is tokenized as text."""
        model = self.loaded()
        return await asyncio.to_thread(chat.chat_prompt_tokens, self.scheduler, model, messages)

    def lora_key(self, choices: Sequence[tuple[str, float | None]] | None) -> LoraKey:
        """The adapter set of a request; a name that is not served is a 400 listing those
        that are."""
        served = {spec.name: spec for spec in self.loaded().lora}
        if choices is None:
            return lora_key([(spec.name, spec.scale) for spec in served.values()])
        pairs = []
        for name, scale in choices:
            if name not in served:
                raise InvalidRequestError(
                    f"no LoRA adapter {name[:64]!r} is served; served: "
                    f"{', '.join(sorted(served)) or 'none'}",
                    param="lora",
                    value=name,
                )
            pairs.append((name, served[name].scale if scale is None else scale))
        return lora_key(pairs)

    async def json_grammar(self, schema: dict[str, Any] | None, param: str) -> str:
        """The grammar of JSON documents valid under `schema` (None: any object), built and
        parsed at admission, off the event loop and the model thread."""
        try:
            text = await asyncio.to_thread(self._json_grammar, schema)
            await asyncio.to_thread(self.scheduler.check_grammar, text)
        except InvalidRequestError as exc:
            exc.param = param
            raise
        return text

    async def grammar(self, text: str, param: str = "grammar") -> str:
        """A GBNF grammar checked at admission: bounded (grammar.check_gbnf), then parsed by
        llama.cpp off the model thread, so a bad one is a 400 and never reaches the model."""
        grammar.check_gbnf(text, param)
        try:
            await asyncio.to_thread(self.scheduler.check_grammar, text)
        except InvalidRequestError as exc:
            exc.param = param
            raise
        return text

    # -- generation ------------------------------------------------------------------------

    async def generate(self, request: JobRequest) -> JobStream:
        """Admit and queue a job; its events come from the returned stream. Admission
        errors (context overflow, queue full, draining, duplicate id) raise here, before
        anything streams."""
        return (await self.generate_choices(request, 1))[0]

    async def _prompt_tokens(self, request: JobRequest) -> list[int]:
        self.loaded()
        if isinstance(request.prompt, str):
            tokens = await self.tokenize(request.prompt, add_special=True)
        else:
            tokens = list(request.prompt)
            self.check_token_ids(tokens, "prompt")
        if not tokens:
            raise InvalidRequestError(
                "the prompt is empty (it has no tokens)", param="prompt", constraint="min 1 token"
            )
        return tokens

    async def _media_prompt(self, request: JobRequest) -> tuple[list[int], tuple[MediaSpan, ...]]:
        """The prompt's tokens with its images' pieces in place, each image loaded, decoded
        and bounded first (worker/media.py): a bad one is a 400 naming its field."""
        model = self.loaded()
        first = request.media[0].param
        for ref in request.media:
            needs, what = ("audio", "audio") if ref.kind == "audio" else ("vision", "images")
            if needs not in model.media_inputs:
                with_projector = (
                    "its projector reads " + " and ".join(model.media_inputs)
                    if model.media_inputs
                    else "serve it with its projector (--mmproj)"
                )
                raise InvalidRequestError(
                    f"{ref.param}: {model.name} takes no {what}; {with_projector}",
                    param=ref.param,
                )
        media.check_count(request.media, self.media_limits, first.split("[")[0])
        if isinstance(request.prompt, str):
            tokens = await asyncio.to_thread(
                media.tokenize_marked,
                self.scheduler.tokenize,
                request.prompt,
                media.EXECUTE_MARKER,
            )
        else:
            tokens = list(request.prompt)
            self.check_token_ids([t for t in tokens if t != media.MARKER_ID], "prompt")
        markers = tokens.count(media.MARKER_ID)
        if markers != len(request.media):
            where = "prompt" if isinstance(request.prompt, str) else "the rendered chat"
            raise InvalidRequestError(
                f"{where} has {markers} media markers ({media.EXECUTE_MARKER} in a prompt) "
                f"for {len(request.media)} media parts (images, then audio)",
                param="prompt" if isinstance(request.prompt, str) else "messages",
            )
        limits = self.media_limits
        loaded = await asyncio.gather(
            *(asyncio.to_thread(media.load_media, ref, limits) for ref in request.media)
        )
        full, spans = await asyncio.to_thread(
            self.scheduler.media_prompt, tokens, loaded, media.MARKER_ID
        )
        if full and full[-1] < 0:
            raise InvalidRequestError(
                "the prompt ends with an image or audio: text must follow it (the first token is "
                "predicted from text)",
                param="prompt",
            )
        return list(full), spans

    def _submit(
        self, request: JobRequest, tokens: list[int], generation: GenerationRequest
    ) -> JobStream:
        gen = self.scheduler.admit_request(
            replace(generation, prompt_tokens=tuple(tokens), lora=self.lora_key(request.lora)),
            request.max_tokens,
        )
        stream = JobStream(self.scheduler, gen)
        observe = self._observe_job(len(tokens)) if self._observe_job else None

        def sink(event: JobEvent) -> None:
            if observe is not None:
                observe(event)
            stream.sink(event)

        stream.job = self.scheduler.submit(request.job_id, gen, sink, timeout_s=request.timeout_s)
        return stream

    async def _checked_generation(self, request: JobRequest) -> GenerationRequest:
        """The request's decoding with its logit-bias ids checked against the vocabulary and
        its grammar (or JSON answer) parsed by llama.cpp: a bad one is a 400 here."""
        generation = request.generation
        sampling = generation.sampling
        n_vocab = self.loaded().n_vocab
        for token, _ in sampling.logit_bias:
            if not 0 <= token < n_vocab:
                raise InvalidRequestError(
                    f"logit_bias: token id {token} is not in the vocabulary (0..{n_vocab - 1})",
                    param="logit_bias",
                    constraint=f"0 <= token id < {n_vocab}",
                    value=str(token),
                )
        if request.json_format is not None:
            fmt = request.json_format
            schema = None if fmt.schema is None else dict(fmt.schema)
            text = await self.json_grammar(schema, param=fmt.param)
            return replace(generation, sampling=replace(sampling, grammar=text))
        if sampling.grammar is not None:
            await self.grammar(sampling.grammar, request.grammar_param)
        return generation

    async def generate_choices(self, request: JobRequest, n: int) -> list[JobStream]:
        """n jobs of one prompt (job ids `ID`, `ID-1`, ...), each with its own seed (the
        request's seed + i when one is given). Queued together, they are decoded together and
        the prompt is read once: the others copy its KV cache. Refused as a whole."""
        # The prompt is tokenized and the grammar parsed once for every choice.
        spans: tuple[MediaSpan, ...] = ()
        if request.media:
            tokens, spans = await self._media_prompt(request)
        else:
            tokens = await self._prompt_tokens(request)
        checked = await self._checked_generation(request)
        if spans:  # drafts are looked up in the text: no speculation over placeholders
            checked = replace(checked, media=spans, speculative=False)
        streams: list[JobStream] = []
        try:
            for i in range(n):
                sampling = checked.sampling
                seed = None if sampling.seed is None else (sampling.seed + i) % (MAX_SEED + 1)
                generation = replace(checked, sampling=replace(sampling, seed=seed))
                job_id = request.job_id if i == 0 else f"{request.job_id}-{i}"
                streams.append(self._submit(replace(request, job_id=job_id), tokens, generation))
        except BaseException:
            for stream in streams:
                stream.cancel()
            raise
        return streams

    async def chat(self, request: ChatRequest, generation: GenerationRequest) -> list[ChatStream]:
        """Admit a chat: the model's template renders the messages and tools, the grammar
        forces or watches for the family's calls, and each choice's output is read back as
        chat events. `generation` carries what the surface set (sampling, stops,
        log-probabilities, speculation). Refused as a whole, before anything streams."""
        prepared = await self._prepared(request, generation)
        job = JobRequest(
            job_id=request.job_id,
            prompt=prepared.tokens,
            max_tokens=request.max_tokens,
            generation=prepared.generation,
            timeout_s=request.timeout_s,
            lora=request.lora,
            grammar_param=prepared.grammar_param,
            media=request.media,
        )
        streams = await self.generate_choices(job, request.n)
        return [ChatStream(s, prepared.plan, len(prepared.tokens)) for s in streams]

    async def chat_tokens(self, request: ChatRequest) -> int:
        """How many tokens the prompt of `request` is (its template rendered with its tools),
        without generating: what count_tokens / input_tokens routes answer."""
        prepared = await self._prepared(request, GenerationRequest(sampling=request.sampling))
        if request.media:  # each image counts the tokens its embeddings take
            job = JobRequest(request.job_id, prepared.tokens, None, media=request.media)
            return len((await self._media_prompt(job))[0])
        return len(prepared.tokens)

    async def _prepared(
        self, request: ChatRequest, generation: GenerationRequest
    ) -> prompt.PreparedChat:
        """The chat's prompt, grammar and reading plan, made off the event loop."""

        def json_grammar(schema: Mapping[str, Any] | None) -> str:
            return self._json_grammar(None if schema is None else dict(schema))

        return await asyncio.to_thread(
            prompt.prepare,
            request,
            self.loaded(),
            MarkedVocabulary(self.scheduler) if request.media else self.scheduler,
            self.chat_defaults,
            generation,
            json_grammar,
        )

    async def embed(
        self,
        inputs: Sequence[str | Sequence[int]],
        *,
        truncate: bool = False,
        param: str = "input",
        prompt_name: str | None = None,
    ) -> Embeddings:
        """A vector per input (texts tokenized with the model's special tokens, or token
        ids), normalised (L2) unless the model's own config says not to. An input longer
        than the model takes is a 400 naming the limit, or cut to it when `truncate`. A
        text gets the model's prompt named `prompt_name` (else its default one) in front,
        as sentence-transformers' encode does."""
        model = self.loaded()
        if model.reranker:
            raise InvalidRequestError(
                f"{model.name} is a reranker (a cross-encoder): it scores query-document "
                "pairs (POST /v1/rerank) and gives no embeddings",
                param="model",
            )
        prompt = _embedding_prompt(model, prompt_name)
        inputs = [prompt + item if isinstance(item, str) else item for item in inputs]
        tokenized = iter(await self.tokenize_all([i for i in inputs if isinstance(i, str)]))
        token_lists: list[list[int]] = []
        for i, item in enumerate(inputs):
            tokens = next(tokenized) if isinstance(item, str) else list(item)
            if not isinstance(item, str):
                self.check_token_ids(tokens, f"{param}[{i}]")
            if not tokens:
                raise InvalidRequestError(f"input {i} is empty", param=f"{param}[{i}]")
            if len(tokens) > model.n_ctx_embed:
                if not truncate:
                    raise InvalidRequestError(
                        f"input {i} is {len(tokens)} tokens; {model.name} embeds at most "
                        f"{model.n_ctx_embed} (or ask for truncate: true)",
                        param=f"{param}[{i}]",
                        constraint=f"tokens <= {model.n_ctx_embed}",
                    )
                tokens = tokens[: model.n_ctx_embed]
            token_lists.append(tokens)
        vectors = np.asarray(
            await asyncio.to_thread(self.scheduler.embed, token_lists), dtype=np.float32
        )
        if model.normalize_embeddings:
            norms = np.linalg.norm(vectors, axis=1, keepdims=True)
            vectors = (vectors / np.where(norms > 0, norms, 1.0)).astype(np.float32)
        return Embeddings(vectors, sum(len(t) for t in token_lists))

    async def rerank(
        self,
        query: str,
        documents: Sequence[str],
        *,
        truncate: bool = True,
        instruction: str | None = None,
    ) -> rerank.Ranking:
        """The reranker's score of each (query, document) pair, in the documents' order (a
        cross-encoder's logit; an LLM reranker's "yes" logit less its "no"); pairs are formed
        and cut as worker/rerank.py says, and decoded together."""
        model = self.loaded()
        if not model.reranker:
            raise InvalidRequestError(
                f"{model.name} is not a reranker (a cross-encoder whose GGUF pools by rank); "
                "it cannot score documents",
                param="model",
            )
        if model.rerank_template is not None:  # an LLM reranker: its prompt per pair
            form = TemplateForm(model.rerank_template).instructed(instruction)
            inputs = await asyncio.to_thread(self._prompt_pairs, form, query, documents, truncate)
        elif instruction is not None:
            raise InvalidRequestError(
                f"{model.name} is a cross-encoder: it reads no instruction (an LLM reranker "
                "such as Qwen3-Reranker does)",
                param="instruction",
            )
        else:
            inputs = await self._cross_encoder_pairs(query, documents, truncate=truncate)
        scores = await asyncio.to_thread(self.scheduler.rank, inputs)
        return rerank.Ranking(scores, sum(len(pair.tokens) for pair in inputs))

    def _prompt_pairs(
        self, form: TemplateForm, query: str, documents: Sequence[str], truncate: bool
    ) -> list[RankInput]:
        """An LLM reranker's pairs, its rerank template filled per document (run off the
        event loop: one trip for every text)."""
        scheduler = self.scheduler
        return rerank.template_pairs(
            form,
            lambda text, special: scheduler.tokenize(text, False, special),
            scheduler.detokenize,
            query,
            documents,
            limit=self.loaded().n_ctx_embed,
            truncate=truncate,
        )

    async def _cross_encoder_pairs(
        self, query: str, documents: Sequence[str], *, truncate: bool
    ) -> list[RankInput]:
        model = self.loaded()
        form = rerank.PairForm.from_single(await self.tokenize(""), model.pair_separator)
        query_tokens = await self.tokenize(query, add_special=False)
        document_tokens = await self.tokenize_all(documents, add_special=False)
        return rerank.pairs(
            form, query_tokens, document_tokens, limit=model.n_ctx_embed, truncate=truncate
        )

    def abort(self, job_id: str) -> bool:
        """Cancel a queued or running job: a queued one ends at once (CANCELLED), a running
        one at the next decode step. False when no such job is in flight."""
        return self.scheduler.cancel_job(job_id)
