"""Sentence embeddings in a llama.cpp context of their own (embeddings on), never inside the
generation batch: many inputs go through one decode, one sequence each, and llama.cpp pools
each sequence (llama_get_embeddings_seq) as the model's GGUF says (mean, CLS, last token).

A generative model has no pooling of its own: it is pooled by its last token (the hidden
state that predicts what follows, as decoder embedding models such as e5-mistral use), or
by the mean when asked. An encoder (BERT: non-causal attention) needs each input whole in one
micro-batch, so the context's batch is its whole context.

A causal model pooled by its last token (an LLM reranker, a decoder embedder with an
instruction prompt) reads a prefix its inputs share once: one sequence decodes it, the others
are given its cells (llama_memory_seq_cp), and each decodes only what follows. The prefix stays
in the cells for the next call that starts with it (the next request about the same query).

A cross-encoder's GGUF pools by rank: each sequence (a query-document pair) gives its
classifier's logit, read the same way (rank). Where its pairs have a second segment to mark
(BERT's token type 1), they are fed as input embeddings (backend/segments.py). An LLM
reranker (Qwen3-Reranker) gives the softmax of its "yes" and "no" logits, read back as their
difference.
"""

from __future__ import annotations

import ctypes
import math
from collections.abc import Iterator, Sequence
from typing import Any

import gguf
import llama_cpp as ll
import numpy as np

from llorch.worker.backend.errors import InferenceError, OutOfMemoryError
from llorch.worker.backend.protocol import RankInput
from llorch.worker.backend.segments import SegmentEmbeddings

POOLINGS = {
    "mean": ll.LLAMA_POOLING_TYPE_MEAN,
    "cls": ll.LLAMA_POOLING_TYPE_CLS,
    "last": ll.LLAMA_POOLING_TYPE_LAST,
    "rank": ll.LLAMA_POOLING_TYPE_RANK,
}
_NAMES = {value: name for name, value in POOLINGS.items()}
# The embedding context holds at least this many tokens (each input still within the model's
# own bound), so that many short inputs share a decode; the compute buffer grows with it.
MIN_BATCH_TOKENS = 2048
# Inputs are packed into decodes of up to this many tokens (an input longer goes alone). The
# packed inputs attend over the whole decode's tokens (masked): attention grows with the
# square of what a decode packs. In-process, 2 cores: a MiniLM-L6 cross-encoder, 32 pairs of
# ~37 tokens, 88.8-96.1 pairs/s in one decode of ~1,200 tokens, 102-108 at 160-1,024 tokens a
# decode (every round the same way); all-MiniLM-L6-v2, 32 texts of ~25 tokens, alike from 128
# to 2,048 (149-163 texts/s, rounds spread 30 %). A decoder's: in-process on a 25M-parameter
# Qwen3 reranker, 32 pairs of ~305 tokens, 2 loaded cores, 1,024 tokens a decode gave 7.4-7.8
# pairs/s, 2,048 5.7-7.0, 4,096 4.2-5.6.
ENCODER_PACK_TOKENS = 512
DECODER_PACK_TOKENS = 1024
# A shared prefix shorter than this is read with each input (not worth a decode of its own).
MIN_SHARED_PREFIX = 8


SOFTMAX = ("qwen3", "qwen3vl")  # the arches whose rank head llama.cpp ends with a softmax


def _meta(model: ll.llama_model_p, key: str) -> str:
    buf = ctypes.create_string_buffer(64)
    n = ll.llama_model_meta_val_str(model, key.encode(), buf, len(buf))
    return buf.value.decode() if n >= 0 else ""


def _arch(model: ll.llama_model_p) -> str:
    return _meta(model, gguf.Keys.General.ARCHITECTURE)


def _logit(probabilities: np.ndarray) -> float:
    """The score a softmax over ("yes", "no") came from: logit(yes) - logit(no), the
    log-odds, whose sigmoid is p(yes) again (a cross-encoder's scores are logits too). From
    both outputs, not from p(yes) alone: p(no) keeps its precision where p(yes) rounds to 1."""
    tiny = float(np.finfo(np.float32).tiny)
    yes, no = (max(float(p), tiny) for p in probabilities[:2])
    return math.log(yes) - math.log(no)


