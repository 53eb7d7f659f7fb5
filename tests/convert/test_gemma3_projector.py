"""Gemma 3's projector as llorch writes it (convert/projector.py, convert/families/
gemma3_vision.py), on the tiny random Gemma 3 vision model (tests/tiny_vlm.py):

- the anchor: the same file as llama.cpp's own converter (`convert_hf_to_gguf.py --mmproj`)
  writes for the same checkpoint, F32 and F16: every key but the name, every tensor's name,
  type, shape and bytes;
- mtmd reads the F16 projector written beside a Q8_0 text part and gives the reference's image
  embeddings (transformers' vision tower + projector on the same pixels), row by row;
- `llorch detect` names both parts; `--no-mmproj` writes the text part only; a projector that
  would be overwritten, or a vision tensor without a GGUF name, stops the conversion before
  anything is written.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import gguf
import numpy as np
import pytest
import tiny_vlm

from llorch.cli import main
from llorch.convert import convert
from llorch.convert.errors import OutputExistsError, UnmappedTensorError

pytestmark = pytest.mark.slow

COS_MIN = 0.9999


@pytest.fixture(scope="module")
def vlm(tmp_path_factory: pytest.TempPathFactory) -> tiny_vlm.TinyVlm:
    return tiny_vlm.cached(tmp_path_factory.getbasetemp())


@pytest.mark.parametrize(("outtype", "stored"), [("f32", "F32"), ("f16", "F32"), ("f16", "BF16")])
def test_the_projector_is_llama_cpps(
    vlm: tiny_vlm.TinyVlm, tmp_path: Path, outtype: str, stored: str
) -> None:
    source = tiny_vlm.vendored_llama_cpp()
    if source is None:
        pytest.skip("no vendored llama.cpp source (the llama-cpp-python sdist) for its converter")
    folder = (
        vlm.folder if stored == "F32" else tiny_vlm.bf16_copy(vlm.folder, tmp_path / "bf16" / "hf")
    )
    if outtype == "f32":
        ours = vlm.mmproj
    else:
        report = convert(folder, tmp_path / "tiny-f16.gguf", outtype="f16", verify=False)
        assert report.mmproj is not None and report.mmproj["outtype"] == "f16"
        ours = Path(report.mmproj["output"])
    assert ours.name.endswith(f"-mmproj-{outtype}.gguf")
    theirs = tiny_vlm.convert_projector(folder, tmp_path / "theirs.gguf", source, outtype)
    fa, ta = tiny_vlm.assert_same_projector(ours, theirs)
    assert fa["general.architecture"] == "clip" and fa["clip.projector_type"] == "gemma3"
    assert len(ta) == 23  # 1 block of 12, embeddings 3, post-norm 2, tinygemma3's head left out
    # the types llama.cpp chose: the input projection always F16, the embeddings F32
    assert ta["mm.input_projection.weight"].tensor_type == gguf.GGMLQuantizationType.F16
    assert ta["v.patch_embd.weight"].tensor_type == gguf.GGMLQuantizationType.F32
    want = gguf.GGMLQuantizationType[outtype.upper()]
    assert ta["v.blk.0.attn_q.weight"].tensor_type == want


def test_mtmd_reads_the_f16_projector_beside_a_q8_0_text_part_as_the_reference(
    vlm: tiny_vlm.TinyVlm, tmp_path: Path
) -> None:
    report = convert(vlm.folder, tmp_path / "tiny-q8_0.gguf", outtype="q8_0", verify=False)
    assert report.mmproj is not None
    mmproj = Path(report.mmproj["output"])
    assert mmproj == tmp_path / "tiny-q8_0-mmproj-f16.gguf"
    assert report.mmproj["projector_type"] == "gemma3" and report.mmproj["n_tensors"] == 23
    header = tiny_vlm.header_fields(gguf.GGUFReader(mmproj))
    assert header["general.file_type"] == gguf.LlamaFileType.MOSTLY_F16
    tiny_vlm.check_embeddings(report.output, mmproj, tiny_vlm.reference(vlm.folder), COS_MIN)


def test_detect_names_the_text_part_and_the_projector(
    vlm: tiny_vlm.TinyVlm, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["detect", str(vlm.folder)]) == 0
    found = json.loads(capsys.readouterr().out)
    assert (found["llama_arch"], found["projector"]) == ("gemma3", "gemma3")
    assert main(["detect", str(vlm.mmproj)]) == 0
    found = json.loads(capsys.readouterr().out)
    assert (found["llama_arch"], found["projector"]) == ("clip", "gemma3")
    assert main(["detect", str(vlm.text)]) == 0
    assert json.loads(capsys.readouterr().out)["projector"] is None


def test_no_mmproj_writes_the_text_part_only(
    vlm: tiny_vlm.TinyVlm, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "text.gguf"
    assert (
        main(["convert", str(vlm.folder), "-o", str(out), "--outtype", "f32", "--no-mmproj"]) == 0
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["text.gguf"]
    # the tower's 32 tensors and the projector's 2
    note = "note: text part only: 34 tensors of the vision/audio parts left out (--no-mmproj)"
    assert note in capsys.readouterr().out


def test_an_existing_projector_stops_the_conversion_first(
    vlm: tiny_vlm.TinyVlm, tmp_path: Path
) -> None:
    (tmp_path / "m-mmproj-f16.gguf").write_bytes(b"mine")
    with pytest.raises(OutputExistsError, match=r"m-mmproj-f16\.gguf"):
        convert(vlm.folder, tmp_path / "m.gguf", outtype="f16", verify=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m-mmproj-f16.gguf"]
    assert (tmp_path / "m-mmproj-f16.gguf").read_bytes() == b"mine"


def test_a_vision_tensor_without_a_gguf_name_is_refused_before_writing(
    vlm: tiny_vlm.TinyVlm, tmp_path: Path
) -> None:
    from safetensors.numpy import load_file, save_file

    folder = tmp_path / "hf"
    shutil.copytree(vlm.folder, folder)
    tensors = load_file(folder / "model.safetensors")
    tensors["vision_tower.vision_model.encoder.layers.0.mystery.weight"] = np.zeros(
        (4, 4), np.float32
    )
    save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(UnmappedTensorError, match="mystery"):
        convert(folder, out / "m.gguf", outtype="f16", verify=False)
    assert list(out.iterdir()) == []


def test_the_conversion_cache_gives_the_text_part_and_keeps_the_projector(
    vlm: tiny_vlm.TinyVlm, tmp_path: Path
) -> None:
    """The projector's name sorts before the text part's (`-mmproj` < `.gguf`): the cache,
    which serves an HF folder through its one GGUF, must not take it for the model."""
    from llorch.convert.cache import cached_gguf

    for _ in range(2):  # converted, then found
        got = cached_gguf(vlm.folder, outtype="f16", cache_dir=tmp_path, verify=False)
        assert gguf.GGUFReader(got).get_field("general.architecture").contents() == "gemma3"
    (projector,) = tmp_path.glob("*/*-mmproj-f16.gguf")
    assert projector.parent == got.parent


def test_convert_batch_carries_the_projector_with_its_provenance(
    vlm: tiny_vlm.TinyVlm, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The projector is the job's `mmproj` output: F16 beside an F16 base and a Q8_0 made
    from it, the same tensors as `convert` writes, the provenance keys in its GGUF and its
    sidecar; a rerun skips it, and only it is redone when it is gone. The model card's facts
    are the text part's."""
    from llorch.convert.batch import convert_batch, plan_from_dirs
    from llorch.convert.batch import provenance as prov
    from llorch.convert.batch.push import model_card

    monkeypatch.setenv("LLORCH_CACHE", str(tmp_path / "cache" / "gguf"))  # its digest memo
    out = tmp_path / "out"
    plan = plan_from_dirs([vlm.folder], outtypes=("f16", "q8_0"))
    report = convert_batch(plan, out)
    assert report.ok, report.failed
    (job,) = report.jobs
    assert sorted(o["outtype"] for o in job.outputs) == ["f16", "mmproj", "q8_0"]
    (mmproj,) = out.glob("*-mmproj-f16.gguf")
    (text,) = out.glob("*-F16.gguf")
    assert mmproj.name == text.name.removesuffix("-F16.gguf") + "-mmproj-f16.gguf"
    record = json.loads(prov.sidecar_path(mmproj).read_text())
    assert (record["outtype"], record["from"], record["file"]) == ("mmproj", None, mmproj.name)
    assert record["projector_type"] == "gemma3" and record["bytes"] == mmproj.stat().st_size
    assert "preprocessor_config.json" in record["source_files"]
    # the text part's notes do not call the projector left out: it is the job's own output
    text_record = json.loads(prov.sidecar_path(text).read_text())
    assert not [n for n in text_record["verification"]["notes"] if "left out" in n]
    reader = gguf.GGUFReader(mmproj)
    fields = tiny_vlm.header_fields(reader)
    assert fields["general.architecture"] == "clip"
    names, digests = reader.get_field(prov.KEY_FILES), reader.get_field(prov.KEY_SHA256)
    assert names is not None and digests is not None
    files = dict(zip(names.contents(), digests.contents(), strict=True))
    assert files == record["source_files"]
    single = convert(vlm.folder, tmp_path / "one.gguf", outtype="f16", verify=False)
    assert single.mmproj is not None
    alone = {
        t.name: np.asarray(t.data).tobytes()
        for t in gguf.GGUFReader(single.mmproj["output"]).tensors
    }
    assert {t.name: np.asarray(t.data).tobytes() for t in reader.tensors} == alone
    card = model_card("acme/tiny-vlm", list(prov.read_sidecars(out).values()), out)
    assert "`general.architecture`: gemma3" in card and mmproj.name in card
    # the last text output (the projector's sidecar sorts last: `mmproj` after `Q8_0`)
    assert "llama-server -hf acme/tiny-vlm:Q8_0" in card

    again = convert_batch(plan, out)
    assert all(o["skipped"] for o in again.jobs[0].outputs) and len(again.jobs[0].outputs) == 3
    mmproj.unlink()
    redone = convert_batch(plan, out)
    made = [o["outtype"] for o in redone.jobs[0].outputs if not o["skipped"]]
    assert made == ["mmproj"] and mmproj.is_file()


def test_the_transformers_5_layout_gives_the_same_projector(
    vlm: tiny_vlm.TinyVlm, tmp_path: Path
) -> None:
    """transformers 5 saves the tower as `vision_tower.*`; tests/tiny_vlm.py renames it to the
    released checkpoints' `vision_tower.vision_model.*`."""
    from safetensors.numpy import load_file, save_file

    folder = tmp_path / "hf"
    shutil.copytree(vlm.folder, folder)
    released = "vision_tower.vision_model."
    tensors = load_file(folder / "model.safetensors")
    moved = {
        "vision_tower." + k.removeprefix(released) if k.startswith(released) else k: v
        for k, v in tensors.items()
    }
    assert len(moved) == len(tensors) and not any(k.startswith(released) for k in moved)
    save_file(moved, folder / "model.safetensors", metadata={"format": "pt"})
    report = convert(folder, tmp_path / "m.gguf", outtype="f32", verify=False)
    assert report.mmproj is not None

    def tensors_of(path: Path | str) -> dict[str, bytes]:
        return {t.name: np.asarray(t.data).tobytes() for t in gguf.GGUFReader(path).tensors}

    assert tensors_of(report.mmproj["output"]) == tensors_of(vlm.mmproj)
