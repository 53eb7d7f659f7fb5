"""The detector on HF folders, GGUF files and cached repo ids, and the support table."""

from __future__ import annotations

import importlib
import json
from pathlib import Path
from typing import Any

import gguf
import numpy as np
import pytest
from safetensors.numpy import save_file

from llorch.cli import main
from llorch.detector import (
    SUPPORTED,
    MissingFileError,
    SourceNotFoundError,
    UnsupportedArchitectureError,
    detect,
    lookup,
    supported_names,
)
from llorch.detector.table import row_for_config


def _hf_folder(folder: Path, arch: str = "LlamaForCausalLM", **extra: Any) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    config = {"architectures": [arch], "model_type": "llama", **extra}
    (folder / "config.json").write_text(json.dumps(config))
    tensors = {
        "model.embed_tokens.weight": np.zeros((10, 4), np.float32),
        "model.norm.weight": np.ones((4,), np.float32),
    }
    save_file(tensors, folder / "model.safetensors")
    (folder / "tokenizer.json").write_text("{}")
    return folder


def test_hf_folder(tmp_path: Path) -> None:
    det = detect(_hf_folder(tmp_path / "m"))
    assert det.format == "hf-safetensors"
    assert (det.hf_architecture, det.llama_arch, det.family) == (
        "LlamaForCausalLM",
        "llama",
        "llama",
    )
    assert (det.parameters, det.dtype, det.tokenizer) == (44, "F32", "bpe")
    assert det.supported and det.reason is None


def test_unknown_architecture_is_reported_with_every_supported_name(tmp_path: Path) -> None:
    det = detect(_hf_folder(tmp_path / "m", arch="FooForCausalLM"))
    assert not det.supported
    assert det.reason is not None and "'FooForCausalLM'" in det.reason
    assert all(name in det.reason for name in supported_names())
    with pytest.raises(UnsupportedArchitectureError, match="FooForCausalLM"):
        lookup("FooForCausalLM")


def test_a_layout_not_read_is_refused_by_name(tmp_path: Path) -> None:
    """Qwen3-ASR as first released (a `thinker_config`, `thinker.*` tensors) has the same
    architecture name as transformers' layout, which is the one converted."""
    arch = "Qwen3ASRForConditionalGeneration"
    det = detect(_hf_folder(tmp_path / "m", arch=arch, thinker_config={"text_config": {}}))
    assert not det.supported
    assert det.reason is not None and "thinker_config" in det.reason and "-hf" in det.reason
    from llorch.convert import convert
    from llorch.convert.errors import ConversionError

    with pytest.raises(ConversionError, match="thinker_config"):
        convert(tmp_path / "m", tmp_path / "m.gguf", verify=False)


def test_model_type_when_architectures_is_absent(tmp_path: Path) -> None:
    folder = _hf_folder(tmp_path / "m")
    (folder / "config.json").write_text(json.dumps({"model_type": "qwen2"}))
    det = detect(folder)
    assert (det.hf_architecture, det.llama_arch, det.supported) == (
        "Qwen2ForCausalLM",
        "qwen2",
        True,
    )
    (folder / "config.json").write_text(json.dumps({"model_type": "mystery"}))
    det = detect(folder)
    assert not det.supported and det.reason and "model_type='mystery'" in det.reason


def test_text_config_is_merged() -> None:
    from llorch.detector import text_config

    merged = text_config({"architectures": ["X"], "text_config": {"hidden_size": 8}})
    assert merged["hidden_size"] == 8 and merged["architectures"] == ["X"]


def test_missing_pieces(tmp_path: Path) -> None:
    folder = _hf_folder(tmp_path / "m")
    (folder / "tokenizer.json").unlink()
    det = detect(folder)
    assert not det.supported and det.reason and "tokenizer" in det.reason
    (folder / "config.json").unlink()
    with pytest.raises(MissingFileError, match=r"config\.json"):
        detect(folder)
    with pytest.raises(SourceNotFoundError):
        detect(tmp_path / "absent")