class LlamaEmbedder:
    """Owns one embedding context over a loaded model. Not thread-safe: one thread owns it."""

    def __init__(
        self,
        model: ll.llama_model_p,
        *,
        n_ctx: int,
        threads: int,
        pooling: str | None,
        max_sequences: int = 64,
        segments: SegmentEmbeddings | None = None,
    ) -> None:
        params = ll.llama_context_default_params()
        params.embeddings = True
        n_ctx = max(n_ctx, MIN_BATCH_TOKENS)
        params.n_ctx = n_ctx
        params.n_batch = params.n_ubatch = n_ctx  # an encoder's input fits one micro-batch
        # llama.cpp reserves an output per sequence within the batch's outputs and aborts
        # the process past them (GGML_ASSERT n_outputs_max <= cparams.n_outputs_max)
        max_sequences = min(max_sequences, n_ctx)
        params.n_seq_max = max_sequences
        params.kv_unified = True  # sequences of a batch share the cells; each batch starts clean
        params.n_threads = params.n_threads_batch = threads
        params.pooling_type = (
            POOLINGS[pooling] if pooling is not None else ll.LLAMA_POOLING_TYPE_UNSPECIFIED
        )
        ctx = ll.llama_init_from_model(model, params)
        if not ctx:
            raise OutOfMemoryError(f"llama.cpp could not create an embedding context of {n_ctx}")
        if ll.llama_pooling_type(ctx) == ll.LLAMA_POOLING_TYPE_NONE:
            # A causal model without a pooling of its own: pool by the last token.
            ll.llama_free(ctx)
            params.pooling_type = ll.LLAMA_POOLING_TYPE_LAST
            ctx = ll.llama_init_from_model(model, params)
            if not ctx:
                raise OutOfMemoryError("llama.cpp could not create an embedding context")
        self._ctx = ctx
        # Inputs are packed up to this many tokens a decode. llama.cpp may round the context
        # up (to 256 cells) but an encoder's batch must fit one micro-batch, or llama.cpp
        # aborts the process (GGML_ASSERT "encoder requires n_ubatch >= n_tokens").
        self.n_ctx = min(ll.llama_n_ctx(ctx), ll.llama_n_ubatch(ctx))
        self.n_embd = ll.llama_model_n_embd(model)
        self.max_sequences = max_sequences
        self.pooling = _NAMES.get(ll.llama_pooling_type(ctx), "none")
        self._batch = ll.llama_batch_init(self.n_ctx, 0, 1)
        self._segments = segments
        self._embd_batch: Any = None  # input embeddings, made on first use
        # a rank-pooled sequence gives its classifier's outputs (one logit for a reranker)
        self._width = ll.llama_model_n_cls_out(model) if self.pooling == "rank" else self.n_embd
        # llama.cpp ends a qwen3 rank head with a softmax ("softmax for qwen3 reranker",
        # src/llama-graph.cpp): Qwen3-Reranker's outputs are p(yes) and p(no)
        self._softmax = self.pooling == "rank" and self._width == 2 and _arch(model) in SOFTMAX
        encoder = _meta(model, f"{_arch(model)}.attention.causal") == "false"
        self._pack = min(self.n_ctx, ENCODER_PACK_TOKENS if encoder else DECODER_PACK_TOKENS)
        # A prefix's cells serve every sequence only where attention is causal, the pooled
        # token is the last (mean or first-token pooling would miss the prefix's tokens),
        # every layer keeps all its cells (no sliding window) and none is recurrent (whose
        # state is copied, not shared).
        self._shares_prefix = (
            not encoder
            and self.pooling in ("last", "rank")
            and ll.llama_model_n_swa(model) == 0
            and not ll.llama_model_is_recurrent(model)
            and not ll.llama_model_is_hybrid(model)
        )
        self._held: tuple[int, ...] = ()  # the prefix in sequence 0's cells

    def _groups(self, lengths: Sequence[int], budget: int) -> Iterator[range]:
        """Consecutive inputs packed into decodes of at most `budget` tokens (or one input
        alone) and max_sequences sequences."""
        start, used = 0, 0
        for i, n in enumerate(lengths):
            if i > start and (used + n > budget or i - start == self.max_sequences):
                yield range(start, i)
                start, used = i, 0
            used += n
        if start < len(lengths):
            yield range(start, len(lengths))

    def embed(self, inputs: Sequence[Sequence[int]]) -> list[np.ndarray]:
        """One pooled vector per input (not normalised), in order. Each input fits n_ctx."""
        return self._pooled(inputs)

    def rank(self, inputs: Sequence[RankInput]) -> list[float]:
        """The relevance score (rank pooling's first output) of each pair, in order."""
        if self.pooling != "rank":
            raise InferenceError(f"the embedding context pools by {self.pooling}, not rank")
        if self._segments is not None and any(p.n_first < len(p.tokens) for p in inputs):
            rows: list[np.ndarray] = []
            for group in self._groups([len(p.tokens) for p in inputs], self._pack):
                rows += self._decode_segments([inputs[i] for i in group])
        else:
            rows = self._pooled([p.tokens for p in inputs])
        return [_logit(row) if self._softmax else float(row[0]) for row in rows]

    def _shared(self, inputs: Sequence[Sequence[int]]) -> int:
        """How many leading tokens every input has in common (each keeps one of its own, the
        one pooled), or 0 where sharing them does not apply or is not worth it."""
        if not self._shares_prefix or len(inputs) < 2:
            return 0
        first, n = inputs[0], min(len(tokens) for tokens in inputs) - 1
        for tokens in inputs[1:]:
            n = next((i for i in range(n) if tokens[i] != first[i]), n)
        return n if n >= MIN_SHARED_PREFIX else 0

    def _pooled(self, inputs: Sequence[Sequence[int]]) -> list[np.ndarray]:
        shared = self._shared(inputs)
        lengths = [len(tokens) - shared for tokens in inputs]
        vectors: list[np.ndarray] = []
        for group in self._groups(lengths, self._pack - shared):
            vectors += self._decode([inputs[i] for i in group], shared)
        return vectors

    def _hold(self, prefix: Sequence[int]) -> None:
        """Sequence 0's cells hold `prefix` and nothing else is in the cache (decoded unless
        the last call left it there)."""
        if tuple(prefix) == self._held:  # every sequence's own tokens go
            ll.llama_memory_seq_rm(ll.llama_get_memory(self._ctx), -1, len(prefix), -1)
            return
        self._clear()
        self._run(self._token_batch([prefix]), 0)
        self._held = tuple(prefix)

    def _clear(self) -> None:
        """Nothing in the cache, no prefix held."""
        ll.llama_memory_clear(ll.llama_get_memory(self._ctx), True)
        self._held = ()

    def _place(self, batch: Any, group: Sequence[Sequence[int]], start: int = 0) -> int:
        """Sequence i's tokens from position `start` on (its tokens before it are in the
        cache)."""
        n = 0
        for seq_id, tokens in enumerate(group):
            for pos in range(start, len(tokens)):
                batch.pos[n], batch.n_seq_id[n] = pos, 1
                batch.seq_id[n][0] = seq_id
                batch.logits[n] = True  # with embeddings on: this token's state is pooled
                n += 1
        batch.n_tokens = n
        return n

    def _token_batch(self, group: Sequence[Sequence[int]], start: int = 0) -> Any:
        """The token batch of each input's tokens from position `start` on."""
        batch = self._batch
        self._place(batch, group, start)
        n = 0
        for tokens in group:
            for token in tokens[start:]:
                batch.token[n] = token
                n += 1
        return batch

    def _decode(self, group: Sequence[Sequence[int]], shared: int = 0) -> list[np.ndarray]:
        if shared:
            self._hold(group[0][:shared])
            memory = ll.llama_get_memory(self._ctx)
            for seq_id in range(1, len(group)):
                ll.llama_memory_seq_cp(memory, 0, seq_id, -1, -1)
        else:
            self._clear()
        return self._run(self._token_batch(group, shared), len(group))

    def _decode_segments(self, group: Sequence[RankInput]) -> list[np.ndarray]:
        assert self._segments is not None
        if self._embd_batch is None:
            self._embd_batch = ll.llama_batch_init(self.n_ctx, self.n_embd, 1)
        batch = self._embd_batch
        n = self._place(batch, [pair.tokens for pair in group])
        tokens = np.fromiter((t for p in group for t in p.tokens), dtype=np.int64, count=n)
        types = np.concatenate(
            [np.arange(len(p.tokens)) >= p.n_first for p in group], dtype=np.int64
        )
        rows = self._segments.rows(tokens, types)
        ctypes.memmove(batch.embd, rows.ctypes.data, rows.nbytes)
        self._clear()
        return self._run(batch, len(group))

    def _run(self, batch: Any, n_seqs: int) -> list[np.ndarray]:
        """Decode `batch` over what the cache holds; the pooled rows of sequences 0..n_seqs-1."""
        rc = ll.llama_decode(self._ctx, batch)
        if rc != 0:
            self._clear()
            raise InferenceError(f"llama_decode of {n_seqs} inputs failed with status {rc}")
        out = []
        for seq_id in range(n_seqs):
            pointer = ll.llama_get_embeddings_seq(self._ctx, seq_id)
            if not pointer:
                raise InferenceError("llama.cpp returned no pooled embedding")
            out.append(np.ctypeslib.as_array(pointer, shape=(self._width,)).copy())
        return out

    def close(self) -> None:
        if self._batch is not None:
            ll.llama_batch_free(self._batch)
            self._batch = None
        if self._embd_batch is not None:
            ll.llama_batch_free(self._embd_batch)
            self._embd_batch = None
        if self._ctx is not None:
            ll.llama_free(self._ctx)
            self._ctx = None
