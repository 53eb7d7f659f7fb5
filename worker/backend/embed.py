"""Sentence embeddings in a llama.cpp context of their own (embeddings on), never inside the
generation batch: many inputs go through one decode, one sequence each, and llama.cpp pools
each sequence (llama_get_embeddings_seq) as the model's GGUF says (mean, CLS, last token).

A generative model has no pooling of its own: it is pooled by its last token (the hidden
state that predicts what follows, as decoder embedding models such as e5-mistral use), or
by the mean when asked. An encoder (BERT: non-causal attention) needs each input whole in one
micro-batch, so the context's batch is its whole context.
"""

from __future__ import annotations

from collections.abc import Sequence

import llama_cpp as ll
import numpy as np

from llorch.worker.backend.errors import InferenceError, OutOfMemoryError

POOLINGS = {
    "mean": ll.LLAMA_POOLING_TYPE_MEAN,
    "cls": ll.LLAMA_POOLING_TYPE_CLS,
    "last": ll.LLAMA_POOLING_TYPE_LAST,
}
_NAMES = {value: name for name, value in POOLINGS.items()}


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
    ) -> None:
        params = ll.llama_context_default_params()
        params.embeddings = True
        params.n_ctx = n_ctx
        params.n_batch = params.n_ubatch = n_ctx  # an encoder's input fits one micro-batch
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

    def embed(self, inputs: Sequence[Sequence[int]]) -> list[np.ndarray]:
        """One pooled vector per input (not normalised), in order. Each input fits n_ctx."""
        vectors: list[np.ndarray] = []
        group: list[Sequence[int]] = []
        used = 0
        for tokens in inputs:
            if group and (used + len(tokens) > self.n_ctx or len(group) == self.max_sequences):
                vectors += self._decode(group)
                group, used = [], 0
            group.append(tokens)
            used += len(tokens)
        if group:
            vectors += self._decode(group)
        return vectors

    def _decode(self, group: Sequence[Sequence[int]]) -> list[np.ndarray]:
        ll.llama_memory_clear(ll.llama_get_memory(self._ctx), True)
        batch = self._batch
        n = 0
        for seq_id, tokens in enumerate(group):
            for pos, token in enumerate(tokens):
                batch.token[n], batch.pos[n], batch.n_seq_id[n] = token, pos, 1
                batch.seq_id[n][0] = seq_id
                batch.logits[n] = True  # with embeddings on: this token's state is pooled
                n += 1
        batch.n_tokens = n
        rc = ll.llama_decode(self._ctx, batch)
        if rc != 0:
            raise InferenceError(f"llama_decode of {len(group)} inputs failed with status {rc}")
        out = []
        for seq_id in range(len(group)):
            pointer = ll.llama_get_embeddings_seq(self._ctx, seq_id)
            if not pointer:
                raise InferenceError("llama.cpp returned no pooled embedding")
            out.append(np.ctypeslib.as_array(pointer, shape=(self.n_embd,)).copy())
        return out

    def close(self) -> None:
        if self._batch is not None:
            ll.llama_batch_free(self._batch)
            self._batch = None
        if self._ctx is not None:
            ll.llama_free(self._ctx)
            self._ctx = None
