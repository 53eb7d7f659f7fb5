"""Mixture-of-experts conversion: both expert layouts, missing experts, streaming memory.

Logits parity of each MoE row is in test_parity.py; here the stacking itself.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import gguf
import numpy as np
import pytest

from llorch.convert import convert
from llorch.convert.errors import MissingExpertError

QWEN3_MOE = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "moe_intermediate_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 32,
    "num_experts": 4,
    "num_experts_per_tok": 2,
    "norm_topk_prob": True,
}


def _tensors(path: Path) -> dict[str, np.ndarray]:
    return {t.name: np.asarray(t.data) for t in gguf.GGUFReader(path).tensors}


def _fuse_experts(src: Path, dst: Path, n_layer: int, n_expert: int) -> None:
    """Rewrite a per-expert checkpoint in transformers 5's fused layout (gate_up_proj [E, 2F, D],
    down_proj [E, D, F]), keeping the dtype."""
    import torch
    from safetensors.torch import load_file, save_file

    shutil.copytree(src, dst)
    weights = load_file(dst / "model.safetensors")
    for layer in range(n_layer):
        prefix = f"model.layers.{layer}.mlp.experts"
        proj = {
            p: [weights.pop(f"{prefix}.{e}.{p}.weight") for e in range(n_expert)]
            for p in ("gate_proj", "up_proj", "down_proj")
        }
        weights[f"{prefix}.gate_up_proj"] = torch.stack(
            [torch.cat([g, u]) for g, u in zip(proj["gate_proj"], proj["up_proj"], strict=True)]
        )
        weights[f"{prefix}.down_proj"] = torch.stack(proj["down_proj"])
    save_file(weights, dst / "model.safetensors", metadata={"format": "pt"})


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_fused_expert_layout_converts_like_per_expert(
    dtype: str, checkpoint: Any, tmp_path: Path
) -> None:
    built = checkpoint(
        "Qwen3MoeForCausalLM", "Qwen3MoeConfig", QWEN3_MOE, tokenizer="qwen2", dtype=dtype
    )
    fused = tmp_path / "fused"
    _fuse_experts(built.folder, fused, 2, 4)
    assert "model.layers.0.mlp.experts.gate_up_proj" in _header(fused)
    a, b = tmp_path / "per-expert.gguf", tmp_path / "fused.gguf"
    convert(built.folder, a, outtype="f32")
    convert(fused, b, outtype="f32")
    want, got = _tensors(a), _tensors(b)
    assert want.keys() == got.keys()
    assert want["blk.1.ffn_gate_exps.weight"].shape == (4, 32, 64)
    assert want["blk.1.ffn_down_exps.weight"].shape == (4, 64, 32)
    for name in want:
        assert np.array_equal(want[name], got[name]), name


def _header(folder: Path) -> dict[str, Any]:
    raw = (folder / "model.safetensors").read_bytes()
    return json.loads(raw[8 : 8 + int.from_bytes(raw[:8], "little")])


def test_missing_expert_is_named(checkpoint: Any, tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    built = checkpoint("Qwen3MoeForCausalLM", "Qwen3MoeConfig", QWEN3_MOE, tokenizer="qwen2")
    weights = load_file(built.folder / "model.safetensors")
    del weights["model.layers.1.mlp.experts.2.up_proj.weight"]
    save_file(weights, built.folder / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(MissingExpertError, match=r"layer 1 lacks up_proj of experts \[2\]"):
        convert(built.folder, tmp_path / "o.gguf", outtype="f32")
    assert not (tmp_path / "o.gguf").exists()


_MEASURE = """
import json, re, sys
from llorch.convert import convert
convert(sys.argv[1], sys.argv[2], outtype="f16")
status = open("/proc/self/status").read()
print(json.dumps({"hwm_kb": int(re.search(r"VmHWM:\\s+(\\d+)", status).group(1))}))
"""


@pytest.mark.slow
def test_experts_stream_one_stacked_tensor_at_a_time(checkpoint: Any, tmp_path: Path) -> None:
    """Eight layers of 64 experts (BF16 on disk): the experts total far more than one stacked
    tensor; peak memory stays near one stacked tensor (as F32) plus its F16 copy."""
    n_expert, width = 64, 256
    config = {
        **QWEN3_MOE,
        "hidden_size": width,
        "moe_intermediate_size": width,
        "num_hidden_layers": 8,
        "head_dim": 64,
        "num_experts": n_expert,
    }
    built = checkpoint(
        "Qwen3MoeForCausalLM", "Qwen3MoeConfig", config, tokenizer="qwen2", dtype="bfloat16"
    )
    stacked_f32 = n_expert * width * width * 4
    experts_f32 = 8 * 3 * stacked_f32
    proc = subprocess.run(
        [sys.executable, "-c", _MEASURE, str(built.folder), str(tmp_path / "o.gguf")],
        capture_output=True,
        text=True,
        check=True,
    )
    peak = json.loads(proc.stdout.strip().splitlines()[-1])["hwm_kb"] * 1024
    baseline = 100 * 2**20  # interpreter, numpy, gguf, tokenizers, llama.cpp library
    print(
        f"experts {experts_f32 / 2**20:.0f} MiB as F32, one stacked tensor "
        f"{stacked_f32 / 2**20:.0f} MiB, peak RSS {peak / 2**20:.0f} MiB"
    )
    # a layer's three projections held at once (or twice) would pass 3 x stacked_f32
    assert peak < baseline + 2.5 * stacked_f32
    assert peak < experts_f32 / 2


def test_multi_token_prediction_layer_is_left_out(checkpoint: Any, tmp_path: Path) -> None:
    """GLM-4.5 and DeepSeek-V3 ship an MTP layer after num_hidden_layers; llama.cpp's graphs
    here do not run it, so its tensors are not converted (and nothing else is lost)."""
    import torch
    from safetensors.torch import load_file, save_file

    config = {
        **QWEN3_MOE,
        "n_routed_experts": 4,
        "n_shared_experts": 1,
        "first_k_dense_replace": 1,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 16,
        "pad_token_id": 1,
    }
    built = checkpoint("Glm4MoeForCausalLM", "Glm4MoeConfig", config, tokenizer="gpt2")
    plain = tmp_path / "plain.gguf"
    convert(built.folder, plain, outtype="f32")
    weights = load_file(built.folder / "model.safetensors")
    weights["model.layers.2.eh_proj.weight"] = torch.zeros(64, 128)
    weights["model.layers.2.mlp.gate.e_score_correction_bias"] = torch.zeros(4)
    save_file(weights, built.folder / "model.safetensors", metadata={"format": "pt"})
    with_mtp = tmp_path / "mtp.gguf"
    convert(built.folder, with_mtp, outtype="f32")
    want, got = _tensors(plain), _tensors(with_mtp)
    assert want.keys() == got.keys()
    assert "blk.1.exp_probs_b.bias" in got and not any(k.startswith("blk.2.") for k in got)
