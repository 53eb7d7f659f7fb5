"""Checkpoint: parameter counts of MXFP4 experts, and block reads of stored tensors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from llorch.detector.safetensors import Checkpoint


def test_mxfp4_blocks_count_values_not_bytes(tmp_path: Path) -> None:
    """gpt-oss: `*_blocks` U8 [E, rows, cols/32, 16] holds 32 values in 16 bytes a block, and
    `*_scales` U8 [E, rows, cols/32] one shared exponent a block, which is no parameter."""
    experts, rows, cols = 2, 6, 64
    prefix = "model.layers.0.mlp.experts."
    save_file(
        {
            prefix + "gate_up_proj_blocks": np.zeros((experts, rows, cols // 32, 16), np.uint8),
            prefix + "gate_up_proj_scales": np.zeros((experts, rows, cols // 32), np.uint8),
            prefix + "gate_up_proj_bias": np.zeros((experts, rows), np.float32),
            "model.embed_tokens.weight": np.zeros((10, cols), np.float32),
            "other_scales": np.zeros((3,), np.uint8),  # no blocks beside it: counted as stored
        },
        tmp_path / "model.safetensors",
    )
    ckpt = Checkpoint(tmp_path)
    assert ckpt.n_parameters() == experts * rows * cols + experts * rows + 10 * cols + 3


def test_read_into_reads_any_range_of_the_stored_values(tmp_path: Path) -> None:
    data = np.arange(3 * 50, dtype=np.float16).reshape(3, 50)
    save_file({"a": np.ones(7, np.float32), "w": data}, tmp_path / "model.safetensors")
    ckpt = Checkpoint(tmp_path)
    got = ckpt.read_into("w", 37, np.empty(80, ckpt.stored_dtype("w")))
    assert np.array_equal(got, data.reshape(-1)[37:117])
    with pytest.raises(ValueError):
        ckpt.read_into("w", 100, np.empty(80, np.float16))  # past the end
    with pytest.raises(ValueError):
        ckpt.read_into("w", 0, np.empty(8, np.float32))  # not the stored dtype
