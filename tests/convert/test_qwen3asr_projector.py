"""Qwen3-ASR's audio projector as llorch writes it (convert/families/qwen3asr_audio.py: the
encoder and its projector as clip `qwen3a`), on the tiny random Qwen3-ASR in transformers'
layout (tests/tiny_alm.py `cached_qwen3asr`):

- the anchor: what llama.cpp's own converter (`convert_hf_to_gguf.py --mmproj`) writes for the
  same weights, F32 and F16: every key but the name, every tensor's name, type, shape and bytes
  (the F16 convolution kernels and conv_out, the [1, 1, n] biases). llama.cpp's converter reads
  only the original release's layout (`thinker_config`, `thinker.audio_tower.proj1`), so it is
  given the checkpoint rewritten in that layout (tiny_alm.qwen3asr_thinker_layout). One
  deliberate difference: the generated position table, whose sines llorch computes in float64
  and rounds, may be one unit in the last place from torch's float32;
- `llorch detect` names both parts: the text part's `qwen3` and the `qwen3a` projector;
- mtmd's audio rows from PCM samples against transformers' encoder + projector on
  Qwen3ASRFeatureExtractor's features of the same samples (called as Qwen3ASRProcessor calls
  it), F32 and F16 projectors, for clips whose frames fill their last chunk: one window
  (2.995 s) and two (8.995 s: mtmd encodes 800-frame windows apart, as transformers attends).
  What is left is the front-end's last frame: mtmd keeps the STFT frame centred on the clip's
  end (reflected samples), which the extractor drops (and pads with a zero frame); transformers
  fed the clip with mtmd's reflection comes closer still (measured below);
- a clip whose frames do not fill their last chunk: mtmd gives 13 rows for every chunk, its
  padding's included, and attends over them, where transformers keeps the rows of real frames
  only (recorded below as measured);
- a checkpoint mtmd would run wrong is refused before anything is written.
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
from llorch.convert.errors import ConfigError
from llorch.detector import detect

pytestmark = pytest.mark.slow

COS_MIN = 0.9999
# 4 layers of 16 tensors, 3 convolutions and their biases, conv_out, ln_post (2), the
# projector's 2 maps and biases, the position table
N_TENSORS = 4 * 16 + 6 + 1 + 2 + 4 + 1
SAMPLES_FULL = (47920, 143920)  # 299 and 899 frames for the extractor, 300 and 900 for mtmd


@pytest.fixture(scope="module")
def alm(tmp_path_factory: pytest.TempPathFactory) -> tiny_alm.TinyAlm:
    return tiny_alm.cached_qwen3asr(tmp_path_factory.getbasetemp())


def _source() -> Path:
    source = tiny_vlm.vendored_llama_cpp()
    if source is None:
        pytest.skip("no vendored llama.cpp source (the llama-cpp-python sdist) for its converter")
    return source


def _positions(name: str) -> bool:
    return name == "a.position_embd.weight"


@pytest.mark.parametrize("outtype", ["f32", "f16"])
def test_the_projector_is_llama_cpps(alm: tiny_alm.TinyAlm, tmp_path: Path, outtype: str) -> None:
    source = _source()
    if outtype == "f32":
        ours = alm.mmproj
    else:
        report = convert(alm.folder, tmp_path / "tiny-f16.gguf", outtype="f16", verify=False)
        assert report.mmproj is not None and report.mmproj["n_tensors"] == N_TENSORS
        ours = Path(report.mmproj["output"])
    thinker = tiny_alm.qwen3asr_thinker_layout(alm.folder, tmp_path / "thinker")
    theirs = tiny_vlm.convert_projector(thinker, tmp_path / "theirs.gguf", source, outtype)
    fields, tensors = tiny_vlm.assert_same_projector(ours, theirs, one_ulp=_positions)
    assert fields["clip.audio.projector_type"] == "qwen3a" and "clip.projector_type" not in fields
    assert fields["clip.has_audio_encoder"] is True and "clip.has_vision_encoder" not in fields
    assert fields["clip.audio.num_mel_bins"] == 128
    assert fields["clip.audio.projection_dim"] == 64
    assert len(tensors) == N_TENSORS
    f16, f32 = gguf.GGMLQuantizationType.F16, gguf.GGMLQuantizationType.F32
    for name in ("a.conv2d.1.weight", "a.conv2d.3.weight", "a.conv_out.weight"):
        assert tensors[name].tensor_type == f16, name
    assert list(tensors["a.conv2d.1.bias"].shape) == [1, 1, 8]
    assert tensors["a.position_embd.weight"].tensor_type == f32
    assert list(tensors["a.position_embd.weight"].shape) == [32, 1500]


def test_the_position_table_is_transformers(alm: tiny_alm.TinyAlm) -> None:
    from transformers.models.qwen3_asr.modeling_qwen3_asr import SinusoidsPositionEmbedding

    (table,) = [t for t in gguf.GGUFReader(alm.mmproj).tensors if _positions(t.name)]
    ours = np.asarray(table.data)
    theirs = SinusoidsPositionEmbedding(1500, 32).positional_embedding.numpy()
    ulps = np.abs(ours.view(np.int32).astype(np.int64) - theirs.view(np.int32))
    assert ulps.max() <= 1


def test_detect_names_the_text_part_and_the_projector(alm: tiny_alm.TinyAlm) -> None:
    found = detect(alm.folder).to_json()
    assert found["hf_architecture"] == "Qwen3ASRForConditionalGeneration"
    assert found["llama_arch"] == found["family"] == "qwen3"
    assert found["projector"] == "qwen3a" and found["supported"] is True
    assert detect(alm.mmproj).to_json()["projector"] == "qwen3a"
    assert detect(alm.mmproj).llama_arch == "clip"


def _with_mtmds_end(folder: Path, samples: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """The extractor's features of `samples` with the frame mtmd adds: the clip extended by
    mtmd's reflection of its end (so the last frame sees what mtmd's does), one frame more
    kept (n // 160 + 1, mtmd's count)."""
    n = len(samples)
    extended = np.concatenate([samples, samples[n - 2 :: -1][:200]])
    features, mask = tiny_alm.qwen3asr_features(folder, extended)
    frames = n // 160 + 1
    mask = torch.zeros_like(mask)
    mask[:, :frames] = 1
    return features, mask


def test_mtmd_reads_the_projector_as_transformers(alm: tiny_alm.TinyAlm, tmp_path: Path) -> None:
    report = convert(alm.folder, tmp_path / "tiny-q8_0.gguf", outtype="q8_0", verify=False)
    assert report.mmproj is not None and report.mmproj["outtype"] == "f16"
    reference = tiny_alm.qwen3asr_reference(alm.folder)
    files = {
        "f32": (alm.text, alm.mmproj),
        "f16": (report.output, Path(report.mmproj["output"])),
    }
    for seed, n in enumerate(SAMPLES_FULL):
        samples = tiny_alm.pcm(seed, n / tiny_alm.SAMPLE_RATE)
        features, mask = tiny_alm.qwen3asr_features(alm.folder, samples)
        ref = tiny_alm.qwen3asr_embeddings(reference, features, mask)
        rows = (n // 160 + 1) // tiny_alm.QWEN3ASR_FRAMES * tiny_alm.QWEN3ASR_CHUNK_ROWS
        assert int(mask.sum()) == n // 160 and len(ref) == rows
        mtmds_end = tiny_alm.qwen3asr_embeddings(reference, *_with_mtmds_end(alm.folder, samples))
        for kind, (text, mmproj) in files.items():
            got = tiny_alm.mtmd_embeddings(text, mmproj, samples, tmp_path / f"{kind}-{seed}")
            assert got.shape == ref.shape == mtmds_end.shape == (rows, 64)
            lowest = float(tiny_vlm.cosines(got, ref).min())
            closer = float(tiny_vlm.cosines(got, mtmds_end).min())
            print(
                f"COSINE qwen3a {kind} projector, {n} samples: min {lowest:.7f} "
                f"(mtmd's last frame: {closer:.7f})"
            )
            assert lowest >= COS_MIN, (kind, n, lowest)
            assert closer > lowest  # the last frame is what differs most


def test_mtmd_keeps_the_rows_of_a_chunks_padding(alm: tiny_alm.TinyAlm, tmp_path: Path) -> None:
    """2.5 s: the extractor's 250 frames are chunks of 100, 100 and 50, which transformers
    turns into 13 + 13 + 7 rows; mtmd pads its 251 frames to 300 and makes 39 rows, and the
    rows of the real frames differ (its attention reads the padding's rows too)."""
    samples = tiny_alm.pcm(2, 2.5)
    reference = tiny_alm.qwen3asr_reference(alm.folder)
    ref = tiny_alm.qwen3asr_embeddings(reference, *tiny_alm.qwen3asr_features(alm.folder, samples))
    got = tiny_alm.mtmd_embeddings(alm.text, alm.mmproj, samples, tmp_path)
    assert (len(ref), len(got)) == (33, 39)
    lowest = float(tiny_vlm.cosines(got[:33], ref).min())
    print(f"COSINE qwen3a f32 projector, 2.5 s: first 33 of mtmd's 39 rows: min {lowest:.7f}")
    assert lowest < 0.99999


@pytest.mark.parametrize(
    ("where", "key", "value", "match"),
    [
        ("config.json", "audio_config.n_window", 25, "n_window"),
        ("config.json", "audio_config.n_window_infer", 400, "n_window_infer"),
        ("config.json", "audio_config.activation_function", "relu", "activation_function"),
        ("preprocessor_config.json", "sampling_rate", 24000, "sampling_rate"),
        ("preprocessor_config.json", "feature_size", 80, "feature_size"),
        ("preprocessor_config.json", "hop_length", 200, "hop_length"),
    ],
)
def test_a_checkpoint_mtmd_would_run_wrong_is_refused_before_writing(
    alm: tiny_alm.TinyAlm, tmp_path: Path, where: str, key: str, value: object, match: str
) -> None:
    folder = tmp_path / "hf"
    shutil.copytree(alm.folder, folder)
    config = json.loads((folder / where).read_text())
    *parents, leaf = key.split(".")
    section = config
    for part in parents:
        section = section[part]
    section[leaf] = value
    (folder / where).write_text(json.dumps(config))
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(ConfigError, match=match):
        convert(folder, out / "m.gguf", outtype="f16", verify=False)
    assert list(out.iterdir()) == []
