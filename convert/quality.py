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

import contextlib
import itertools
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from llorch import keys
from llorch.convert import llamacpp
from llorch.convert.errors import ConversionError, QualityError
from llorch.cpus import default_threads
from llorch.hugepages import without_huge_page_advice

DEFAULT_CHUNK = 512
MIN_LOG_PROB = -16.0  # perplexity.cpp's log_softmax skips smaller reference terms
_T = TypeVar("_T")


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

    @classmethod
    def placeholder(cls, reference: str) -> Quality:
        """Zeros of the right types: a file made with these keys gets the measured values in
        place (convert.llamacpp.patch_metadata) instead of being copied to add them."""
        return cls(reference, 0, 0.0, 0.0, 0.0, 0.0, 0.0)


@dataclass(frozen=True)
class _ReferenceChunk:
    """The reference's scored rows of one chunk: log-probabilities (float32; the probabilities
    are taken from them again for each candidate, which keeps twice the chunks in a cache's
    budget), its most likely tokens and the log-probability of each actual next token."""

    log_probs: np.ndarray
    top: np.ndarray
    target_log_probs: np.ndarray
    tokens: tuple[int, ...]  # the chunk as the reference read it

    @property
    def nbytes(self) -> int:
        return self.log_probs.nbytes


class ReferenceCache:
    """The reference's rows per chunk, kept between measurements against it; at most
    `budget_bytes` (past it, chunks are evaluated again)."""

    def __init__(self, budget_bytes: int = 1 << 30) -> None:
        self.budget_bytes = budget_bytes
        self.used_bytes = 0
        self._chunks: dict[tuple[str, str, int, int], _ReferenceChunk] = {}

    def get(self, key: tuple[str, str, int, int]) -> _ReferenceChunk | None:
        return self._chunks.get(key)

    def put(self, key: tuple[str, str, int, int], chunk: _ReferenceChunk) -> None:
        if key not in self._chunks and self.used_bytes + chunk.nbytes <= self.budget_bytes:
            self._chunks[key] = chunk
            self.used_bytes += chunk.nbytes


class _Scratch:
    """Work arrays of a chunk's shape, reused for every chunk: a fresh array of this size
    each time costs a page fault per 4 KiB once other arrays are kept (the reference cache
    keeps glibc from reusing freed blocks): measured over 76 chunks, 117k faults and 7.0 s of
    numpy, against 1.4 s with these."""

    def __init__(self, rows: int, n_vocab: int) -> None:
        self.log_probs = np.empty((rows, n_vocab), np.float32)
        self.values = np.empty((rows, n_vocab), np.float32)
        self.mask = np.empty((rows, n_vocab), np.bool_)

    def rows(self, block: slice) -> _Scratch:
        """The same arrays' rows `block` (views)."""
        part = object.__new__(_Scratch)
        part.log_probs, part.values = self.log_probs[block], self.values[block]
        part.mask = self.mask[block]
        return part


