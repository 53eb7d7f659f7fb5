"""Bad input through the CLI: non-zero exit, one clear line naming the file, no output file."""

from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from safetensors.numpy import save_file

from llorch.cli import main
from llorch.convert import convert
from llorch.convert.errors import ConversionError

TINY = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "num_key_value_heads": 2,
}


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import importlib.util
    import sys

    spec = importlib.util.spec_from_file_location(
        "_conv_helpers", Path(__file__).with_name("conftest.py")
    )
    assert spec and spec.loader
    helpers = importlib.util.module_from_spec(spec)
    sys.modules["_conv_helpers"] = helpers
    spec.loader.exec_module(helpers)
    root = tmp_path_factory.mktemp("base")
    helpers.build_checkpoint(root / "hf", "LlamaForCausalLM", "LlamaConfig", TINY)
    helpers.build_checkpoint(
        root / "sharded", "LlamaForCausalLM", "LlamaConfig", TINY, shard_size="20KB"
    )
    return root


def _copy(base: Path, tmp_path: Path, name: str = "hf") -> Path:
    return Path(shutil.copytree(base / name, tmp_path / "src"))


def _run(capsys: Any, src: Path, out: Path) -> str:
    code = main(["convert", str(src), "-o", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1, err
    assert err[0].startswith("llorch convert: error: ")
    assert not out.exists()
    siblings = out.parent.iterdir() if out.parent.is_dir() else iter(())
    leftovers = [p.name for p in siblings if p.name.startswith(f".{out.name}")]
    assert not leftovers, leftovers
    return err[0]


def test_missing_config(base: Path, tmp_path: Path, capsys: Any) -> None:
    src = _copy(base, tmp_path)
    (src / "config.json").unlink()
    assert "config.json not found" in _run(capsys, src, tmp_path / "o.gguf")


def test_unknown_architecture_lists_supported(base: Path, tmp_path: Path, capsys: Any) -> None:
    src = _copy(base, tmp_path)
    cfg = json.loads((src / "config.json").read_text())
    (src / "config.json").write_text(json.dumps({**cfg, "architectures": ["FooForCausalLM"]}))
    line = _run(capsys, src, tmp_path / "o.gguf")
    assert "'FooForCausalLM'" in line and "LlamaForCausalLM" in line and "supported:" in line


def test_missing_tokenizer(base: Path, tmp_path: Path, capsys: Any) -> None:
    src = _copy(base, tmp_path)
    (src / "tokenizer.model").unlink()
    line = _run(capsys, src, tmp_path / "o.gguf")
    assert "tokenizer.model" in line and "tokenizer.json" in line


def test_missing_shard(base: Path, tmp_path: Path, capsys: Any) -> None:
    src = _copy(base, tmp_path, "sharded")
    shards = sorted(src.glob("model-*.safetensors"))
    assert len(shards) >= 2
    shards[-1].unlink()
    line = _run(capsys, src, tmp_path / "o.gguf")
    assert shards[-1].name in line and "missing" in line


def test_truncated_safetensors(base: Path, tmp_path: Path, capsys: Any) -> None:
    src = _copy(base, tmp_path)
    weights = src / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) - 1000])
    line = _run(capsys, src, tmp_path / "o.gguf")
    assert "model.safetensors" in line and "truncated" in line


def test_shape_mismatch(base: Path, tmp_path: Path, capsys: Any) -> None:
    src = _copy(base, tmp_path)
    cfg = json.loads((src / "config.json").read_text())
    (src / "config.json").write_text(json.dumps({**cfg, "intermediate_size": 96}))
    line = _run(capsys, src, tmp_path / "o.gguf")
    assert "model.safetensors" in line and "mlp" in line and "config.json implies" in line


def test_unmapped_tensor(base: Path, tmp_path: Path, capsys: Any) -> None:
    src = _copy(base, tmp_path)
    save_file(
        {"model.extra_adapter.weight": np.zeros((4, 4), np.float32)}, src / "extra.safetensors"
    )
    # a single model.safetensors wins over a glob; use an index that lists both files
    names = {"model.extra_adapter.weight": "extra.safetensors"}
    header = json.loads(_header(src / "model.safetensors"))
    names.update({k: "model.safetensors" for k in header if k != "__metadata__"})
    (src / "model.safetensors.index.json").write_text(json.dumps({"weight_map": names}))
    line = _run(capsys, src, tmp_path / "o.gguf")
    assert "model.extra_adapter.weight" in line and "no GGUF name" in line


def _header(path: Path) -> bytes:
    with path.open("rb") as fh:
        (n,) = struct.unpack("<Q", fh.read(8))
        return fh.read(n)


