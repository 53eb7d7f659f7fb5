"""RoPE scaling: written for every family llama.cpp runs it for, checked against transformers at
positions beyond the original context, or refused by name.

Each case is a tiny checkpoint whose original context (16) is shorter than the 48 tokens run,
so the scaled frequencies (YaRN's ramp, linear interpolation, LongRoPE's long factors) decide
the logits of the later positions. llama.cpp runs with an F32 KV cache; the bounds are the
parity tests' F32 ones (1e-3 relative to the largest logit, cosine 0.9999, same argmax except
near ties).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gguf
import numpy as np
import pytest

from llorch.convert import convert, llamacpp
from llorch.convert.errors import ConfigError
from llorch.convert.families import qwen
from llorch.convert.families.base import write_common

N_TOKENS = 48
ORIG = 16
SMALL = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 64,
}


def yarn(**extra: Any) -> dict[str, Any]:
    return {
        "rope_type": "yarn",
        "factor": 4.0,
        "original_max_position_embeddings": ORIG,
        "rope_theta": 10000.0,
        **extra,
    }


def linear() -> dict[str, Any]:
    """A fresh dict: transformers' config classes add keys to the one they are given."""
    return {"rope_type": "linear", "factor": 4.0, "rope_theta": 10000.0}


FALCON = {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4}
LONG = [1.0, 1.5, 2.0, 3.0, 4.0, 6.0, 8.0, 12.0]  # per rotated pair (head_dim 16)

CASES: dict[str, tuple[str, str, dict[str, Any], str]] = {
    "qwen2-yarn": ("Qwen2ForCausalLM", "Qwen2Config", {**SMALL, "rope_scaling": yarn()}, "qwen2"),
    "qwen2-yarn-attention-factor": (
        "Qwen2ForCausalLM",
        "Qwen2Config",
        {**SMALL, "rope_scaling": yarn(attention_factor=0.8)},
        "qwen2",
    ),
    "qwen3-yarn-mscale": (
        "Qwen3ForCausalLM",
        "Qwen3Config",
        {**SMALL, "head_dim": 16, "rope_scaling": yarn(mscale=1.0, mscale_all_dim=0.5)},
        "qwen2",
    ),
    "llama-yarn": ("LlamaForCausalLM", "LlamaConfig", {**SMALL, "rope_scaling": yarn()}, "spm"),
    "stablelm-linear": (
        "StableLmForCausalLM",
        "StableLmConfig",
        {**SMALL, "partial_rotary_factor": 0.5, "rope_scaling": linear()},
        "gpt2",
    ),
    "phi2-yarn": (
        "PhiForCausalLM",
        "PhiConfig",
        {**SMALL, "num_key_value_heads": 4, "partial_rotary_factor": 0.5, "rope_scaling": yarn()},
        "gpt2",
    ),
    "starcoder2-linear": (
        "Starcoder2ForCausalLM",
        "Starcoder2Config",
        {**SMALL, "sliding_window": None, "rope_scaling": linear()},
        "starcoder",
    ),
    "falcon-yarn": (
        "FalconForCausalLM",
        "FalconConfig",
        {**FALCON, "max_position_embeddings": 64, "rope_scaling": yarn()},
        "gpt2",
    ),
    # The MoE and 2025 rows (their parity cases' shapes, YaRN from a 16-token context)
    "qwen3moe-yarn": (
        "Qwen3MoeForCausalLM",
        "Qwen3MoeConfig",
        {
            **SMALL,
            "head_dim": 16,
            "moe_intermediate_size": 16,
            "num_experts": 4,
            "num_experts_per_tok": 2,
            "norm_topk_prob": True,
            "rope_scaling": yarn(),
        },
        "qwen2",
    ),
    "qwen2moe-yarn": (
        "Qwen2MoeForCausalLM",
        "Qwen2MoeConfig",
        {
            **SMALL,
            "moe_intermediate_size": 16,
            "shared_expert_intermediate_size": 64,
            "num_experts": 4,
            "num_experts_per_tok": 2,
            "rope_scaling": yarn(),
        },
        "qwen2",
    ),
    "olmoe-yarn": (
        "OlmoeForCausalLM",
        "OlmoeConfig",
        {
            **SMALL,
            "num_key_value_heads": 4,
            "num_experts": 4,
            "num_experts_per_tok": 2,
            "pad_token_id": 1,
            "rope_scaling": yarn(),
        },
        "gpt2",
    ),
    "olmo2-yarn": (
        "Olmo2ForCausalLM",
        "Olmo2Config",
        {**SMALL, "pad_token_id": 1, "rope_scaling": yarn()},
        "gpt2",
    ),
    "glm4-half-rotary-yarn": (
        "Glm4ForCausalLM",
        "Glm4Config",
        {
            **SMALL,
            "head_dim": 16,
            "partial_rotary_factor": 0.5,
            "pad_token_id": 2,
            "rope_parameters": {**yarn(), "partial_rotary_factor": 0.5},
        },
        "gpt2",
    ),
    "glm4moe-half-rotary-yarn": (
        "Glm4MoeForCausalLM",
        "Glm4MoeConfig",
        {
            **SMALL,
            "head_dim": 16,
            "partial_rotary_factor": 0.5,
            "moe_intermediate_size": 16,
            "n_routed_experts": 4,
            "num_experts_per_tok": 2,
            "n_shared_experts": 1,
            "first_k_dense_replace": 1,
            "pad_token_id": 1,
            "rope_parameters": {**yarn(), "partial_rotary_factor": 0.5},
        },
        "gpt2",
    ),
    # Phi-3 128k's shape: LongRoPE, the long factors used beyond the original context.
    "phi3-128k-longrope": (
        "Phi3ForCausalLM",
        "Phi3Config",
        {
            **SMALL,
            "sliding_window": None,
            "pad_token_id": 0,
            "max_position_embeddings": 256,
            "original_max_position_embeddings": ORIG,
            "rope_scaling": {
                "type": "longrope",
                "long_factor": LONG,
                "short_factor": [1.0] * len(LONG),
            },
        },
        "spm",
    ),
}


