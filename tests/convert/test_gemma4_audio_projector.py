"""Gemma 4's projector with an audio tower (E2B / E4B's layout) as llorch writes it: one file of
two towers (convert/projector.py), the vision tower as clip `gemma4v`
(convert/families/gemma4_vision.py) and the conformer audio tower and its embedder as clip
`gemma4a` (convert/families/gemma4_audio.py), on the tiny random Gemma 4 with an audio tower
(tests/tiny_vlm.py family "gemma4-audio": 128 mel bins, clipped linears with finite bounds,
random per-dimension query scales):

- the anchor: what llama.cpp's own converter (`convert_hf_to_gguf.py --mmproj`) writes for the
  same checkpoint, F32 and F16: every key but the name, every tensor's name, type, shape and
  bytes (the subsampler and depthwise kernels F32, the depthwise kernels reshaped, the clamp
  bounds 1-D). Two deliberate differences: `clip.use_gelu` (gemma4_vision.py: without it mtmd
  runs the vision MLP as GELU-quick), and the per-dimension query scales, stored through
  softplus, which llorch computes in float64 and rounds (torch's float32 softplus, in
  llama.cpp's converter, is up to one unit in the last place away);
- mtmd's audio embeddings from the F32 projector (beside the F32 text part) and the F16 one
  (beside Q8_0), from float PCM samples, against transformers' audio tower + embedder on
  Gemma 4's feature extractor's features of the same samples: the same number of rows, each
  with a cosine >= 0.9999. What is left between them is mostly the front-end: mtmd floors the
  mel energies (log(max(mel, 1e-3))) where the extractor adds the floor (log(mel + 1e-3));
  fed features floored mtmd's way, transformers' rows come closer still (measured below);
- the vision tower in the same file still gives transformers' image embeddings;
- the report, the notes (nothing left out) and `llorch detect` of the file and of the folder
  name both projector types;
- an audio setting mtmd's graph does not compute is refused before anything is written.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import gguf
import numpy as np
import pytest
import tiny_alm
import tiny_vlm
import torch

from llorch.convert import convert
from llorch.convert.errors import ConfigError, ShapeMismatchError
from llorch.detector import detect

pytestmark = pytest.mark.slow

COS_MIN = 0.9999
OURS_KEYS = {"clip.use_gelu": True}
# vision: 2 blocks of 13 weights and 28 clamp bounds, 5 more; audio: 1 block of 22 weights
# (1-D included) and 40 clamp bounds (10 clippable linears), 2 subsampling convolutions and
# their norms, the input projection, the output projection and its bias, the embedder's
N_TENSORS = 2 * (13 + 28) + 5 + (22 + 40) + 4 + 1 + 2 + 1
MEL_FLOOR = 1e-3


@pytest.fixture(scope="module")
def alm(tmp_path_factory: pytest.TempPathFactory) -> tiny_alm.TinyAlm:
    return tiny_alm.cached_gemma4(tmp_path_factory.getbasetemp())


def _source() -> Path:
    source = tiny_vlm.vendored_llama_cpp()
    if source is None:
        pytest.skip("no vendored llama.cpp source (the llama-cpp-python sdist) for its converter")
    return source


def _per_dim_scale(name: str) -> bool:
    return name.endswith(".per_dim_scale.weight")


@pytest.mark.parametrize("outtype", ["f32", "f16"])
def test_the_projector_is_llama_cpps(alm: tiny_alm.TinyAlm, tmp_path: Path, outtype: str) -> None:
    source = _source()
    if outtype == "f32":
        ours = alm.mmproj
    else:
        report = convert(alm.folder, tmp_path / "tiny-f16.gguf", outtype="f16", verify=False)
        assert report.mmproj is not None and report.mmproj["outtype"] == "f16"
        ours = Path(report.mmproj["output"])
    theirs = tiny_vlm.convert_projector(alm.folder, tmp_path / "theirs.gguf", source, outtype)
    fa, ta = tiny_vlm.assert_same_projector(
        ours, theirs, ours_keys=OURS_KEYS, one_ulp=_per_dim_scale
    )
    assert fa["clip.vision.projector_type"] == "gemma4v"
    assert fa["clip.audio.projector_type"] == "gemma4a" and "clip.projector_type" not in fa
    assert fa["clip.has_vision_encoder"] is True and fa["clip.has_audio_encoder"] is True
    assert fa["clip.audio.num_mel_bins"] == 128 and fa["clip.audio.feed_forward_length"] == 128
    assert len(ta) == N_TENSORS
    f32, want = gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType[outtype.upper()]
    assert list(ta["a.blk.0.conv_dw.weight"].shape) == [5, 32]  # (channels, width) in numpy
    for name in ("a.blk.0.conv_dw.weight", "a.conv1d.1.weight", "a.input_projection.weight"):
        assert ta[name].tensor_type == f32, name
    assert ta["a.blk.0.attn_q.input_max"].tensor_type == f32
    assert list(ta["a.blk.0.attn_q.input_max"].shape) == [1]
    assert ta["a.blk.0.attn_q.weight"].tensor_type == want
    assert ta["mm.a.input_projection.weight"].tensor_type == want
    # the scales as stored: their softplus, not the checkpoint's values
    scale = np.asarray(ta["a.blk.0.per_dim_scale.weight"].data)
    assert scale.min() > 0 and not np.allclose(scale, np.log(2.0))


def _samples() -> list[tuple[np.ndarray, int]]:
    """Two random sounds and the rows each makes: one of a multiple of 128 samples, one the
    feature extractor pads (and masks) to one."""
    lengths = tiny_alm.GEMMA4_SECONDS.items()
    return [(tiny_alm.pcm(seed, seconds), rows) for seed, (seconds, rows) in enumerate(lengths)]


def _check_audio(text: Path, mmproj: Path, reference: object, work: Path) -> tuple[float, float]:
    """The lowest cosine of mtmd's rows against transformers' on the extractor's features,
    and against transformers' on features floored as mtmd floors them."""
    lowest = floored = 1.0
    for i, (samples, rows) in enumerate(_samples()):
        got = tiny_alm.mtmd_embeddings(text, mmproj, samples, work / str(i))
        features, mask = tiny_alm.gemma4_features(samples)
        ref = tiny_alm.gemma4_reference(reference, features, mask)
        assert got.shape == ref.shape == (rows, 64)
        lowest = min(lowest, float(tiny_vlm.cosines(got, ref).min()))
        mel = torch.exp(features.double()) - MEL_FLOOR
        as_mtmd = torch.log(torch.clamp(mel, min=MEL_FLOOR)).float()
        ref_floored = tiny_alm.gemma4_reference(reference, as_mtmd, mask)
        floored = min(floored, float(tiny_vlm.cosines(got, ref_floored).min()))
    assert lowest >= COS_MIN, lowest
    assert floored > lowest  # the front-ends' floors are what differs most
    return lowest, floored