def test_output_folder_missing_or_a_file(base: Path, tmp_path: Path, capsys: Any) -> None:
    src = _copy(base, tmp_path)
    line = _run(capsys, src, tmp_path / "nowhere" / "o.gguf")
    assert "nowhere" in line and "does not exist" in line
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert main(["convert", str(src), "-o", str(blocker / "o.gguf")]) == 2
    assert "file" in capsys.readouterr().err


def test_failure_mid_write_leaves_nothing(base: Path, tmp_path: Path, monkeypatch: Any) -> None:
    from llorch.convert.families import llama

    src = _copy(base, tmp_path)
    real_plan = llama.plan

    def failing_plan(model: Any) -> Any:
        plans = real_plan(model)

        def boom() -> Any:
            raise ConversionError("simulated failure while writing")

        return [*plans[:-1], type(plans[-1])(plans[-1].name, plans[-1].shape, boom, ())]

    monkeypatch.setattr(llama, "plan", failing_plan)
    out = tmp_path / "out" / "o.gguf"
    out.parent.mkdir()
    with pytest.raises(ConversionError, match="simulated"):
        convert(src, out)
    assert list(out.parent.iterdir()) == []


def test_unknown_outtype(base: Path, tmp_path: Path, capsys: Any) -> None:
    src = _copy(base, tmp_path)
    out = tmp_path / "o.gguf"
    assert main(["convert", str(src), "-o", str(out), "--outtype", "q9_z"]) == 2
    err = capsys.readouterr().err
    assert "'q9_z'" in err and "q4_k_m" in err and not out.exists()


def test_missing_expert(tmp_path: Path, capsys: Any, helpers: Any) -> None:
    built = helpers.build_checkpoint(
        tmp_path / "moe",
        "MixtralForCausalLM",
        "MixtralConfig",
        {**TINY, "num_local_experts": 2, "num_experts_per_tok": 1},
    )
    weights = built.folder / "model.safetensors"
    from safetensors.numpy import load_file

    tensors = load_file(weights)
    del tensors["model.layers.1.block_sparse_moe.experts.1.w3.weight"]
    save_file(tensors, weights)
    capsys.readouterr()  # drop the checkpoint builder's progress output
    line = _run(capsys, built.folder, tmp_path / "o.gguf")
    assert "layer 1 lacks w3 of experts [1]" in line


def test_llama_cpp_refuses_an_incomplete_file(base: Path, tmp_path: Path, monkeypatch: Any) -> None:
    """A family that forgot a tensor is caught by llama.cpp's own loader, before the rename."""
    from llorch.convert.families import llama

    src = _copy(base, tmp_path)
    real_plan = llama.plan
    monkeypatch.setattr(
        llama, "plan", lambda model: [p for p in real_plan(model) if "attn_q." not in p.name]
    )
    out = tmp_path / "out" / "o.gguf"
    out.parent.mkdir()
    with pytest.raises(ConversionError, match="could not load the written GGUF") as err:
        convert(src, out)
    assert "attn_q" in str(err.value)
    assert list(out.parent.iterdir()) == []


def test_missing_lm_head_when_untied(base: Path, tmp_path: Path, capsys: Any) -> None:
    from safetensors.numpy import load_file

    src = _copy(base, tmp_path)
    assert json.loads((src / "config.json").read_text())["tie_word_embeddings"] is False
    tensors = load_file(src / "model.safetensors")
    del tensors["lm_head.weight"]
    save_file(tensors, src / "model.safetensors")
    line = _run(capsys, src, tmp_path / "o.gguf")
    assert "tie_word_embeddings=false" in line and "lm_head.weight" in line


# Ctrl-C's default handler first: a parent that ignores SIGINT (pytest-xdist's workers do)
# passes that on to its children, where an interrupt would then do nothing.
_INTERRUPT = """
import os, signal, sys
from llorch.convert import convert
signal.signal(signal.SIGINT, signal.default_int_handler)
convert(sys.argv[1], sys.argv[2], on_tensor=lambda p: os.kill(os.getpid(), signal.SIGINT))
"""


def test_interrupt_leaves_nothing(base: Path, tmp_path: Path) -> None:
    import subprocess
    import sys

    src = _copy(base, tmp_path)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    proc = subprocess.run(
        [sys.executable, "-c", _INTERRUPT, str(src), str(out_dir / "o.gguf")],
        capture_output=True,
        text=True,
    )
    assert proc.returncode != 0 and "KeyboardInterrupt" in proc.stderr
    assert list(out_dir.iterdir()) == []
