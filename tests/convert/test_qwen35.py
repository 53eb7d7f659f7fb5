"""Qwen3.5 checkpoints as released: the multimodal wrapper's file also holds a vision tower
(`model.visual.*`) and a multi-token-prediction head (`mtp.*`, whose MoE layer names its
experts like layer 0's). Neither is in the text part (the tower goes to the projector beside
it: tests/convert/test_qwen3vl_projector.py), and layer 0's experts stay layer 0's."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gguf
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from llorch.convert import convert
from tests.convert.parity_cases import CASES


def _tensors(path: Path) -> dict[str, np.ndarray]:
    return {t.name: np.array(t.data) for t in gguf.GGUFReader(path).tensors}


@pytest.mark.slow
def test_mtp_head_and_vision_tower_are_left_out(checkpoint: Any, tmp_path: Path) -> None:
    case = CASES["qwen35-moe-multimodal-text-part"]
    built = checkpoint(case.model_cls, case.config_cls, case.config, tokenizer=case.tokenizer)
    plain = tmp_path / "plain.gguf"
    convert(built.folder, plain, outtype="f32")

    weights = built.folder / "model.safetensors"
    stored = load_file(weights)
    assert any(name.startswith("model.visual.") for name in stored)
    rng = np.random.default_rng(0)
    prefix = "model.language_model.layers.0."
    mtp = {  # the released head: its own layer 0 (attention + MoE) and the fusion projection
        "mtp." + name.removeprefix("model.language_model."): rng.normal(size=x.shape).astype(
            x.dtype
        )
        for name, x in stored.items()
        if name.startswith(prefix)
    }
    mtp["mtp.fc.weight"] = rng.normal(size=(128, 256)).astype(np.float32)
    mtp["mtp.norm.weight"] = np.zeros(128, np.float32)
    save_file({**stored, **mtp}, str(weights), metadata={"format": "pt"})
    with_mtp = tmp_path / "mtp.gguf"
    convert(built.folder, with_mtp, outtype="f32")

    want, got = _tensors(plain), _tensors(with_mtp)
    assert sorted(got) == sorted(want)
    for name, data in want.items():
        np.testing.assert_array_equal(got[name], data, err_msg=name)
