"""Logits parity: every row of the architecture table, converted and run in llama.cpp.

For each case a tiny random checkpoint is built with transformers, converted to GGUF, and
llama.cpp's logits for every position are compared with transformers' on the same tokens.
Bounds (relative to the largest reference logit): F32 1e-3 with identical argmax everywhere
(a flip is tolerated only at a near tie: top-2 margin below twice the measured difference);
F16 1e-2 and BF16 2e-2 with identical argmax at >= 90% of positions; Q8_0 5e-2 with >= 75%.
llama.cpp runs with an F32 KV cache (convert.llamacpp.logits), so F32 differences are
float rounding only (about 1e-6 relative in practice); F32 also needs a cosine similarity of
at least 0.9999 at every position.
Encoders (BERT) have no logits: their per-token hidden states (llama.cpp embeddings with
pooling off) are compared with transformers' last_hidden_state by the same bounds, and the
pooled vector (the pooling type written from the sentence-transformers config) with the
reference's hidden states pooled the same way.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from support import THREADS

from llorch.convert import convert
from llorch.detector import SUPPORTED
from tests.convert.parity_cases import CASES

BOUNDS = {"f32": (1e-3, 1.0), "f16": (1e-2, 0.9), "bf16": (2e-2, 0.9), "q8_0": (5e-2, 0.75)}
COS_MIN = 0.9999  # F32: smallest cosine similarity allowed at any position

POOL = {
    "mean_tokens": lambda h: h.mean(axis=0),
    "cls_token": lambda h: h[0],
    "lasttoken": lambda h: h[-1],
}


def test_every_table_row_has_a_parity_case() -> None:
    covered = {case.model_cls for case in CASES.values()}
    missing = [row.hf_name for row in SUPPORTED if row.hf_name not in covered]
    assert not missing, f"table rows without a parity case: {missing}"


@pytest.mark.slow
@pytest.mark.parametrize("case_id", list(CASES))
def test_logits_parity(case_id: str, checkpoint: Any, helpers: Any, tmp_path: Path) -> None:
    case = CASES[case_id]
    built = checkpoint(
        case.model_cls,
        case.config_cls,
        case.config,
        tokenizer=case.tokenizer,
        dtype=case.dtype,
        shard_size=case.shard_size,
    )
    if case.shard_size is not None:
        assert (built.folder / "model.safetensors.index.json").is_file()
    if case.pooling is not None:
        helpers.write_pooling(built.folder, case.pooling)
    for outtype in case.outtypes:
        out = tmp_path / f"{case_id}-{outtype}.gguf"
        report = convert(built.folder, out, outtype=outtype)
        assert report.verified and out.is_file()
        if case.pooling == "rank":  # a cross-encoder: its hidden states, then its score
            result, _ = helpers.embedding_parity(built.folder, out, built.n_vocab)
            _check_rank(built.folder, out, helpers.sample_tokens(built.n_vocab))
        elif case.pooling is not None:
            result, hidden = helpers.embedding_parity(built.folder, out, built.n_vocab)
            _check_pooled(out, helpers, built.n_vocab, hidden, case.pooling, BOUNDS[outtype][0])
        else:
            result = helpers.parity(built.folder, out, built.n_vocab)
        bound, agree = BOUNDS.get(outtype, BOUNDS["f16"])
        print(
            f"PARITY {case_id} {outtype}: cos_min={result.cos_min:.7f} "
            f"max|diff|={result.max_diff:.3g} scale={result.scale:.3g} rel={result.relative:.3g} "
            f"argmax_agree={result.argmax_agree:.2f} convert={report.seconds:.2f}s"
        )
        moe = case.config.get("num_local_experts") or case.config.get("num_experts")
        if moe and outtype != "f32":
            # Quantized experts can flip the router's top-k at a near tie, which changes that
            # position's output wholesale; the other positions must meet the dense bound.
            assert result.fraction_within(bound) >= 0.9, result
        else:
            assert result.relative <= bound, result
        if outtype == "f32":
            assert result.cos_min >= COS_MIN, result
            # Same argmax everywhere, except where the reference's top two logits are closer
            # than twice the measured difference (GELU models: llama.cpp's CPU GELU uses an
            # F16 lookup table, about 3e-4 relative); at most one such tie per case.
            assert result.unexplained_flips == 0, result
            assert result.argmax_agree >= 1 - 1.5 / len(helpers.sample_tokens(built.n_vocab))
        else:
            assert result.argmax_agree >= agree, result


def _check_pooled(
    out: Path, helpers: Any, n_vocab: int, hidden: np.ndarray, mode: str, bound: float
) -> None:
    """llama.cpp pools by the GGUF's pooling type as sentence-transformers' Pooling does."""
    from llorch.convert import llamacpp

    want = POOL[mode](hidden)
    (got,) = llamacpp.embeddings(out, [helpers.sample_tokens(n_vocab)], per_token=False)
    assert float(np.abs(got - want).max()) <= bound * float(np.abs(hidden).max())
    if bound <= BOUNDS["f32"][0]:
        assert float(helpers.cosines(got, want)) >= COS_MIN


def _check_rank(folder: Path, out: Path, tokens: list[int]) -> None:
    """llama.cpp's rank pooling gives the cross-encoder's logit (one segment: token type 0
    throughout, which llama.cpp's graph also adds; pairs are in test_cross_encoder.py)."""
    import torch
    import transformers

    from llorch.convert import llamacpp
    from llorch.worker.backend.embed import LlamaEmbedder
    from llorch.worker.backend.protocol import RankInput

    arch = json.loads((folder / "config.json").read_text())["architectures"][0]
    model = getattr(transformers, arch).from_pretrained(folder).eval()
    with torch.no_grad():
        want = float(model(torch.tensor([tokens])).logits[0, 0])
    with llamacpp.load_model(out) as loaded:
        ranker = LlamaEmbedder(loaded, n_ctx=len(tokens), threads=THREADS, pooling=None)
        try:
            (got,) = ranker.rank([RankInput(tuple(tokens), len(tokens))])
        finally:
            ranker.close()
    assert abs(got - want) <= 1e-3, (got, want)
