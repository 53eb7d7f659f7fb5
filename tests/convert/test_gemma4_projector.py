"""Gemma 4's projector as llorch writes it (convert/families/gemma4_vision.py: the vision tower,
pooler and embedder as clip `gemma4v`), on the tiny random Gemma 4 (tests/tiny_vlm.py, family
"gemma4": clipped linears with finite bounds, standardized soft tokens):

- the anchor: what llama.cpp's own converter (`convert_hf_to_gguf.py --mmproj`) writes for the
  same checkpoint, F32 and F16: every key but the name, every tensor's name, type, shape and
  bytes (the patch kernel reshaped, the scalars as 1-D tensors, the position table F32). One
  key more: `clip.use_gelu`, which llama.cpp's converter leaves out and without which mtmd
  runs GELU-quick instead of Gemma 4's tanh GELU (the cosine below falls to 0.9986);
- mtmd reads the F16 projector beside a Q8_0 text part, and the F32 one beside the F32 text
  part, and gives the reference's image embeddings (transformers' vision tower + embedder on
  the same pixels, 108 x 108: 81 tokens), row by row;
- with an audio tower (E2B / E4B), the projector holds both towers:
  tests/convert/test_gemma4_audio_projector.py;
- the parity case's Gemma 4 (31B's layout, no audio, no preprocessor config: Gemma 4's
  mean 0 and std 1) writes its projector and leaves nothing out;
- a vision setting mtmd's graph does not compute is refused before anything is written.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import gguf
import pytest
import tiny_vlm

from llorch.convert import convert
from llorch.convert.errors import ConfigError
from tests.convert.parity_cases import CASES

pytestmark = pytest.mark.slow

COS_MIN = 0.9999
ROWS, SIZE = tiny_vlm.GEMMA4_IMAGE_TOKENS, tiny_vlm.GEMMA4_IMAGE_SIZE
OURS_KEYS = {"clip.use_gelu": True}
# 2 blocks of 13 weights and 28 clamp bounds, patch and position embeddings, std bias and
# scale, the input projection
N_TENSORS = 2 * (13 + 28) + 5


@pytest.fixture(scope="module")
def vlm(tmp_path_factory: pytest.TempPathFactory) -> tiny_vlm.TinyVlm:
    return tiny_vlm.cached(tmp_path_factory.getbasetemp(), "gemma4")


def _source() -> Path:
    source = tiny_vlm.vendored_llama_cpp()
    if source is None:
        pytest.skip("no vendored llama.cpp source (the llama-cpp-python sdist) for its converter")
    return source


@pytest.mark.parametrize("outtype", ["f32", "f16"])
def test_the_projector_is_llama_cpps(vlm: tiny_vlm.TinyVlm, tmp_path: Path, outtype: str) -> None:
    source = _source()
    if outtype == "f32":
        ours = vlm.mmproj
    else:
        report = convert(vlm.folder, tmp_path / "tiny-f16.gguf", outtype="f16", verify=False)
        assert report.mmproj is not None and report.mmproj["outtype"] == "f16"
        ours = Path(report.mmproj["output"])
    theirs = tiny_vlm.convert_projector(vlm.folder, tmp_path / "theirs.gguf", source, outtype)
    fa, ta = tiny_vlm.assert_same_projector(ours, theirs, ours_keys=OURS_KEYS)
    assert fa["clip.vision.projector_type"] == "gemma4v" and "clip.projector_type" not in fa
    assert len(ta) == N_TENSORS
    f32, want = gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType[outtype.upper()]
    assert ta["v.position_embd.weight"].tensor_type == f32
    assert list(ta["v.position_embd.weight"].shape) == [32, 64, 2]
    assert ta["v.patch_embd.weight"].tensor_type == want
    assert list(ta["v.patch_embd.weight"].shape) == [4, 4, 3, 32]  # a conv kernel
    assert ta["v.blk.0.attn_q.input_max"].tensor_type == f32
    assert list(ta["v.blk.0.attn_q.input_max"].shape) == [1]
    assert ta["mm.input_projection.weight"].tensor_type == want


def test_mtmd_reads_the_projector_as_the_reference(vlm: tiny_vlm.TinyVlm, tmp_path: Path) -> None:
    report = convert(vlm.folder, tmp_path / "tiny-q8_0.gguf", outtype="q8_0", verify=False)
    assert report.mmproj is not None and report.mmproj["projector_type"] == "gemma4v"
    assert report.mmproj["n_tensors"] == N_TENSORS
    mmproj = Path(report.mmproj["output"])
    assert mmproj == tmp_path / "tiny-q8_0-mmproj-f16.gguf"
    reference = tiny_vlm.reference(vlm.folder)
    check = tiny_vlm.check_embeddings
    lowest = check(report.output, mmproj, reference, COS_MIN, rows=ROWS, size=SIZE)
    print(f"COSINE gemma4 f16 projector: min {lowest:.7f}")
    lowest = check(vlm.text, vlm.mmproj, reference, COS_MIN, rows=ROWS, size=SIZE)
    print(f"COSINE gemma4 f32 projector: min {lowest:.7f}")


def test_the_31b_layout_writes_its_projector_and_leaves_nothing_out(
    checkpoint: Any, tmp_path: Path
) -> None:
    case = CASES["gemma4-31b-multimodal-text-part"]
    built = checkpoint(case.model_cls, case.config_cls, case.config, tokenizer=case.tokenizer)
    report = convert(built.folder, tmp_path / "m.gguf", outtype="f32", verify=False)
    assert report.mmproj is not None and report.mmproj["projector_type"] == "gemma4v"
    assert report.mmproj["n_tensors"] == 13 + 3  # one block, patch, positions, projection
    assert not [n for n in report.notes if "left out" in n]
    fields = tiny_vlm.header_fields(gguf.GGUFReader(report.mmproj["output"]))
    assert fields["clip.vision.image_mean"] == [0.0] * 3
    assert fields["clip.vision.image_std"] == [1.0] * 3


@pytest.mark.parametrize(
    ("key", "value", "match"),
    [
        ("num_key_value_heads", 1, "num_key_value_heads"),
        ("rope_parameters", {"rope_type": "axial", "rope_theta": 10000.0}, "rope_theta"),
    ],
)
def test_a_setting_the_graph_does_not_compute_is_refused_before_writing(
    vlm: tiny_vlm.TinyVlm, tmp_path: Path, key: str, value: object, match: str
) -> None:
    folder = tmp_path / "hf"
    shutil.copytree(vlm.folder, folder)
    config = json.loads((folder / "config.json").read_text())
    config["vision_config"][key] = value
    (folder / "config.json").write_text(json.dumps(config))
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(ConfigError, match=match):
        convert(folder, out / "m.gguf", outtype="f16", verify=False)
    assert list(out.iterdir()) == []


def test_detect_names_the_projector_of_the_file_and_of_the_folder(vlm: tiny_vlm.TinyVlm) -> None:
    """Gemma 4's file keeps its type under the vision tower's key (clip.vision.projector_type),
    not the single-tower one the other families' files have."""
    from llorch.detector import detect

    assert detect(str(vlm.mmproj)).projector == "gemma4v"
    assert detect(str(vlm.folder)).projector == "gemma4v"
