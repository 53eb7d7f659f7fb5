"""Qwen3-VL-MoE converted whole (convert/families/qwen3vlmoe.py: its language model as llama.cpp
`qwen3vlmoe`; its tower by convert/families/qwen3vl_vision.py as clip `qwen3vl_merger`), on the
tiny random Qwen3-VL-MoE (tests/tiny_vlm.py, family "qwen3-vl-moe": Qwen3-VL's tower with
deepstack from layers 1 and 2, 4 experts of 48 in each of 3 text layers, stored as released):

- the projector is what llama.cpp's own converter (`convert_hf_to_gguf.py --mmproj`) writes
  for the same checkpoint, F32 and F16 from BF16: every key but the name, every tensor's name,
  type, shape and bytes;
- mtmd reads the projector (F32; F16 beside a Q8_0 text part) and gives the reference's image
  embeddings (transformers' tower + merger + deepstack mergers on the same 128 x 128 pixels):
  every row, and each of its three parts on its own;
- the text part from the released expert layout ([E, D, 2F], [E, F, D]) is the one from
  transformers' own ([E, 2F, D], [E, D, F]; its logits against transformers' are
  tests/convert/test_parity.py's case `qwen3-vl-moe-multimodal-text-part`), tensor for tensor;
  experts in neither layout are refused before anything is written.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import gguf
import numpy as np
import pytest
import tiny_vlm

from llorch.convert import convert
from llorch.convert.errors import ShapeMismatchError

pytestmark = pytest.mark.slow

COS_MIN = 0.9999
FAMILY = "qwen3-vl-moe"


@pytest.fixture(scope="module")
def vlm(tmp_path_factory: pytest.TempPathFactory) -> tiny_vlm.TinyVlm:
    return tiny_vlm.cached(tmp_path_factory.getbasetemp(), FAMILY)


@pytest.mark.parametrize("outtype", ["f32", "f16-from-bf16"])
def test_the_projector_is_llama_cpps(vlm: tiny_vlm.TinyVlm, tmp_path: Path, outtype: str) -> None:
    source = tiny_vlm.vendored_llama_cpp()
    if source is None:
        pytest.skip("no vendored llama.cpp source (the llama-cpp-python sdist) for its converter")
    folder, ours = vlm.folder, vlm.mmproj
    if outtype == "f16-from-bf16":
        folder, outtype = tiny_vlm.bf16_copy(vlm.folder, tmp_path / "hf"), "f16"
        report = convert(folder, tmp_path / "tiny-f16.gguf", outtype="f16", verify=False)
        assert report.mmproj is not None
        ours = Path(report.mmproj["output"])
    theirs = tiny_vlm.convert_projector(folder, tmp_path / "theirs.gguf", source, outtype)
    fields, tensors = tiny_vlm.assert_same_projector(ours, theirs)
    assert fields["clip.projector_type"] == "qwen3vl_merger"
    assert fields["clip.vision.is_deepstack_layers"] == [False, True, True, False]
    assert {name.split(".")[2] for name in tensors if name.startswith("v.deepstack.")} == {"1", "2"}


def test_mtmd_gives_the_references_embeddings(vlm: tiny_vlm.TinyVlm, tmp_path: Path) -> None:
    reference = tiny_vlm.reference(vlm.folder)
    sizes = {"rows": tiny_vlm.QWEN3_VL_IMAGE_TOKENS, "size": tiny_vlm.QWEN3_VL_IMAGE_SIZE}
    text = gguf.GGUFReader(vlm.text)
    assert text.fields["general.architecture"].contents() == "qwen3vlmoe"
    assert text.fields["qwen3vlmoe.n_deepstack_layers"].contents() == 2
    lowest = tiny_vlm.check_embeddings(vlm.text, vlm.mmproj, reference, COS_MIN, **sizes)
    print(f"COSINE qwen3-vl-moe f32 projector: min {lowest:.7f}")
    report = convert(vlm.folder, tmp_path / "tiny-q8_0.gguf", outtype="q8_0", verify=False)
    assert report.mmproj is not None and report.mmproj["projector_type"] == "qwen3vl_merger"
    mmproj = Path(report.mmproj["output"])
    lowest = tiny_vlm.check_embeddings(report.output, mmproj, reference, COS_MIN, **sizes)
    print(f"COSINE qwen3-vl-moe f16 projector: min {lowest:.7f}")


def _transposed_experts(src: Path, dst: Path) -> Path:
    from safetensors.torch import load_file, save_file

    shutil.copytree(src, dst)
    tensors = load_file(dst / "model.safetensors")
    fused = (".mlp.experts.gate_up_proj", ".mlp.experts.down_proj")
    swapped = {k: v.transpose(1, 2).contiguous() if k.endswith(fused) else v
               for k, v in tensors.items()}  # fmt: skip
    save_file(swapped, dst / "model.safetensors", metadata={"format": "pt"})
    return dst


def test_both_expert_layouts_give_one_text_part(vlm: tiny_vlm.TinyVlm, tmp_path: Path) -> None:
    own = _transposed_experts(vlm.folder, tmp_path / "own")
    out = convert(own, tmp_path / "own.gguf", outtype="f32", mmproj=False, verify=False).output
    a, b = gguf.GGUFReader(vlm.text), gguf.GGUFReader(out)
    ta, tb = {t.name: t for t in a.tensors}, {t.name: t for t in b.tensors}
    assert sorted(ta) == sorted(tb) and "blk.2.ffn_gate_exps.weight" in ta
    for name, t in ta.items():
        assert list(t.shape) == list(tb[name].shape), name
        assert np.asarray(t.data).tobytes() == np.asarray(tb[name].data).tobytes(), name
    # [D, F, E] in GGUF order: [E, F, D] stacked
    assert ta["blk.0.ffn_gate_exps.weight"].shape.tolist() == [64, 48, 4]


def test_experts_in_neither_layout_are_refused(vlm: tiny_vlm.TinyVlm, tmp_path: Path) -> None:
    folder = tmp_path / "hf"
    shutil.copytree(vlm.folder, folder)
    config = json.loads((folder / "config.json").read_text())
    config["text_config"]["moe_intermediate_size"] = 40
    (folder / "config.json").write_text(json.dumps(config))
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(ShapeMismatchError, match="experts"):
        convert(folder, out / "m.gguf", outtype="f16", verify=False)
    assert list(out.iterdir()) == []