def test_gguf_file(tmp_path: Path) -> None:
    path = tmp_path / "x.gguf"
    w = gguf.GGUFWriter(path, "llama")
    w.add_file_type(gguf.LlamaFileType.MOSTLY_F16)
    w.add_tokenizer_model("gpt2")
    w.add_tensor("token_embd.weight", np.zeros((3, 4), np.float16))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    det = detect(path)
    assert (det.format, det.llama_arch, det.dtype, det.tokenizer) == (
        "gguf",
        "llama",
        "MOSTLY_F16",
        "bpe",
    )
    assert det.parameters == 12


def test_repo_id_in_local_hf_cache(tmp_path: Path, monkeypatch: Any) -> None:
    import huggingface_hub.constants

    cache = tmp_path / "hub"
    commit = "a" * 40
    repo = cache / "models--acme--tiny"
    _hf_folder(repo / "snapshots" / commit)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    det = detect("acme/tiny")
    assert det.path == repo / "snapshots" / commit and det.supported
    with pytest.raises(SourceNotFoundError, match="acme/absent"):
        detect("acme/absent")


def test_table_rows_are_consistent() -> None:
    names = [row.hf_name for row in SUPPORTED]
    assert len(names) == len(set(names))
    for row in SUPPORTED:
        assert row.llama_arch == gguf.MODEL_ARCH_NAMES[row.arch]
        assert row.model_type
        module = importlib.import_module(f"llorch.convert.families.{row.family}")
        assert callable(module.plan) and callable(module.write_hparams)
        if row.alias_of is not None:
            assert lookup(row.alias_of).family == row.family


def test_multimodal_wrappers_name_their_text_part() -> None:
    """A wrapper converts its language model: its row says where that lies, a text row says
    nothing, and an alias row writes its text row's tokenizer."""
    for row in SUPPORTED:
        wrapper = row.hf_name.endswith("ForConditionalGeneration")
        assert (row.text_part is not None) == wrapper, row.hf_name
        if row.alias_of is not None:
            assert lookup(row.alias_of).tokenizer == row.tokenizer, row.hf_name
    gemma3 = lookup("Gemma3ForConditionalGeneration").text_part
    assert gemma3 is not None
    assert gemma3.tensor_name("language_model.model.norm.weight") == "model.norm.weight"
    assert gemma3.tensor_name("model.language_model.norm.weight") == "model.norm.weight"
    assert gemma3.tensor_name("language_model.lm_head.weight") == "lm_head.weight"
    assert gemma3.tensor_name("lm_head.weight") == "lm_head.weight"
    assert gemma3.tensor_name("vision_tower.vision_model.post_layernorm.weight") is None


def test_the_row_a_config_names() -> None:
    gemma4 = row_for_config({"architectures": ["Gemma4ForCausalLM"], "model_type": "gemma4_text"})
    assert gemma4 is not None and gemma4.tokenizer == "gemma4"
    older = row_for_config({"model_type": "qwen2"})  # no `architectures`
    assert older is not None and older.hf_name == "Qwen2ForCausalLM"
    assert row_for_config({"architectures": ["FooLM"], "model_type": "llama"}) is None


def test_detect_cli(tmp_path: Path, capsys: Any) -> None:
    assert main(["detect", str(_hf_folder(tmp_path / "ok"))]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["supported"] is True and out["llama_arch"] == "llama"
    assert main(["detect", str(_hf_folder(tmp_path / "bad", arch="FooLM"))]) == 1
    out = json.loads(capsys.readouterr().out)
    assert out["supported"] is False and "FooLM" in out["reason"]
    assert main(["detect", str(tmp_path / "nothing")]) == 2
    captured = capsys.readouterr()
    assert json.loads(captured.out)["type"] == "SourceNotFoundError"
    assert "does not exist" in captured.err