def _parity(folder: Path, out: Path, n_vocab: int, helpers: Any) -> None:
    tokens = helpers.sample_tokens(n_vocab, n=N_TOKENS)
    want = helpers.reference_logits(folder, tokens)
    got = llamacpp.logits(out, tokens)
    diff = np.abs(got - want).max(axis=1)
    scale = float(np.abs(want).max())
    beyond = slice(ORIG, N_TOKENS)
    assert float(diff.max()) <= 1e-3 * scale, (diff.max() / scale, diff[beyond])
    assert float(helpers.cosines(got, want).min()) >= 0.9999
    top2 = np.sort(want, axis=1)[:, -2:]
    flips = (got.argmax(axis=1) != want.argmax(axis=1)) & (
        top2[:, 1] - top2[:, 0] > 2 * float(diff.max())
    )
    assert not flips.any()


def _fields(path: Path) -> dict[str, Any]:
    reader = gguf.GGUFReader(path)
    return {name: field.contents() for name, field in reader.fields.items()}


@pytest.mark.parametrize("case_id", list(CASES))
def test_scaled_rope_matches_transformers_beyond_the_original_context(
    case_id: str, checkpoint: Any, helpers: Any, tmp_path: Path
) -> None:
    model_cls, config_cls, config, tokenizer = CASES[case_id]
    built = checkpoint(model_cls, config_cls, config, tokenizer=tokenizer)
    out = tmp_path / "out.gguf"
    report = convert(built.folder, out, outtype="f32")
    f = _fields(out)
    arch = report.llama_arch
    kind = case_id.rsplit("-", 1)[-1]
    want_type = {"linear": "linear", "longrope": "longrope"}.get(kind, "yarn")
    assert f[gguf.Keys.Rope.SCALING_TYPE.format(arch=arch)] == want_type
    if want_type == "yarn":
        assert f[gguf.Keys.Rope.SCALING_ORIG_CTX_LEN.format(arch=arch)] == ORIG
    _parity(built.folder, out, built.n_vocab, helpers)


def _refused(checkpoint: Any, tmp_path: Path, rope: dict[str, Any], match: str) -> None:
    built = checkpoint("Qwen2ForCausalLM", "Qwen2Config", {**SMALL, "rope_scaling": rope})
    with pytest.raises(ConfigError, match=match):
        convert(built.folder, tmp_path / "out.gguf", outtype="f32")
    assert not (tmp_path / "out.gguf").exists()


def test_dynamic_ntk_is_refused(checkpoint: Any, tmp_path: Path) -> None:
    dynamic = {"rope_type": "dynamic", "factor": 2.0, "rope_theta": 10000.0}
    _refused(checkpoint, tmp_path, dynamic, "'dynamic'.*dynamic NTK scaling is not implemented")


def test_longrope_outside_phi3_is_refused(checkpoint: Any, tmp_path: Path) -> None:
    longrope = {
        "rope_type": "longrope",
        "long_factor": LONG,
        "short_factor": [1.0] * len(LONG),
        "original_max_position_embeddings": ORIG,
        "rope_theta": 10000.0,
    }
    _refused(checkpoint, tmp_path, longrope, "'longrope' is not supported for Qwen2ForCausalLM")


def test_yarn_betas_llama_cpp_ignores_are_refused(checkpoint: Any, tmp_path: Path) -> None:
    _refused(checkpoint, tmp_path, yarn(beta_fast=16.0), "beta_fast=16, beta_slow=1")


def test_a_family_that_drops_scaling_is_caught(
    checkpoint: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The safety net for families that do not write RoPE scaling at all."""
    monkeypatch.setattr(qwen, "write_hparams", lambda model, w: write_common(model, w))
    _refused(checkpoint, tmp_path, linear(), "its converter does not write RoPE scaling")
