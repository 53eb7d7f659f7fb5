"""SmolVLM's and Idefics3's projector as llorch writes it (convert/projector.py, convert/
families/idefics3_vision.py), on the tiny random SmolVLM (tests/tiny_vlm.py, family "smolvlm"):

- the anchor: the same file as llama.cpp's own converter (`convert_hf_to_gguf.py --mmproj`)
  writes for the same checkpoint, F32 and F16 (from F32 and from BF16 weights): every key but
  the name, every tensor's name, type, shape and bytes;
- mtmd reads the F16 projector written beside a Q8_0 text part and gives the reference's image
  embeddings (transformers' vision tower + connector on the same pixels) for each chunk it
  makes of an image (its tile and its overview), row by row; the image's markup (SmolVLM's
  `<fake_token_around_image>`, `<row_1_col_1>`, `<global-img>`) is found in the vocabulary;
- an Idefics3ForConditionalGeneration checkpoint gives the same projector; `llorch detect`
  names both parts; a connector whose shape config.json's scale_factor does not give is refused.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import gguf
import numpy as np
import pytest
import tiny_vlm
from support import THREADS

from llorch.cli import main
from llorch.convert import convert
from llorch.convert.errors import ShapeMismatchError

pytestmark = pytest.mark.slow

COS_MIN = 0.9999
N_TENSORS = 22  # 1 block of 12, embeddings 3 (the patch bias too), post-norm 2, connector 1


@pytest.fixture(scope="module")
def vlm(tmp_path_factory: pytest.TempPathFactory) -> tiny_vlm.TinyVlm:
    return tiny_vlm.cached(tmp_path_factory.getbasetemp(), "smolvlm")


def _tensors(path: Path | str) -> dict[str, bytes]:
    return {t.name: np.asarray(t.data).tobytes() for t in gguf.GGUFReader(path).tensors}


@pytest.mark.parametrize(("outtype", "stored"), [("f32", "F32"), ("f16", "BF16")])
def test_the_projector_is_llama_cpps(
    vlm: tiny_vlm.TinyVlm, tmp_path: Path, outtype: str, stored: str
) -> None:
    source = tiny_vlm.vendored_llama_cpp()
    if source is None:
        pytest.skip("no vendored llama.cpp source (the llama-cpp-python sdist) for its converter")
    folder = vlm.folder if stored == "F32" else tiny_vlm.bf16_copy(vlm.folder, tmp_path / "hf")
    if outtype == "f32":
        ours = vlm.mmproj
    else:
        report = convert(folder, tmp_path / "tiny-f16.gguf", outtype="f16", verify=False)
        assert report.mmproj is not None and report.mmproj["outtype"] == "f16"
        ours = Path(report.mmproj["output"])
    theirs = tiny_vlm.convert_projector(folder, tmp_path / "theirs.gguf", source, outtype)
    fa, ta = tiny_vlm.assert_same_projector(ours, theirs)
    assert fa["general.architecture"] == "clip" and fa["clip.projector_type"] == "idefics3"
    assert fa["clip.vision.projector.scale_factor"] == 2
    assert fa["clip.vision.preproc_image_size"] == tiny_vlm.IMAGE_SIZE
    assert len(ta) == N_TENSORS
    # the types llama.cpp chose: the embeddings F32, the connector as the file
    assert ta["v.patch_embd.weight"].tensor_type == gguf.GGMLQuantizationType.F32
    assert ta["v.position_embd.weight"].tensor_type == gguf.GGMLQuantizationType.F32
    want = gguf.GGMLQuantizationType[outtype.upper()]
    assert ta["mm.model.fc.weight"].tensor_type == want
    assert ta["v.blk.0.attn_q.weight"].tensor_type == want


def test_mtmd_reads_the_f16_projector_beside_a_q8_0_text_part_as_the_reference(
    vlm: tiny_vlm.TinyVlm, tmp_path: Path
) -> None:
    report = convert(vlm.folder, tmp_path / "tiny-q8_0.gguf", outtype="q8_0", verify=False)
    assert report.mmproj is not None
    mmproj = Path(report.mmproj["output"])
    assert mmproj == tmp_path / "tiny-q8_0-mmproj-f16.gguf"
    assert report.mmproj["projector_type"] == "idefics3"
    assert report.mmproj["n_tensors"] == N_TENSORS
    reference = tiny_vlm.reference(vlm.folder)
    lowest = tiny_vlm.check_embeddings(report.output, mmproj, reference, COS_MIN, chunks=2)
    print(f"COSINE smolvlm f16 projector: min {lowest:.7f}")


def test_mtmd_reads_the_f32_projector_as_the_reference_and_finds_the_markup(
    vlm: tiny_vlm.TinyVlm,
) -> None:
    import ctypes

    import llama_cpp as ll

    from llorch.worker.backend.mtmd import Projector, Tile

    reference = tiny_vlm.reference(vlm.folder)
    lowest = tiny_vlm.check_embeddings(vlm.text, vlm.mmproj, reference, COS_MIN, chunks=2)
    print(f"COSINE smolvlm f32 projector: min {lowest:.7f}")
    model = ll.llama_model_load_from_file(str(vlm.text).encode(), ll.llama_model_default_params())
    assert model
    projector = Projector(vlm.mmproj, model, threads=THREADS, use_gpu=False)
    try:
        items = projector.media_pieces(tiny_vlm.image(0)[0], "image").items
        vocab = ll.llama_model_get_vocab(model)

        def text(ids: tuple[int, ...]) -> str:
            out = b""
            for token in ids:
                buf = (ctypes.c_char * 64)()
                n = ll.llama_token_to_piece(vocab, token, buf, 64, 0, True)
                out += buf.raw[:n]
            return out.decode()

        shape = [text(item) if isinstance(item, tuple) else len(item.ids) for item in items]
    finally:
        projector.close()
        ll.llama_model_free(model)
    tokens = tiny_vlm.IMAGE_TOKENS
    # the tile, then the overview, as SmolVLM's processor lays out an image cut into tiles
    assert shape == [
        "<fake_token_around_image><row_1_col_1>",
        tokens,
        "\n\n<fake_token_around_image><global-img>",
        tokens,
        "<fake_token_around_image>",
    ]
    assert isinstance(items[1], Tile)


def test_an_idefics3_checkpoint_gives_the_same_projector(
    vlm: tiny_vlm.TinyVlm, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "hf"
    shutil.copytree(vlm.folder, folder)
    config = json.loads((folder / "config.json").read_text())
    config["architectures"] = ["Idefics3ForConditionalGeneration"]
    config["model_type"] = "idefics3"
    config["vision_config"]["model_type"] = "idefics3_vision"
    (folder / "config.json").write_text(json.dumps(config))
    assert main(["detect", str(folder)]) == 0
    found = json.loads(capsys.readouterr().out)
    assert (found["llama_arch"], found["projector"]) == ("llama", "idefics3")
    report = convert(folder, tmp_path / "m.gguf", outtype="f32", verify=False)
    assert report.mmproj is not None
    assert _tensors(report.mmproj["output"]) == _tensors(vlm.mmproj)
    assert _tensors(report.output) == _tensors(vlm.text)
    assert main(["detect", str(vlm.mmproj)]) == 0
    found = json.loads(capsys.readouterr().out)
    assert (found["llama_arch"], found["projector"]) == ("clip", "idefics3")


def test_a_connector_that_does_not_fit_the_scale_factor_is_refused(
    vlm: tiny_vlm.TinyVlm, tmp_path: Path
) -> None:
    folder = tmp_path / "hf"
    shutil.copytree(vlm.folder, folder)
    config = json.loads((folder / "config.json").read_text())
    config["scale_factor"] = 4  # 8 patches a side shuffle by 4, but the connector takes 2 x 2
    (folder / "config.json").write_text(json.dumps(config))
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(ShapeMismatchError, match="modality_projection"):
        convert(folder, out / "m.gguf", outtype="f16", verify=False)
    assert list(out.iterdir()) == []