def test_mtmd_reads_the_audio_tower_as_the_reference(alm: tiny_alm.TinyAlm, tmp_path: Path) -> None:
    report = convert(alm.folder, tmp_path / "tiny-q8_0.gguf", outtype="q8_0", verify=False)
    assert report.mmproj is not None and report.mmproj["outtype"] == "f16"
    reference = tiny_vlm.reference(alm.folder)
    f16 = _check_audio(report.output, Path(report.mmproj["output"]), reference, tmp_path / "a")
    print(f"COSINE gemma4a f16 projector: min {f16[0]:.7f} (mtmd's mel floor: {f16[1]:.7f})")
    f32 = _check_audio(alm.text, alm.mmproj, reference, tmp_path / "b")
    print(f"COSINE gemma4a f32 projector: min {f32[0]:.7f} (mtmd's mel floor: {f32[1]:.7f})")


def test_the_vision_tower_beside_it_reads_as_the_reference(alm: tiny_alm.TinyAlm) -> None:
    reference = tiny_vlm.reference(alm.folder)
    lowest = tiny_vlm.check_embeddings(
        alm.text,
        alm.mmproj,
        reference,
        COS_MIN,
        rows=tiny_vlm.GEMMA4_IMAGE_TOKENS,
        size=tiny_vlm.GEMMA4_IMAGE_SIZE,
    )
    print(f"COSINE gemma4v beside gemma4a, f32 projector: min {lowest:.7f}")


def test_the_report_and_detect_name_both_towers(alm: tiny_alm.TinyAlm, tmp_path: Path) -> None:
    report = convert(alm.folder, tmp_path / "m.gguf", outtype="f16", verify=False)
    assert report.mmproj is not None
    assert report.mmproj["projector_type"] == "gemma4v, gemma4a"
    assert report.mmproj["n_tensors"] == N_TENSORS
    assert not [n for n in report.notes if "left out" in n]
    assert detect(str(alm.mmproj)).projector == "gemma4v, gemma4a"
    assert detect(str(alm.folder)).projector == "gemma4v, gemma4a"


@pytest.mark.parametrize(
    ("key", "value", "error", "match"),
    [
        ("attention_chunk_size", 8, ConfigError, "attention_chunk_size"),
        ("hidden_act", "gelu", ConfigError, "hidden_act"),
        # 64 mel bins: 16 frequencies x 4 channels where the subsampler's projection reads 128
        ("input_feat_size", 64, ShapeMismatchError, "input_proj_linear"),
    ],
)
def test_a_setting_the_graph_does_not_compute_is_refused_before_writing(
    alm: tiny_alm.TinyAlm, tmp_path: Path, key: str, value: object, error: type, match: str
) -> None:
    folder = tmp_path / "hf"
    shutil.copytree(alm.folder, folder)
    config = json.loads((folder / "config.json").read_text())
    config["audio_config"][key] = value
    (folder / "config.json").write_text(json.dumps(config))
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(error, match=match):
        convert(folder, out / "m.gguf", outtype="f16", verify=False)
    assert list(out.iterdir()) == []
