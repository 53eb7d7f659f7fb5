"""Drafters for speculative decoding: where the tokens a sequence is likely to continue with
come from, before the model verifies them in the batch (worker/backend/speculative.py).

Two drafters, one interface: `propose` takes (sequence id, the sequence's tokens so far, at
most how many) for every sequence that speculates this step and returns a draft for each
(possibly empty); `reset` says that a sequence id starts a new request.

- Prompt lookup (n-grams), as llama.cpp's ngram-simple and vLLM's `[ngram]` do: the last few
  tokens are looked up earlier in the sequence (prompt and output), and what followed them
  there is the draft. It costs a dictionary look-up per step, and pays off where the output
  repeats its input: rewriting, quoting, extracting.
- A draft model over the same vocabulary, in a llama.cpp context of its own on the model
  thread, drafting greedily; every speculating sequence drafts in the same decodes.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import llama_cpp as ll
import numpy as np

from llorch.worker.backend.errors import ModelLoadError
from llorch.worker.backend.protocol import SpecOptions
from llorch.worker.backend.slots import common_prefix

log = logging.getLogger("llorch.backend")

# (sequence id, its tokens so far, the longest draft worth verifying)
Want = tuple[int, Sequence[int], int]


class Drafter(Protocol):
    # whether its drafts' length should follow how the previous ones fared (speculative.py)
    adaptive: bool

    def reset(self, seq_id: int) -> None: ...

    def propose(self, wants: Sequence[Want]) -> list[list[int]]: ...

    def close(self) -> None: ...


class NgramIndex:
    """Where each n-gram of a token sequence last occurred with a token after it.

    For every n-gram that is not the sequence's own suffix, the index of the token that
    followed its latest occurrence: the suffix is registered only once a token follows it,
    so a look-up of the current suffix finds an earlier occurrence, never itself."""

    def __init__(self, ngram_max: int, ngram_min: int, draft_min: int = 1) -> None:
        self.tokens: list[int] = []
        self._sizes = range(ngram_max, ngram_min - 1, -1)  # longest match first
        self._next: dict[tuple[int, ...], int] = {}
        self._draft_min = draft_min

    def extend(self, tokens: Sequence[int]) -> None:
        for token in tokens:
            i = len(self.tokens)
            for n in self._sizes:
                if i >= n:
                    self._next[tuple(self.tokens[i - n : i])] = i
            self.tokens.append(token)

    def draft(self, k: int) -> list[int]:
        end = len(self.tokens)
        for n in self._sizes:
            if end >= n:
                at = self._next.get(tuple(self.tokens[end - n :]))
                if at is not None:
                    draft = self.tokens[at : at + k]
                    # a match too recent to have draft_min tokens after it: no draft
                    return draft if len(draft) >= min(self._draft_min, k) else []
        return []


class NgramDrafter:
    """Prompt lookup for every slot: one NgramIndex per sequence, grown as it goes. Drafts are
    as long as what followed the match (up to what the caller allows), not adapted."""

    adaptive = False

    def __init__(self, ngram_max: int = 12, ngram_min: int = 12, draft_min: int = 12) -> None:
        if not 1 <= ngram_min <= ngram_max:
            raise ValueError(f"n-gram sizes {ngram_min}..{ngram_max}: need 1 <= min <= max")
        self._params = (ngram_max, ngram_min, draft_min)
        self._indexes: dict[int, NgramIndex] = {}

    def reset(self, seq_id: int) -> None:
        self._indexes.pop(seq_id, None)

    def propose(self, wants: Sequence[Want]) -> list[list[int]]:
        drafts = []
        for seq_id, tokens, k in wants:
            index = self._indexes.get(seq_id)
            if index is None:
                index = self._indexes[seq_id] = NgramIndex(*self._params)
            # A sequence only ever grows by accepted tokens: what is new is its tail.
            index.extend(tokens[len(index.tokens) :])
            drafts.append(index.draft(k))
        return drafts

    def close(self) -> None:
        self._indexes.clear()


def check_same_vocabulary(target: ll.llama_vocab_p, draft: ll.llama_vocab_p, path: Path) -> None:
    """A draft is verified token id by token id: the draft model must number every token as
    the model does. Raises ModelLoadError naming the first difference."""

    def refuse(what: str) -> ModelLoadError:
        return ModelLoadError(
            f"the draft model {path} does not share the model's vocabulary ({what}); "
            "--draft-model needs a model with the same tokenizer"
        )

    n_target, n_draft = ll.llama_vocab_n_tokens(target), ll.llama_vocab_n_tokens(draft)
    if n_target != n_draft:
        raise refuse(f"{n_draft} tokens, the model has {n_target}")
    if ll.llama_vocab_type(target) != ll.llama_vocab_type(draft):
        raise refuse("another tokenizer type")
    for name, get in (("BOS", ll.llama_vocab_bos), ("EOS", ll.llama_vocab_eos)):
        if get(target) != get(draft):
            raise refuse(f"{name} is token {get(draft)}, the model's is {get(target)}")
    for token in range(n_target):
        a, b = ll.llama_vocab_get_text(target, token), ll.llama_vocab_get_text(draft, token)
        if a != b:
            raise refuse(f"token {token} is {b!r}, the model's is {a!r}")


class ModelDrafter:
    """Greedy drafts from a smaller model with the same vocabulary. Its context mirrors the
    model's slots (one KV stream per sequence id); each slot's cache keeps the tokens it read,
    so a sequence's next draft reads only what was accepted since."""

    adaptive = True  # each draft token costs a decode of the draft model

    def __init__(
        self,
        path: Path,
        target_vocab: ll.llama_vocab_p,
        n_slots: int,
        ctx_per_slot: int,
        threads: int,
        n_gpu_layers: int,
        n_batch: int = 512,
    ) -> None:
        if not path.is_file():
            raise ModelLoadError(f"draft model file not found: {path}")
        params = ll.llama_model_default_params()
        params.n_gpu_layers = n_gpu_layers
        self._model = ll.llama_model_load_from_file(str(path).encode(), params)
        if not self._model:
            raise ModelLoadError(f"llama.cpp could not load the draft model {path}")
        self._ctx: ll.llama_context_p | None = None
        self._batch: Any = None  # ll.llama_batch; its ctypes fields are not typed
        try:
            vocab = ll.llama_model_get_vocab(self._model)
            check_same_vocabulary(target_vocab, vocab, path)
            self._n_vocab = ll.llama_vocab_n_tokens(vocab)
            ctx_params = ll.llama_context_default_params()
            ctx_params.n_ctx = ctx_per_slot * n_slots
            ctx_params.n_batch = ctx_params.n_ubatch = n_batch
            ctx_params.n_seq_max = n_slots
            ctx_params.kv_unified = False  # as the model's context: a stream per slot
            ctx_params.swa_full = True  # dropping a cached tail needs the whole window
            ctx_params.n_threads = ctx_params.n_threads_batch = threads
            self._ctx = ll.llama_init_from_model(self._model, ctx_params)
            if not self._ctx:
                raise ModelLoadError(f"llama.cpp could not create a context for {path}")
        except BaseException:
            self.close()
            raise
        self._n_batch = n_batch
        self._batch = ll.llama_batch_init(n_batch, 0, 1)
        self._cached: list[list[int]] = [[] for _ in range(n_slots)]

    def reset(self, seq_id: int) -> None:
        pass  # the cache is matched by prefix: a new request reuses what it shares

    def propose(self, wants: Sequence[Want]) -> list[list[int]]:
        assert self._ctx is not None
        memory = ll.llama_get_memory(self._ctx)
        pending: list[list[int]] = []
        for seq_id, tokens, _ in wants:
            cached = self._cached[seq_id]
            # Leave one token to decode: its logits give the first draft.
            keep = min(common_prefix(cached, tokens), len(tokens) - 1)
            if keep < len(cached) and not ll.llama_memory_seq_rm(memory, seq_id, keep, -1):
                ll.llama_memory_seq_rm(memory, seq_id, -1, -1)
                keep = 0
            del cached[keep:]
            pending.append(list(tokens[keep:]))
        drafts: list[list[int]] = [[] for _ in wants]
        try:
            self._read(wants, pending, drafts)
            while True:
                going = [w for w, (_, _, k) in enumerate(wants) if 0 < len(drafts[w]) < k]
                if not going:
                    break
                self._decode(wants, [(w, [drafts[w][-1]]) for w in going], drafts)
        except _DraftFailed:
            # The model is never held up by its drafter: no drafts this step, and the
            # sequences start their draft caches afresh next time.
            for seq_id, _, _ in wants:
                ll.llama_memory_seq_rm(memory, seq_id, -1, -1)
                self._cached[seq_id].clear()
            return [[] for _ in wants]
        return [d[:k] for d, (_, _, k) in zip(drafts, wants, strict=True)]

    def _read(
        self, wants: Sequence[Want], pending: list[list[int]], drafts: list[list[int]]
    ) -> None:
        """Decode what each sequence's draft cache lacks, a batch at a time; the last token
        of each gives its first draft token."""
        queue = [(w, tokens) for w, tokens in enumerate(pending)]
        while queue:
            room, chunk = self._n_batch, []
            while queue and room > 0:
                w, tokens = queue[0]
                take = tokens[:room]
                chunk.append((w, take))
                room -= len(take)
                if len(take) == len(tokens):
                    queue.pop(0)
                else:
                    queue[0] = (w, tokens[len(take) :])
            last = {w for w, _ in chunk if all(w != q for q, _ in queue)}
            self._decode(wants, chunk, drafts, last)

    def _decode(
        self,
        wants: Sequence[Want],
        chunk: list[tuple[int, list[int]]],
        drafts: list[list[int]],
        last: set[int] | None = None,
    ) -> None:
        """One decode of `chunk` (want index, tokens); for each want in `last` (default: all)
        the argmax after its last token is appended to its draft."""
        assert self._ctx is not None and self._batch is not None
        batch, n, outputs = self._batch, 0, []
        for w, tokens in chunk:
            seq_id = wants[w][0]
            cached = self._cached[seq_id]
            for j, token in enumerate(tokens):
                logits = j == len(tokens) - 1 and (last is None or w in last)
                batch.token[n] = token
                batch.pos[n] = len(cached)
                batch.n_seq_id[n] = 1
                batch.seq_id[n][0] = seq_id
                batch.logits[n] = logits
                if logits:
                    outputs.append((w, n))
                cached.append(token)
                n += 1
        batch.n_tokens = n
        if ll.llama_decode(self._ctx, batch) != 0:
            raise _DraftFailed
        for w, index in outputs:
            row = ll.llama_get_logits_ith(self._ctx, index)
            drafts[w].append(int(np.ctypeslib.as_array(row, shape=(self._n_vocab,)).argmax()))

    def close(self) -> None:
        if self._batch is not None:
            ll.llama_batch_free(self._batch)
            self._batch = None
        if self._ctx is not None:
            ll.llama_free(self._ctx)
            self._ctx = None
        if self._model:
            ll.llama_model_free(self._model)
            self._model = None


class _DraftFailed(Exception):
    """The draft model's decode failed (e.g. no room in its KV cache)."""


def model_drafter(
    options: SpecOptions,
    target_vocab: ll.llama_vocab_p,
    n_slots: int,
    ctx_per_slot: int,
    threads: int,
    n_gpu_layers: int | str,
) -> ModelDrafter | None:
    """The draft model of --draft-model, with as many slots as the model and its layers on
    the same devices (n_gpu_layers as the model's, resolved by the time the context is made);
    None without one (the batch decoder then drafts by prompt lookup)."""
    if options.draft_model is None:
        return None
    layers = n_gpu_layers if isinstance(n_gpu_layers, int) else 0
    return ModelDrafter(options.draft_model, target_vocab, n_slots, ctx_per_slot, threads, layers)
