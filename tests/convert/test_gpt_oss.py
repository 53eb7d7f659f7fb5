"""gpt-oss as released: MXFP4 experts kept MXFP4, logits against transformers' dequantization.

The float layout (transformers' own save) is a parity case in test_parity.py. Here the expert
matrices of a tiny random checkpoint are quantized to MXFP4 in numpy, stored as transformers'
gpt-oss quantizer stores them (`*_blocks`, `*_scales`, `quantization_config`), and transformers
dequantizes them to exactly the values the GGUF's MXFP4 blocks hold.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import gguf
import numpy as np
import pytest

from llorch.convert import convert, llamacpp
from llorch.convert.errors import OutTypeError
from tests.convert.parity_cases import CASES

# E2M1 values by 4-bit code (transformers' FP4_VALUES)
FP4 = np.array([0, 0.5, 1, 1.5, 2, 3, 4, 6, -0.0, -0.5, -1, -1.5, -2, -3, -4, -6], np.float32)
# gpt-oss-20b scaled down, as its parity case (8:1 GQA, 8 experts top-4, sliding window on
# even layers, YaRN 32x), with YaRN untruncated as the released config.json has it
_DEQUANTIZED = CASES["gpt-oss-dequantized"].config
GPT_OSS = {
    **_DEQUANTIZED,
    "rope_parameters": {**_DEQUANTIZED["rope_parameters"], "truncate": False},
}
QUANT = {
    "quant_method": "mxfp4",
    "modules_to_not_convert": [
        "model.layers.*.self_attn",
        "model.layers.*.mlp.router",
        "model.embed_tokens",
        "lm_head",
    ],
}


def to_mxfp4(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """[E, rows, cols] -> blocks [E, rows, cols/32, 16] (low nibble first), scales (E8M0)."""
    blk = w.reshape(*w.shape[:2], -1, 32)
    amax = np.abs(blk).max(axis=-1)
    exp = np.where(amax > 0, np.floor(np.log2(np.maximum(amax, 1e-30))) - 2, 0)  # amax < 8 * 2^exp
    scaled = blk / np.exp2(exp)[..., None]
    codes = np.abs(scaled[..., None] - FP4).argmin(axis=-1).astype(np.uint8)
    return codes[..., 0::2] | (codes[..., 1::2] << 4), (exp + 127).astype(np.uint8)


def from_mxfp4(blocks: np.ndarray, scales: np.ndarray) -> np.ndarray:
    codes = np.stack([blocks & 0x0F, blocks >> 4], axis=-1).reshape(*blocks.shape[:-1], 32)
    values = FP4[codes] * np.exp2(scales.astype(np.float32) - 127)[..., None]
    return values.reshape(*blocks.shape[:2], -1)


def quantize_experts(folder: Path) -> dict[str, np.ndarray]:
    """Rewrite the checkpoint's expert matrices as MXFP4; returns the dequantized values in
    the model's parameter layout ([E, D, 2F] and [E, F, D])."""
    from safetensors.numpy import load_file, save_file

    weights = load_file(folder / "model.safetensors")
    want = {}
    for name in [n for n in weights if n.endswith(("experts.gate_up_proj", "experts.down_proj"))]:
        stored = np.ascontiguousarray(weights.pop(name).transpose(0, 2, 1))  # [E, rows, cols]
        blocks, scales = to_mxfp4(stored)
        weights[name + "_blocks"], weights[name + "_scales"] = blocks, scales
        want[name] = from_mxfp4(blocks, scales).transpose(0, 2, 1)
    save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "quantization_config": QUANT}))
    return want


@pytest.mark.slow
def test_mxfp4_experts_stay_mxfp4(checkpoint: Any, helpers: Any, tmp_path: Path) -> None:
    """The released layout and config (YaRN truncate false): the GGUF's MXFP4 blocks hold
    transformers' dequantized expert values exactly; logits within llama.cpp's quantized
    matmul rounding (it quantizes the activations to 8 bits against MXFP4 weights)."""
    import torch
    import transformers

    built = checkpoint("GptOssForCausalLM", "GptOssConfig", GPT_OSS, tokenizer="llama3")
    want = quantize_experts(built.folder)
    ref = transformers.GptOssForCausalLM.from_pretrained(built.folder, dtype=torch.float32)
    for name, values in want.items():  # transformers dequantizes the blocks to these values
        assert np.array_equal(ref.get_parameter(name).detach().numpy(), values), name
    del ref

    out = tmp_path / "gpt-oss.gguf"
    report = convert(built.folder, out, outtype="f32")
    tensors = {t.name: t for t in gguf.GGUFReader(out).tensors}
    for layer in range(GPT_OSS["num_hidden_layers"]):
        prefix = f"model.layers.{layer}.mlp.experts."
        gate_up, down = want[prefix + "gate_up_proj"], want[prefix + "down_proj"]
        stored = {
            "gate": gate_up[:, :, 0::2].transpose(0, 2, 1),
            "up": gate_up[:, :, 1::2].transpose(0, 2, 1),
            "down": down.transpose(0, 2, 1),
        }
        for kind, values in stored.items():
            t = tensors[f"blk.{layer}.ffn_{kind}_exps.weight"]
            assert t.tensor_type == gguf.GGMLQuantizationType.MXFP4
            got = gguf.quants.dequantize(np.asarray(t.data), t.tensor_type)
            assert np.array_equal(got, values), (layer, kind)
            bias = tensors[f"blk.{layer}.ffn_{kind}_exps.bias"]
            assert bias.tensor_type == gguf.GGMLQuantizationType.F32
    result = helpers.parity(built.folder, out, built.n_vocab)
    print(
        f"PARITY gpt-oss-mxfp4: cos_min={result.cos_min:.7f} rel={result.relative:.3g} "
        f"argmax_agree={result.argmax_agree:.2f} convert={report.seconds:.2f}s"
    )
    assert result.cos_min >= 0.9999, result
    assert result.unexplained_flips == 0 and result.argmax_equal, result
    assert result.relative <= 2e-2, result

    # llama.cpp's quantizer would have to requantize the MXFP4 experts for other types
    with pytest.raises(OutTypeError, match="MXFP4"):
        convert(built.folder, tmp_path / "q4.gguf", outtype="q4_k_m")
    assert not (tmp_path / "q4.gguf").exists()
    moe = tmp_path / "mxfp4-moe.gguf"
    convert(built.folder, moe, outtype="mxfp4_moe")
    tensors = {t.name: t for t in gguf.GGUFReader(moe).tensors}
    assert tensors["blk.0.ffn_down_exps.weight"].tensor_type == gguf.GGMLQuantizationType.MXFP4
    assert llamacpp.logits(moe, helpers.sample_tokens(built.n_vocab)).shape[0] == 24
