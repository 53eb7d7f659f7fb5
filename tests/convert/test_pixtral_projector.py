"""Mistral 3's projector as llorch writes it (convert/families/pixtral_vision.py: the Pixtral
tower and Mistral 3's projector as clip `pixtral`), on the tiny random Mistral 3
(tests/tiny_vlm.py, family "mistral3"):

- the anchor: what llama.cpp's own converter (`convert_hf_to_gguf.py --mmproj`) writes for the
  same checkpoint, F32 and F16: every key but the name, every tensor's name, type, shape and
  bytes (the q/k permutation included). One tensor more: `v.token_embd.img_break`, the
  [IMG_BREAK] row of the token embeddings, which the vendored converter leaves out of an HF
  checkpoint (its MmprojModel drops every `language_model.` tensor before the row is taken)
  and without which mtmd does not load the file;
- mtmd reads the F16 projector beside a Q8_0 text part and gives the reference's image
  embeddings (transformers' tower + projector on the same pixels, with the [IMG_BREAK]
  embedding after each row of merged patches but the last, where mtmd puts it), row by row;
- a checkpoint whose tokenizer has no [IMG_BREAK] is refused before anything is written.
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
IMG_BREAK = "v.token_embd.img_break"
ROWS = 4 * 4 + 3  # 8 x 8 patches merged 2 x 2, an [IMG_BREAK] after 3 of the 4 rows


@pytest.fixture(scope="module")
def vlm(tmp_path_factory: pytest.TempPathFactory) -> tiny_vlm.TinyVlm:
    return tiny_vlm.cached(tmp_path_factory.getbasetemp(), "mistral3")


@pytest.mark.parametrize("outtype", ["f32", "f16"])
def test_the_projector_is_llama_cpps_and_the_img_break_row(
    vlm: tiny_vlm.TinyVlm, tmp_path: Path, outtype: str
) -> None:
    source = tiny_vlm.vendored_llama_cpp()
    if source is None:
        pytest.skip("no vendored llama.cpp source (the llama-cpp-python sdist) for its converter")
    if outtype == "f32":
        ours = vlm.mmproj
    else:
        report = convert(vlm.folder, tmp_path / "tiny-f16.gguf", outtype="f16", verify=False)
        assert report.mmproj is not None
        ours = Path(report.mmproj["output"])
    theirs = tiny_vlm.convert_projector(vlm.folder, tmp_path / "theirs.gguf", source, outtype)
    fa, ta = tiny_vlm.assert_same_projector(ours, theirs, only_ours=frozenset({IMG_BREAK}))
    assert fa["clip.projector_type"] == "pixtral" and fa["clip.use_silu"] is True
    assert fa["clip.vision.spatial_merge_size"] == 2
    reference = tiny_vlm.reference(vlm.folder)
    tokenizer = json.loads((vlm.folder / "tokenizer.json").read_text())
    (index,) = [t["id"] for t in tokenizer["added_tokens"] if t["content"] == "[IMG_BREAK]"]
    row = reference.get_input_embeddings().weight[index].detach().numpy()
    assert ta[IMG_BREAK].tensor_type == gguf.GGMLQuantizationType.F32
    assert bytes(ta[IMG_BREAK].data) == row.tobytes()


def test_mtmd_reads_the_f16_projector_beside_a_q8_0_text_part_as_the_reference(
    vlm: tiny_vlm.TinyVlm, tmp_path: Path
) -> None:
    report = convert(vlm.folder, tmp_path / "tiny-q8_0.gguf", outtype="q8_0", verify=False)
    assert report.mmproj is not None and report.mmproj["projector_type"] == "pixtral"
    mmproj = Path(report.mmproj["output"])
    reference = tiny_vlm.reference(vlm.folder)
    lowest = tiny_vlm.check_embeddings(report.output, mmproj, reference, COS_MIN, rows=ROWS)
    print(f"COSINE mistral3 f16 projector: min {lowest:.7f}")
    lowest = tiny_vlm.check_embeddings(vlm.text, vlm.mmproj, reference, COS_MIN, rows=ROWS)
    print(f"COSINE mistral3 f32 projector: min {lowest:.7f}")


def test_a_tokenizer_without_img_break_is_refused_before_writing(
    vlm: tiny_vlm.TinyVlm, tmp_path: Path
) -> None:
    folder = tmp_path / "hf"
    shutil.copytree(vlm.folder, folder)
    tokenizer = json.loads((folder / "tokenizer.json").read_text())
    for token in tokenizer["added_tokens"]:
        if token["content"] == "[IMG_BREAK]":
            token["content"] = "[IMG_GAP]"
    (folder / "tokenizer.json").write_text(json.dumps(tokenizer))
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(ConfigError, match=r"\[IMG_BREAK\]"):
        convert(folder, out / "m.gguf", outtype="f16", verify=False)
    assert list(out.iterdir()) == []
