"""Llama 4's projector as llorch writes it (convert/families/llama4_vision.py: the tower, its
pixel-shuffle adapter and the projector as clip `llama4`), on the tiny random Llama 4
(tests/tiny_vlm.py, family "llama4": a three-layer tower 32 wide over 112-pixel tiles of
14-pixel patches, shuffled 2 x 2 into 16 tokens, the adapter 48 wide, the text model 64):

- the anchor: what llama.cpp's own converter (`convert_hf_to_gguf.py --mmproj`) writes for the
  same checkpoint, F32 and F16 (from BF16 too): every key but the name, every tensor's name,
  type, shape and bytes (`v.patch_embd.weight` the patch Linear, `v.position_embd.weight`,
  `mm.model.mlp.1` / `.2`, `mm.model.fc`). One deliberate difference: each layer's
  `post_attention_layernorm`, transformers' pre-FFN norm, is `v.blk.N.ln2` (mtmd's pre-FFN
  norm), where llama.cpp's converter writes `attn_post_norm` (gguf's map: a Gemma 4 row
  shadows Llama 4's), which mtmd applies to the attention output before the residual;
- mtmd reads the projector (F32; F16 beside a Q8_0 text part) and gives the reference's image
  embeddings (transformers' tower + adapter + projector on the same pixels: a 112 x 112 image,
  one chunk, no overview), row by row, in mtmd's order: its pixel shuffle leaves out
  transformers' last permute, so the 4 x 4 tokens come column by column (tiny_vlm.transposed);
  in transformers' order they differ, and llama.cpp's converter's file gives other rows in
  either order;
- a config mtmd would run wrong (another vision RoPE base, a shuffle ratio that is not 1 / n)
  is refused before anything is written.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import tiny_vlm

from llorch.convert import convert
from llorch.convert.errors import ConfigError

pytestmark = pytest.mark.slow

COS_MIN = 0.9999
FAMILY = "llama4"
SIZES = {"rows": tiny_vlm.LLAMA4_IMAGE_TOKENS, "size": tiny_vlm.LLAMA4_IMAGE_SIZE}
LAYERS = range(3)


def _norms(prefix: str) -> set[str]:
    return {f"v.blk.{i}.{prefix}.{part}" for i in LAYERS for part in ("weight", "bias")}


@pytest.fixture(scope="module")
def vlm(tmp_path_factory: pytest.TempPathFactory) -> tiny_vlm.TinyVlm:
    return tiny_vlm.cached(tmp_path_factory.getbasetemp(), FAMILY)


def _theirs(folder: Path, out: Path, outtype: str) -> Path:
    source = tiny_vlm.vendored_llama_cpp()
    if source is None:
        pytest.skip("no vendored llama.cpp source (the llama-cpp-python sdist) for its converter")
    return tiny_vlm.convert_projector(folder, out, source, outtype)


@pytest.mark.parametrize("outtype", ["f32", "f16", "f16-from-bf16"])
def test_the_projector_is_llama_cpps(vlm: tiny_vlm.TinyVlm, tmp_path: Path, outtype: str) -> None:
    import gguf

    folder = vlm.folder
    if outtype == "f16-from-bf16":
        folder, outtype = tiny_vlm.bf16_copy(vlm.folder, tmp_path / "hf"), "f16"
    theirs = _theirs(folder, tmp_path / "theirs.gguf", outtype)
    if outtype == "f32":
        ours = vlm.mmproj
    else:
        report = convert(folder, tmp_path / "tiny-f16.gguf", outtype="f16", verify=False)
        assert report.mmproj is not None
        ours = Path(report.mmproj["output"])
    post_norm = gguf.TENSOR_NAMES[gguf.MODEL_TENSOR.V_ENC_ATTN_POST_NORM]
    theirs_post = _norms(post_norm.rsplit(".", 1)[-1])
    fields, tensors = tiny_vlm.assert_same_projector(
        ours, theirs, only_ours=frozenset(_norms("ln2")), theirs_only=theirs_post.__contains__
    )
    # the same values under the other name
    theirs_tensors = {t.name: t for t in gguf.GGUFReader(theirs).tensors}
    assert theirs_post <= set(theirs_tensors)
    for name in theirs_post:
        ours_t = tensors[name.replace(".attn_post_norm.", ".ln2.")]
        assert np.asarray(ours_t.data).tobytes() == np.asarray(theirs_tensors[name].data).tobytes()
    assert fields["clip.projector_type"] == "llama4"
    assert fields["clip.use_gelu"] is True
    assert fields["clip.vision.projector.scale_factor"] == 2
    assert {"v.patch_embd.weight", "v.class_embd", "v.position_embd.weight"} <= set(tensors)
    assert {"mm.model.mlp.1.weight", "mm.model.mlp.2.weight", "mm.model.fc.weight"} <= set(tensors)
    assert list(tensors["v.patch_embd.weight"].shape) == [588, 32]
    want = gguf.GGMLQuantizationType.F32 if outtype == "f32" else gguf.GGMLQuantizationType.F16
    assert tensors["v.patch_embd.weight"].tensor_type == want
    # F32 in an F16 file too: mtmd's CPU add takes no F16 operand
    assert tensors["v.position_embd.weight"].tensor_type == gguf.GGMLQuantizationType.F32


def test_mtmd_gives_the_references_embeddings(vlm: tiny_vlm.TinyVlm, tmp_path: Path) -> None:
    reference = tiny_vlm.reference(vlm.folder)
    order = tiny_vlm.transposed
    lowest = tiny_vlm.check_embeddings(
        vlm.text, vlm.mmproj, reference, COS_MIN, order=order, **SIZES
    )
    print(f"COSINE llama4 f32 projector (mtmd's token order): min {lowest:.7f}")
    report = convert(vlm.folder, tmp_path / "tiny-q8_0.gguf", outtype="q8_0", verify=False)
    assert report.mmproj is not None and report.mmproj["projector_type"] == "llama4"
    mmproj = Path(report.mmproj["output"])
    lowest = tiny_vlm.check_embeddings(
        report.output, mmproj, reference, COS_MIN, order=order, **SIZES
    )
    print(f"COSINE llama4 f16 projector (mtmd's token order): min {lowest:.7f}")
    # in transformers' order the rows differ (the grid is not symmetric)
    as_is = tiny_vlm.check_embeddings(vlm.text, vlm.mmproj, reference, -1.0, **SIZES)
    print(f"COSINE llama4 f32 projector (transformers' token order): min {as_is:.7f}")
    assert as_is < 0.9


def test_llama_cpps_file_gives_other_embeddings(vlm: tiny_vlm.TinyVlm, tmp_path: Path) -> None:
    """Why `ln2`: mtmd runs llama.cpp's converter's file with the pre-FFN norm on the
    attention output instead."""
    theirs = _theirs(vlm.folder, tmp_path / "theirs.gguf", "f32")
    reference = tiny_vlm.reference(vlm.folder)
    lowest = tiny_vlm.check_embeddings(
        vlm.text, theirs, reference, -1.0, order=tiny_vlm.transposed, **SIZES
    )
    print(f"COSINE llama4 llama.cpp's converter's f32 projector (mtmd's order): min {lowest:.7f}")
    assert lowest < 0.99


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"rope_parameters": {"rope_type": "default", "rope_theta": 5e4}}, "rope_theta 50000"),
        ({"pixel_shuffle_ratio": 0.4}, "pixel_shuffle_ratio 0.4"),
        ({"pixel_shuffle_ratio": 1 / 3}, "pixel_shuffle_ratio"),  # 3 does not divide 8 patches
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
