"""What a quantization costs: a quantized GGUF measured against the high-precision GGUF it
was made from, on an evaluation text, as `llama-perplexity --kl-divergence` measures it.

The method follows tools/perplexity/perplexity.cpp (kl_divergence) in the vendored llama.cpp:
the text is tokenized with BOS added, cut into chunks of `chunk` tokens (the first token of
each replaced by BOS when the vocabulary adds one), each evaluated from an empty cache; only
the second half of each chunk is scored (position i predicts token i+1 for i in
[chunk/2, chunk-1)), so every scored token has at least half a chunk of context. Per scored
token: the KL divergence of the candidate's next-token distribution from the reference's
(terms where the reference's log-probability is at most -16 left out, as there), whether both
put the same token first, and each model's negative log-likelihood of the actual next token.

Both models are evaluated chunk by chunk side by side. Measuring several candidates against
one reference (a batch's quantized types), a ReferenceCache keeps the reference's
log-probabilities of each chunk up to a memory budget, so the reference is evaluated once, as
llama-perplexity keeps them in its --kl-divergence-base file.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from llorch import keys
from llorch.convert.errors import ConversionError, QualityError

DEFAULT_CHUNK = 512
MIN_LOG_PROB = -16.0  # perplexity.cpp's log_softmax skips smaller reference terms


@dataclass(frozen=True)
class Quality:
    """`reference`: what the candidate was measured against (its type); `tokens`: scored
    tokens; `kld_mean`, `kld_p99`: mean and 99th percentile (linear interpolation) of the
    per-token KL divergence; `top1`: fraction of tokens where both models' most likely next
    token is the same; `ppl`, `ppl_reference`: perplexity of each on the scored tokens."""

    reference: str
    tokens: int
    kld_mean: float
    kld_p99: float
    top1: float
    ppl: float
    ppl_reference: float

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def gguf_metadata(self) -> dict[str, str | int | float]:
        """The GGUF keys (llorch.keys.QUALITY_PREFIX + field) `llorch detect` shows."""
        return {keys.QUALITY_PREFIX + k: v for k, v in asdict(self).items()}


class ReferenceCache:
    """The reference's log-probabilities per chunk, kept between measurements against it;
    at most `budget_bytes` (past it, chunks are evaluated again)."""

    def __init__(self, budget_bytes: int = 1 << 30) -> None:
        self.budget_bytes = budget_bytes
        self.used_bytes = 0
        self._chunks: dict[tuple[str, str, int, int], np.ndarray] = {}

    def get(self, key: tuple[str, str, int, int]) -> np.ndarray | None:
        return self._chunks.get(key)

    def put(self, key: tuple[str, str, int, int], log_probs: np.ndarray) -> None:
        if key not in self._chunks and self.used_bytes + log_probs.nbytes <= self.budget_bytes:
            self._chunks[key] = log_probs
            self.used_bytes += log_probs.nbytes


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    x = logits.astype(np.float64)
    x -= x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


class _Evaluator:
    """One model with a context of one chunk, giving log-probabilities of a chunk's scored
    positions."""

    def __init__(self, stack: Any, path: Path, chunk: int, n_threads: int) -> None:
        from llorch.convert import llamacpp

        self.lib = lib = llamacpp._lib()
        self.path = path
        self.model = stack.enter_context(llamacpp.load_model(path))
        self.vocab = llamacpp.vocab(self.model)
        cparams = lib.llama_context_default_params()
        cparams.n_ctx = cparams.n_batch = chunk
        cparams.n_ubatch = min(chunk, 512)
        cparams.n_threads = cparams.n_threads_batch = n_threads
        self.ctx = lib.llama_init_from_model(self.model, cparams)
        if not self.ctx:
            raise ConversionError(f"{path}: llama.cpp could not create a context")
        stack.callback(lib.llama_free, self.ctx)
        self.batch = lib.llama_batch_init(chunk, 0, 1)
        stack.callback(lib.llama_batch_free, self.batch)

    def log_probs(self, tokens: list[int], first: int) -> np.ndarray:
        lib, batch = self.lib, self.batch
        lib.llama_memory_clear(lib.llama_get_memory(self.ctx), True)
        for i, tok in enumerate(tokens):
            batch.token[i], batch.pos[i] = tok, i
            batch.n_seq_id[i], batch.seq_id[i][0] = 1, 0
            batch.logits[i] = 1 if i >= first else 0
        batch.n_tokens = len(tokens)
        rc = lib.llama_decode(self.ctx, batch)
        if rc != 0:
            raise ConversionError(f"{self.path}: llama_decode failed with {rc}")
        n_vocab = self.vocab.n_tokens
        n_out = len(tokens) - first
        ptr = lib.llama_get_logits(self.ctx)
        logits = np.ctypeslib.as_array(ptr, shape=(n_out * n_vocab,)).reshape(n_out, n_vocab)
        return _log_softmax(logits[:-1])  # the last position predicts past the chunk


def measure(
    reference: str | os.PathLike[str],
    candidate: str | os.PathLike[str],
    text: str | os.PathLike[str],
    *,
    reference_name: str | None = None,
    chunk: int = DEFAULT_CHUNK,
    chunks: int | None = None,
    n_threads: int = 0,
    on_chunk: Callable[[int, int], None] | None = None,
    cache: ReferenceCache | None = None,
) -> Quality:
    """`candidate` against `reference` on the text file `text` (see the module's docstring)."""
    import contextlib

    text = Path(text)
    try:
        content = text.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise QualityError(f"{text}: cannot read the evaluation text ({exc})") from exc
    if chunk < 16:
        raise QualityError(f"chunk {chunk}: must be at least 16 tokens")
    threads = n_threads or (os.cpu_count() or 1)
    with contextlib.ExitStack() as stack:
        ref = _Evaluator(stack, Path(reference), chunk, threads)
        cand = _Evaluator(stack, Path(candidate), chunk, threads)
        if ref.vocab.n_tokens != cand.vocab.n_tokens:
            raise QualityError(
                f"{candidate}: {cand.vocab.n_tokens} tokens in its vocabulary, the reference "
                f"{reference} has {ref.vocab.n_tokens}"
            )
        tokens = ref.vocab.tokenize(content, add_special=True, parse_special=False)
        if len(tokens) < 2 * chunk:
            raise QualityError(
                f"{text}: {len(tokens)} tokens; at least {2 * chunk} are needed for chunks of "
                f"{chunk} (give a longer text or a smaller chunk)"
            )
        lib = ref.lib
        bos = ref.vocab.bos() if lib.llama_vocab_get_add_bos(ref.vocab.pointer) else None
        n_chunks = len(tokens) // chunk if chunks is None else min(chunks, len(tokens) // chunk)
        first = chunk // 2
        kld: list[np.ndarray] = []
        same = 0
        nll = nll_ref = 0.0
        for c in range(n_chunks):
            part = tokens[c * chunk : (c + 1) * chunk]
            if bos is not None:
                part[0] = bos
            key = (str(reference), str(text), chunk, c)
            lp_ref = cache.get(key) if cache is not None else None
            if lp_ref is None:
                lp_ref = ref.log_probs(part, first)
                if cache is not None:
                    cache.put(key, lp_ref)
            lp = cand.log_probs(part, first)
            target = np.asarray(tokens[c * chunk + first + 1 : (c + 1) * chunk])
            rows = np.arange(len(target))
            nll -= float(lp[rows, target].sum())
            nll_ref -= float(lp_ref[rows, target].sum())
            kept = lp_ref > MIN_LOG_PROB
            terms = np.where(kept, np.exp(lp_ref) * (lp_ref - lp), 0.0)
            kld.append(terms.sum(axis=1))
            same += int((lp_ref.argmax(axis=1) == lp.argmax(axis=1)).sum())
            if on_chunk is not None:
                on_chunk(c + 1, n_chunks)
    values = np.concatenate(kld)
    n = int(values.size)
    return Quality(
        reference=reference_name or str(reference),
        tokens=n,
        kld_mean=float(values.mean()),
        kld_p99=float(np.percentile(values, 99.0)),
        top1=same / n,
        ppl=float(np.exp(nll / n)),
        ppl_reference=float(np.exp(nll_ref / n)),
    )