class _Blocks:
    """A chunk's scored rows cut into one block of rows per thread, each block's numpy work
    run on its own thread (numpy's element-wise loops release the GIL but use one core each,
    and llama.cpp's threads are idle between two decodes). Every number is its own row's
    arithmetic, so the results are those of one block of all the rows. Measured on
    bench/publish.py's model (63 rows of 32,000 a chunk), a candidate's chunk 16-17 ms of
    numpy on one core, 9 ms on two."""

    def __init__(self, stack: contextlib.ExitStack, rows: int, n_threads: int) -> None:
        n = max(1, min(n_threads, rows))
        edges = [rows * i // n for i in range(n + 1)]
        self.blocks = [slice(a, b) for a, b in itertools.pairwise(edges)]
        self.pool = None
        if n > 1:
            self.pool = stack.enter_context(ThreadPoolExecutor(n - 1, "llorch-quality"))

    def map(self, fn: Callable[[slice], _T]) -> list[_T]:
        """`fn` of every block, in block order (the first on the calling thread)."""
        if self.pool is None:
            return [fn(self.blocks[0])]
        rest = [self.pool.submit(fn, b) for b in self.blocks[1:]]
        return [fn(self.blocks[0]), *(f.result() for f in rest)]


def _log_softmax(
    logits: np.ndarray, values: np.ndarray, out: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Log-probabilities (float32; into `out`, or a new array) of each row of `logits` and
    its most likely tokens; `values` is scratch. Float32 throughout but for the normaliser,
    summed in float64 after subtracting each row's maximum, so every log-probability is exact
    to float32's rounding of its own size: llama-perplexity's own arithmetic is float (its
    base file keeps the reference's log-probabilities in 16 bits). Half the passes over the
    vocabulary of a float64 version, on half the bytes: the numpy side was ~3 s of each
    measured type."""
    top = logits.argmax(axis=1)
    rows = np.arange(len(logits))
    log_probs = np.subtract(logits, logits[rows, top][:, None], out=out)
    np.exp(log_probs, out=values)
    log_probs -= np.log(values.sum(axis=1, dtype=np.float64)).astype(np.float32)[:, None]
    return log_probs, top


class _Evaluator:
    """One model with a context of one chunk, giving the logits of a chunk's scored
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

    def logits(self, tokens: list[int], first: int) -> np.ndarray:
        """A view of llama.cpp's logits for positions first .. len - 2 (the last position
        predicts past the chunk: not asked for), valid until the next call."""
        lib, batch = self.lib, self.batch
        lib.llama_memory_clear(lib.llama_get_memory(self.ctx), True)
        for i, tok in enumerate(tokens):
            batch.token[i], batch.pos[i] = tok, i
            batch.n_seq_id[i], batch.seq_id[i][0] = 1, 0
            batch.logits[i] = 1 if first <= i < len(tokens) - 1 else 0
        batch.n_tokens = len(tokens)
        rc = lib.llama_decode(self.ctx, batch)
        if rc != 0:
            raise ConversionError(f"{self.path}: llama_decode failed with {rc}")
        n_vocab = self.vocab.n_tokens
        n_out = len(tokens) - 1 - first
        ptr = lib.llama_get_logits(self.ctx)
        return np.ctypeslib.as_array(ptr, shape=(n_out * n_vocab,)).reshape(n_out, n_vocab)

    def reference(
        self, tokens: list[int], first: int, target: np.ndarray, scratch: _Scratch, blocks: _Blocks
    ) -> _ReferenceChunk:
        logits = self.logits(tokens, first)
        log_probs = np.empty_like(logits)

        def block(b: slice) -> np.ndarray:
            return _log_softmax(logits[b], scratch.rows(b).values, out=log_probs[b])[1]

        top = np.concatenate(blocks.map(block))
        rows = np.arange(len(target))
        return _ReferenceChunk(log_probs, top, log_probs[rows, target].copy(), tuple(tokens))


def _against(
    logits: np.ndarray, ref_log_probs: np.ndarray, target: np.ndarray, scratch: _Scratch
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per scored row of a candidate's logits: the KL divergence from the reference (the sum
    of p_ref * (log p_ref - log p) over the kept terms), the log-probability of the actual next
    token, and the most likely token. The difference of the two log-probabilities is taken
    before the sum, so agreeing models sum small terms rather than cancel two entropies."""
    log_probs, top = _log_softmax(logits, scratch.values, out=scratch.log_probs)
    target_log_probs = log_probs[np.arange(len(target)), target]
    differences = np.subtract(ref_log_probs, log_probs, out=scratch.values)
    kept = np.exp(ref_log_probs, out=scratch.log_probs)
    np.less_equal(ref_log_probs, MIN_LOG_PROB, out=scratch.mask)
    kept[scratch.mask] = 0.0
    kld = np.einsum("ij,ij->i", kept, differences, dtype=np.float64)
    return kld, target_log_probs, top


def _against_blocks(
    logits: np.ndarray,
    ref: _ReferenceChunk,
    target: np.ndarray,
    scratch: _Scratch,
    blocks: _Blocks,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """_against, a block of rows per thread, the blocks' rows put back in order."""

    def block(b: slice) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return _against(logits[b], ref.log_probs[b], target[b], scratch.rows(b))

    parts = blocks.map(block)
    kld, target_log_probs, top = (np.concatenate(p) for p in zip(*parts, strict=True))
    return kld, target_log_probs, top


def quantize_measured(
    src: Path,
    dst: Path,
    ftype: int,
    options: llamacpp.QuantizeOptions,
    text: str | os.PathLike[str],
    *,
    reference_name: str,
    chunk: int = DEFAULT_CHUNK,
    chunks: int | None = None,
    n_threads: int = 0,
    cache: ReferenceCache | None = None,
    on_measure: Callable[[], None] | None = None,
) -> Quality:
    """`src` quantized into `dst` (llamacpp.quantize) and measured against `src` on `text`
    (`on_measure` called in between), the measurement in `dst`'s metadata: the quantizer
    writes its keys with zeros and they are filled in place once known
    (llamacpp.patch_metadata), so the file is not copied again."""
    zeros = tuple(Quality.placeholder(reference_name).gguf_metadata().items())
    options = replace(options, metadata=zeros)
    llamacpp.quantize(src, dst, ftype, n_threads=n_threads, options=options)
    if on_measure is not None:
        on_measure()
    measured = measure(
        src,
        dst,
        text,
        reference_name=reference_name,
        chunk=chunk,
        chunks=chunks,
        n_threads=n_threads,
        cache=cache,
    )
    llamacpp.patch_metadata(dst, measured.gguf_metadata())
    return measured


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
    text = Path(text)
    try:
        content = text.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise QualityError(f"{text}: cannot read the evaluation text ({exc})") from exc
    if chunk < 16:
        raise QualityError(f"chunk {chunk}: must be at least 16 tokens")
    threads = n_threads or default_threads()
    with contextlib.ExitStack() as stack:
        stack.enter_context(without_huge_page_advice())
        cand = _Evaluator(stack, Path(candidate), chunk, threads)
        evaluators: list[_Evaluator] = []

        def reference_model() -> _Evaluator:
            """Loaded at the first chunk the cache does not have (none, measuring a second
            type against it with every chunk kept)."""
            if not evaluators:
                ref = _Evaluator(stack, Path(reference), chunk, threads)
                if ref.vocab.n_tokens != cand.vocab.n_tokens or tokens != ref.vocab.tokenize(
                    content, add_special=True, parse_special=False
                ):
                    raise QualityError(
                        f"{candidate}: its tokenizer ({cand.vocab.n_tokens} tokens) reads "
                        f"{text} otherwise than the reference {reference}'s "
                        f"({ref.vocab.n_tokens} tokens): they are not the same model's"
                    )
                evaluators.append(ref)
            return evaluators[0]

        tokens = cand.vocab.tokenize(content, add_special=True, parse_special=False)
        if len(tokens) < 2 * chunk:
            raise QualityError(
                f"{text}: {len(tokens)} tokens; at least {2 * chunk} are needed for chunks of "
                f"{chunk} (give a longer text or a smaller chunk)"
            )
        lib = cand.lib
        bos = cand.vocab.bos() if lib.llama_vocab_get_add_bos(cand.vocab.pointer) else None
        n_chunks = len(tokens) // chunk if chunks is None else min(chunks, len(tokens) // chunk)
        first = chunk // 2
        scratch = _Scratch(chunk - first - 1, cand.vocab.n_tokens)
        blocks = _Blocks(stack, chunk - first - 1, threads)
        kld: list[np.ndarray] = []
        same = 0
        nll = nll_ref = 0.0
        for c in range(n_chunks):
            part = tokens[c * chunk : (c + 1) * chunk]
            if bos is not None:
                part[0] = bos
            target = np.asarray(tokens[c * chunk + first + 1 : (c + 1) * chunk])
            key = (str(reference), str(text), chunk, c)
            rc = cache.get(key) if cache is not None else None
            if rc is None:
                rc = reference_model().reference(part, first, target, scratch, blocks)
                if cache is not None:
                    cache.put(key, rc)
            if rc.tokens != tuple(part):
                raise QualityError(
                    f"{candidate}: its tokenizer reads {text} otherwise than the reference "
                    f"{reference}'s (chunk {c + 1}): they are not the same model's"
                )
            logits = cand.logits(part, first)
            terms, target_lp, top = _against_blocks(logits, rc, target, scratch, blocks)
            kld.append(terms)
            nll -= float(target_lp.sum(dtype=np.float64))
            nll_ref -= float(rc.target_log_probs.sum(dtype=np.float64))
            same += int((rc.top == top).sum())
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
