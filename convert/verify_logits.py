"""Optional logits verification: the converted GGUF against the checkpoint run by transformers.

A short prompt, tokenized by the GGUF's own vocabulary (BOS added as the vocabulary asks), goes
through the reference (transformers, the checkpoint's own `architectures` class, float32 on
the CPU) and through llama.cpp (`llamacpp.logits`: F32 KV cache, flash attention off), and
every position's logits are compared: cosine similarity and top-1 agreement.

torch and transformers are not dependencies of llorch; they are imported only here, only when
this check is asked for, and their absence is a clear error rather than a skipped check. The
reference holds the whole model in float32 (4 bytes per parameter) while it runs.

Unquantized outputs (f32, f16, bf16) must reach a minimum cosine similarity at every position
(a conversion bug, e.g. a wrong Q/K layout, falls far below it); quantized outputs are only
measured, since their error depends on the weights and says nothing about the conversion.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from llorch.convert import llamacpp
from llorch.convert.errors import ConversionError, VerificationError

PROMPT = (
    "The capital of France is Paris. def add(a, b): return a + b  # 1, 2, 3, "
    "and the quick brown fox jumps over the lazy dog."
)
MAX_TOKENS = 32
# smallest cosine similarity allowed at any position, by output type; others are measured only
MIN_COSINE: Mapping[str, float] = {"f32": 0.9999, "f16": 0.999, "bf16": 0.999}


class LogitsUnavailableError(ConversionError):
    """Logits verification was asked for but torch or transformers is not installed."""


class LogitsMismatchError(VerificationError):
    """llama.cpp's logits on the converted file are too far from the reference's."""


@dataclass(frozen=True)
class Reference:
    tokens: tuple[int, ...]
    logits: np.ndarray  # (positions, n_vocab), float32
    model_class: str
    library: str  # "transformers 5.x, torch 2.x"


@dataclass(frozen=True)
class LogitsCheck:
    """What `--verify logits` measured for one output file."""

    tokens: int
    cosine_min: float
    cosine_mean: float
    top1_agreement: float  # fraction of positions with the same argmax
    max_abs_diff: float
    reference: str  # model class and library versions
    min_cosine_required: float | None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _import_reference() -> tuple[Any, Any]:
    try:
        import torch
        import transformers
    except ImportError as exc:
        raise LogitsUnavailableError(
            "logits verification needs torch and transformers, which llorch does not install "
            f"(pip install torch transformers): {exc}"
        ) from exc
    return torch, transformers


def prompt_tokens(gguf_path: Path) -> tuple[int, ...]:
    with llamacpp.load_model(gguf_path, vocab_only=True) as model:
        tokens = llamacpp.vocab(model).tokenize(PROMPT, add_special=True, parse_special=False)
    return tuple(tokens[:MAX_TOKENS])


def verify(gguf_path: Path, folder: Path, hf_architecture: str, outtype: str) -> LogitsCheck:
    """The whole check for one output; the reference runs once per process and checkpoint
    (a batch job checks each of its outputs against the same reference)."""
    return check(gguf_path, reference(folder, hf_architecture, prompt_tokens(gguf_path)), outtype)


@functools.lru_cache(maxsize=1)
def reference(folder: Path, hf_architecture: str, tokens: tuple[int, ...]) -> Reference:
    """The checkpoint's logits for `tokens`, from transformers."""
    torch, transformers = _import_reference()
    model_cls = getattr(transformers, hf_architecture, None)
    if model_cls is None:
        raise LogitsUnavailableError(
            f"transformers {transformers.__version__} has no class {hf_architecture} to compute "
            "reference logits with"
        )
    model = model_cls.from_pretrained(folder, dtype=torch.float32).eval()
    try:
        with torch.no_grad():
            out = model(torch.tensor([list(tokens)]))
    finally:
        del model
    logits = getattr(out, "logits", None)
    if hf_architecture.endswith("ForSequenceClassification"):
        raise LogitsUnavailableError(
            f"{hf_architecture} returns one score per input (a cross-encoder), not a token's "
            "logits: logits verification is for models that generate"
        )
    if logits is None:
        raise LogitsUnavailableError(
            f"{hf_architecture} returns no logits (an encoder): logits verification is for "
            "models that generate"
        )
    library = f"transformers {transformers.__version__}, torch {torch.__version__}"
    return Reference(tokens, logits[0].float().numpy(), hf_architecture, library)


def check(gguf_path: Path, ref: Reference, outtype: str) -> LogitsCheck:
    """Compare llama.cpp's logits on `gguf_path` with the reference's; raise
    LogitsMismatchError when an unquantized output falls below its bound."""
    got = llamacpp.logits(gguf_path, list(ref.tokens))
    want = ref.logits
    if got.shape != want.shape:
        raise LogitsMismatchError(
            f"{gguf_path}: llama.cpp gives logits of shape {got.shape}, the reference {want.shape}"
        )
    dot = (got * want).sum(axis=1)
    cos = dot / (np.linalg.norm(got, axis=1) * np.linalg.norm(want, axis=1))
    bound = MIN_COSINE.get(outtype)
    result = LogitsCheck(
        tokens=len(ref.tokens),
        cosine_min=round(float(cos.min()), 7),
        cosine_mean=round(float(cos.mean()), 7),
        top1_agreement=round(float((got.argmax(axis=1) == want.argmax(axis=1)).mean()), 4),
        max_abs_diff=float(np.abs(got - want).max()),
        reference=f"{ref.model_class} ({ref.library}, float32)",
        min_cosine_required=bound,
    )
    if bound is not None and result.cosine_min < bound:
        worst = int(cos.argmin())
        raise LogitsMismatchError(
            f"{gguf_path}: llama.cpp's logits differ from {ref.model_class}'s: cosine "
            f"similarity {result.cosine_min:.6f} at position {worst} (at least {bound} needed "
            f"for {outtype}); top-1 agreement {result.top1_agreement:.0%}"
        )
    return result
