"""Qwen2.5-VL's projector as llorch writes it (convert/families/qwen25vl_vision.py: the ViT and
patch merger as clip `qwen2.5vl_merger`), on the tiny random Qwen2.5-VL (tests/tiny_vlm.py,
family "qwen2.5-vl"):

- the anchor: what llama.cpp's own converter (`convert_hf_to_gguf.py --mmproj`) writes for the
  same checkpoint, F32 and F16 (from BF16 too): every key but the name, every tensor's name,
  type, shape and bytes (q/k/v split, the Conv3D patch embedding as two Conv2D kernels);
- mtmd reads the projector (F32; F16 beside a Q8_0 text part) and gives the reference's image
  embeddings (transformers' tower + merger on the same pixels: a 224 x 224 image, which mtmd
  does not resize, 8 x 8 merged tokens in four windows), row by row, as one chunk of 64
  tokens whose positions are 2-D (8 positions);
- a config mtmd would run wrong (another window size) is refused before anything is written.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import tiny_vlm
from support import THREADS

from llorch.convert import convert
from llorch.convert.errors import ConfigError

pytestmark = pytest.mark.slow

COS_MIN = 0.9999
FAMILY = "qwen2.5-vl"


@pytest.fixture(scope="module")
def vlm(tmp_path_factory: pytest.TempPathFactory) -> tiny_vlm.TinyVlm:
    return tiny_vlm.cached(tmp_path_factory.getbasetemp(), FAMILY)


@pytest.mark.parametrize("outtype", ["f32", "f16", "f16-from-bf16"])
def test_the_projector_is_llama_cpps(vlm: tiny_vlm.TinyVlm, tmp_path: Path, outtype: str) -> None:
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
    fields, tensors = tiny_vlm.assert_same_projector(ours, theirs)
    assert fields["clip.projector_type"] == "qwen2.5vl_merger"
    assert fields["clip.vision.n_wa_pattern"] == 2 and fields["clip.use_silu"] is True
    assert {"v.patch_embd.weight", "v.patch_embd.weight.1", "v.blk.3.attn_k.bias"} <= set(tensors)


def test_mtmd_gives_the_references_embeddings(vlm: tiny_vlm.TinyVlm, tmp_path: Path) -> None:
    reference = tiny_vlm.reference(vlm.folder)
    sizes = {"rows": tiny_vlm.QWEN_VL_IMAGE_TOKENS, "size": tiny_vlm.QWEN_VL_IMAGE_SIZE}
    lowest = tiny_vlm.check_embeddings(vlm.text, vlm.mmproj, reference, COS_MIN, **sizes)
    print(f"COSINE qwen2.5-vl f32 projector: min {lowest:.7f}")
    report = convert(vlm.folder, tmp_path / "tiny-q8_0.gguf", outtype="q8_0", verify=False)
    assert report.mmproj is not None and report.mmproj["projector_type"] == "qwen2.5vl_merger"
    mmproj = Path(report.mmproj["output"])
    lowest = tiny_vlm.check_embeddings(report.output, mmproj, reference, COS_MIN, **sizes)
    print(f"COSINE qwen2.5-vl f16 projector: min {lowest:.7f}")


def test_the_image_is_one_chunk_with_2d_positions(vlm: tiny_vlm.TinyVlm) -> None:
    import llama_cpp as ll

    from llorch.worker.backend.mtmd import Projector, Tile

    model = ll.llama_model_load_from_file(str(vlm.text).encode(), ll.llama_model_default_params())
    projector = Projector(vlm.mmproj, model, threads=THREADS, use_gpu=False)
    try:
        assert projector.mrope
        picture, _ = tiny_vlm.image(0, size=tiny_vlm.QWEN_VL_IMAGE_SIZE)
        items = projector.media_pieces(picture, "image").items
        tiles = [item for item in items if isinstance(item, Tile)]
        assert len(tiles) == 1 and len(items) == 3  # <|vision_start|>, the image, <|vision_end|>
        assert tiles[0].chunk.n_tokens == tiny_vlm.QWEN_VL_IMAGE_TOKENS
        assert tiles[0].chunk.n_pos == 8  # max(8 columns, 8 rows)
    finally:
        projector.close()
        ll.llama_model_free(model)


def test_a_window_mtmd_does_not_run_is_refused(vlm: tiny_vlm.TinyVlm, tmp_path: Path) -> None:
    folder = tmp_path / "hf"
    shutil.copytree(vlm.folder, folder)
    config = json.loads((folder / "config.json").read_text())
    config["vision_config"]["window_size"] = 56
    (folder / "config.json").write_text(json.dumps(config))
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(ConfigError, match="window_size 56"):
        convert(folder, out / "m.gguf", outtype="f16", verify=False)
    assert list(out.iterdir()) == []
