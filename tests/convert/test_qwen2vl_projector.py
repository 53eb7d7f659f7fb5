"""Qwen2-VL's projector as llorch writes it (convert/families/qwen2vl_vision.py: the ViT and
patch merger as clip `qwen2vl_merger`), on the tiny random Qwen2-VL (tests/tiny_vlm.py,
family "qwen2-vl": a three-layer tower 32 wide, an MLP of 128, the merger's output 64):

- the anchor: what llama.cpp's own converter (`convert_hf_to_gguf.py --mmproj`) writes for the
  same checkpoint, F32 and F16 (from BF16 too): every key but the name, every tensor's name,
  type, shape and bytes (q/k/v split, the Conv3D patch embedding as two Conv2D kernels). One
  deliberate difference: `clip.vision.feed_forward_length` is the MLP's width (128:
  mlp_ratio x embed_dim), where llama.cpp's converter writes the vision config's
  `hidden_size` (64, the merger's output width); mtmd only logs the value;
- mtmd reads the projector (F32; F16 beside a Q8_0 text part) and gives the reference's image
  embeddings (transformers' tower + merger on the same pixels: a 224 x 224 image, which mtmd
  does not resize, 8 x 8 merged tokens), row by row, as one chunk of 64 tokens;
- a config mtmd would run wrong (another activation, merge size or RoPE base) is refused
  before anything is written.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import tiny_vlm

from llorch.convert import convert
from llorch.convert.errors import ConfigError

pytestmark = pytest.mark.slow

COS_MIN = 0.9999
FAMILY = "qwen2-vl"
FFN = "clip.vision.feed_forward_length"


@pytest.fixture(scope="module")
def vlm(tmp_path_factory: pytest.TempPathFactory) -> tiny_vlm.TinyVlm:
    return tiny_vlm.cached(tmp_path_factory.getbasetemp(), FAMILY)


@pytest.mark.parametrize("outtype", ["f32", "f16", "f16-from-bf16"])
def test_the_projector_is_llama_cpps(vlm: tiny_vlm.TinyVlm, tmp_path: Path, outtype: str) -> None:
    import gguf

    source = tiny_vlm.vendored_llama_cpp()
    if source is None:
        pytest.skip("no vendored llama.cpp source (the llama-cpp-python sdist) for its converter")
    folder = vlm.folder
    if outtype == "f16-from-bf16":
        folder, outtype = tiny_vlm.bf16_copy(vlm.folder, tmp_path / "hf"), "f16"
    if outtype == "f32":
        ours = vlm.mmproj
    else:
        report = convert(folder, tmp_path / "tiny-f16.gguf", outtype="f16", verify=False)
        assert report.mmproj is not None
        ours = Path(report.mmproj["output"])
    theirs = tiny_vlm.convert_projector(folder, tmp_path / "theirs.gguf", source, outtype)
    fields, tensors = tiny_vlm.assert_same_projector(
        ours, theirs, ours_keys={FFN: 128}, theirs_only=lambda name: name == FFN
    )
    assert gguf.GGUFReader(theirs).fields[FFN].contents() == 64
    assert fields["clip.projector_type"] == "qwen2vl_merger"
    assert "clip.use_gelu" not in fields and "clip.use_silu" not in fields
    assert {"v.patch_embd.weight", "v.patch_embd.weight.1", "v.blk.2.attn_k.bias"} <= set(tensors)
    assert "v.blk.0.ffn_gate.weight" not in tensors and "v.blk.0.ln1.bias" in tensors


def test_mtmd_gives_the_references_embeddings(vlm: tiny_vlm.TinyVlm, tmp_path: Path) -> None:
    reference = tiny_vlm.reference(vlm.folder)
    sizes = {"rows": tiny_vlm.QWEN_VL_IMAGE_TOKENS, "size": tiny_vlm.QWEN_VL_IMAGE_SIZE}
    lowest = tiny_vlm.check_embeddings(vlm.text, vlm.mmproj, reference, COS_MIN, **sizes)
    print(f"COSINE qwen2-vl f32 projector: min {lowest:.7f}")
    report = convert(vlm.folder, tmp_path / "tiny-q8_0.gguf", outtype="q8_0", verify=False)
    assert report.mmproj is not None and report.mmproj["projector_type"] == "qwen2vl_merger"
    mmproj = Path(report.mmproj["output"])
    lowest = tiny_vlm.check_embeddings(report.output, mmproj, reference, COS_MIN, **sizes)
    print(f"COSINE qwen2-vl f16 projector: min {lowest:.7f}")


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"hidden_act": "gelu"}, "hidden_act 'gelu'"),
        ({"spatial_merge_size": 4}, "spatial_merge_size 4"),
        ({"rope_parameters": {"rope_type": "axial", "rope_theta": 5e4}}, "rope_theta 50000"),
    ],
)
def test_a_config_mtmd_does_not_run_is_refused(
    vlm: tiny_vlm.TinyVlm, tmp_path: Path, change: dict[str, object], match: str
) -> None:
    folder = tmp_path / "hf"
    shutil.copytree(vlm.folder, folder)
    config = json.loads((folder / "config.json").read_text())
    config["vision_config"].update(change)
    (folder / "config.json").write_text(json.dumps(config))
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(ConfigError, match=match):
        convert(folder, out / "m.gguf", outtype="f16", verify=False)
    assert list(out.iterdir()) == []
