"""Weights: BF16 bit-exactness, streaming memory, and the Q/K permutation's inverse."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import gguf
import numpy as np
import pytest
from safetensors.numpy import load_file

from llorch.convert import convert

TINY = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 1,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
}


def test_bf16_to_bf16_is_bit_exact(checkpoint: Any, tmp_path: Path) -> None:
    built = checkpoint("LlamaForCausalLM", "LlamaConfig", TINY, dtype="bfloat16")
    out = tmp_path / "o.gguf"
    convert(built.folder, out, outtype="bf16")
    reader = gguf.GGUFReader(out)
    stored = {t.name: t for t in reader.tensors}
    from safetensors import safe_open

    with safe_open(built.folder / "model.safetensors", "pt") as f:
        embd = f.get_tensor("model.embed_tokens.weight").view(dtype=__import__("torch").int16)
    want = embd.numpy().view(np.uint16)
    got = np.asarray(stored["token_embd.weight"].data).view(np.uint16).reshape(want.shape)
    assert stored["token_embd.weight"].tensor_type == gguf.GGMLQuantizationType.BF16
    assert np.array_equal(got, want)


def test_f32_tensors_round_trip_through_permutation(checkpoint: Any, tmp_path: Path) -> None:
    from llorch.convert.families.llama import permute_rope

    built = checkpoint("LlamaForCausalLM", "LlamaConfig", TINY)
    out = tmp_path / "o.gguf"
    convert(built.folder, out, outtype="f32")
    src = load_file(built.folder / "model.safetensors")
    stored = {t.name: np.asarray(t.data) for t in gguf.GGUFReader(out).tensors}
    q = src["model.layers.0.self_attn.q_proj.weight"]
    assert np.array_equal(stored["blk.0.attn_q.weight"], permute_rope(q, 4))
    assert not np.array_equal(stored["blk.0.attn_q.weight"], q)
    assert np.array_equal(
        stored["blk.0.ffn_down.weight"], src["model.layers.0.mlp.down_proj.weight"]
    )


# VmHWM (peak RSS of this address space) rather than ru_maxrss, which Linux carries over
# from the forking pytest process, torch and the reference model included.
_MEASURE = """
import json, re, sys
from llorch.convert import convert
convert(sys.argv[1], sys.argv[2], outtype="f16")
status = open("/proc/self/status").read()
print(json.dumps({"hwm_kb": int(re.search(r"VmHWM:\\s+(\\d+)", status).group(1))}))
"""


@pytest.mark.slow
def test_peak_memory_stays_near_the_largest_tensor(checkpoint: Any, tmp_path: Path) -> None:
    """Eight layers plus embeddings: far more than the largest tensor in total."""
    config = {
        "hidden_size": 1024,
        "intermediate_size": 2816,
        "num_hidden_layers": 8,
        "num_attention_heads": 8,
        "num_key_value_heads": 4,
    }
    built = checkpoint("LlamaForCausalLM", "LlamaConfig", config, tokenizer="gpt2")
    cfg = json.loads((built.folder / "config.json").read_text())
    total_f32 = sum(p.nbytes for p in load_file(built.folder / "model.safetensors").values())
    largest_f32 = max(cfg["vocab_size"], 2816) * 1024 * 4
    proc = subprocess.run(
        [sys.executable, "-c", _MEASURE, str(built.folder), str(tmp_path / "o.gguf")],
        capture_output=True,
        text=True,
        check=True,
    )
    peak = json.loads(proc.stdout.strip().splitlines()[-1])["hwm_kb"] * 1024
    baseline = 100 * 2**20  # interpreter, numpy, gguf, tokenizers, llama.cpp library
    print(
        f"total {total_f32 / 2**20:.0f} MiB, largest {largest_f32 / 2**20:.0f} MiB, "
        f"peak RSS {peak / 2**20:.0f} MiB"
    )
    assert peak < baseline + 4 * largest_f32
    assert peak < total_f32
