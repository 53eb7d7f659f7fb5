"""Qwen3-VL's and Qwen 3.5's projector as llorch writes it (convert/families/qwen3vl_vision.py:
the ViT, patch merger and deepstack mergers as clip `qwen3vl_merger`), on the tiny random
Qwen3-VL (tests/tiny_vlm.py, family "qwen3-vl": deepstack from tower layers 1 and 2) and Qwen
3.5 (family "qwen3.5": the hybrid DeltaNet language model, a tower without deepstack):

- the anchor: what llama.cpp's own converter (`convert_hf_to_gguf.py --mmproj`) writes for the
  same checkpoint (F32 both; F16 from BF16 for Qwen3-VL): every key but the name, every
  tensor's name, type, shape and bytes (deepstack mergers under their tower layers, the Conv3D
  patch embedding as two Conv2D kernels);
- mtmd reads the projector (F32; Qwen3-VL's F16 beside a Q8_0 text part too) and gives the
  reference's image embeddings (transformers' tower + merger on the same pixels, the 4 x 4
  position grid resampled to 8 x 8 patches): every row of mtmd's output, which for Qwen3-VL
  is the merged embedding and both deepstack features side by side (the text model's input
  rows), and each of those parts on its own;
- a config llama.cpp would run wrong or not at all (another merge size; a deepstack feature
  for the last text layer) is refused before anything is written.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import gguf
import pytest
import tiny_vlm

from llorch.convert import convert
from llorch.convert.errors import ConfigError

pytestmark = pytest.mark.slow

COS_MIN = 0.9999
SIZES = {
    "qwen3-vl": (tiny_vlm.QWEN3_VL_IMAGE_SIZE, tiny_vlm.QWEN3_VL_IMAGE_TOKENS),
    "qwen3.5": (tiny_vlm.QWEN35_IMAGE_SIZE, tiny_vlm.QWEN3_VL_IMAGE_TOKENS),
}


def _vlm(factory: pytest.TempPathFactory, family: str) -> tiny_vlm.TinyVlm:
    return tiny_vlm.cached(factory.getbasetemp(), family)


@pytest.mark.parametrize(
    ("family", "outtype"),
    [("qwen3-vl", "f32"), ("qwen3-vl", "f16-from-bf16"), ("qwen3.5", "f32")],
)
def test_the_projector_is_llama_cpps(
    tmp_path_factory: pytest.TempPathFactory, tmp_path: Path, family: str, outtype: str
) -> None:
    source = tiny_vlm.vendored_llama_cpp()
    if source is None:
        pytest.skip("no vendored llama.cpp source (the llama-cpp-python sdist) for its converter")
    vlm = _vlm(tmp_path_factory, family)
    folder, ours = vlm.folder, vlm.mmproj
    if outtype == "f16-from-bf16":
        folder, outtype = tiny_vlm.bf16_copy(vlm.folder, tmp_path / "hf"), "f16"
        report = convert(folder, tmp_path / "tiny-f16.gguf", outtype="f16", verify=False)
        assert report.mmproj is not None
        ours = Path(report.mmproj["output"])
    theirs = tiny_vlm.convert_projector(folder, tmp_path / "theirs.gguf", source, outtype)
    fields, tensors = tiny_vlm.assert_same_projector(ours, theirs)
    assert fields["clip.projector_type"] == "qwen3vl_merger" and fields["clip.use_gelu"] is True
    assert {"v.patch_embd.weight", "v.patch_embd.weight.1", "v.patch_embd.bias"} <= set(tensors)
    deepstack = {name for name in tensors if name.startswith("v.deepstack.")}
    if family == "qwen3-vl":
        assert fields["clip.vision.is_deepstack_layers"] == [False, True, True, False]
        assert {name.split(".")[2] for name in deepstack} == {"1", "2"}
    else:
        assert fields["clip.vision.is_deepstack_layers"] == [False] and not deepstack


@pytest.mark.parametrize("family", ["qwen3-vl", "qwen3.5"])
def test_mtmd_gives_the_references_embeddings(
    tmp_path_factory: pytest.TempPathFactory, tmp_path: Path, family: str
) -> None:
    vlm = _vlm(tmp_path_factory, family)
    reference = tiny_vlm.reference(vlm.folder)
    size, rows = SIZES[family]
    lowest = tiny_vlm.check_embeddings(
        vlm.text, vlm.mmproj, reference, COS_MIN, rows=rows, size=size
    )
    print(f"COSINE {family} f32 projector: min {lowest:.7f}")
    if family != "qwen3-vl":
        return
    text = gguf.GGUFReader(vlm.text)
    assert text.fields["qwen3vl.n_deepstack_layers"].contents() == 2
    report = convert(vlm.folder, tmp_path / "tiny-q8_0.gguf", outtype="q8_0", verify=False)
    assert report.mmproj is not None and report.mmproj["projector_type"] == "qwen3vl_merger"
    mmproj = Path(report.mmproj["output"])
    lowest = tiny_vlm.check_embeddings(
        report.output, mmproj, reference, COS_MIN, rows=rows, size=size
    )
    print(f"COSINE {family} f16 projector: min {lowest:.7f}")


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"spatial_merge_size": 4}, "spatial_merge_size 4"),
        # llama.cpp's qwen3vl graph fails an assertion when the last text layer takes one
        ({"deepstack_visual_indexes": [0, 1, 2]}, "3 deepstack layers for a 3-layer"),
    ],
)
def test_a_config_llama_cpp_does_not_run_is_refused(
    tmp_path_factory: pytest.TempPathFactory,
    tmp_path: Path,
    change: dict[str, object],
    match: str,
) -> None:
    folder = tmp_path / "hf"
    shutil.copytree(_vlm(tmp_path_factory, "qwen3-vl").folder, folder)
    config = json.loads((folder / "config.json").read_text())
    config["vision_config"].update(change)
    (folder / "config.json").write_text(json.dumps(config))
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(ConfigError, match=match):
        convert(folder, out / "m.gguf", outtype="f16", verify=False)
    assert list(out.iterdir()) == []
