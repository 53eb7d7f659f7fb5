"""PEFT LoRA adapters converted to GGUF LoRA and applied by llama.cpp, against transformers+peft.

A tiny random Llama (Q/K permuted by the base conversion) and a tiny Qwen2 (q/k/v biases, no
permutation) get a PEFT LoRA on every attention and MLP projection, lora_B random (PEFT's
default init leaves it zero, which would hide any mistake in B). The base is converted to
F32 and so is the adapter; llama.cpp's logits with the adapter at scale 1, 0.5 and 0 are
compared at every position with the peft model's at the same scale (0: the base model):
cosine >= 0.9999 at every position, and no top-1 flip where the reference's top-2 margin is
larger than twice the largest difference.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gguf
import numpy as np
import peft  # test extra: the reference implementation
import pytest
import torch

from llorch.cli import main
from llorch.convert import convert, llamacpp
from llorch.convert.lora import UnsupportedAdapterError, convert_lora

SMALL = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 256,
}
BASES = {
    "llama": ("LlamaForCausalLM", "LlamaConfig", "spm"),
    "qwen2": ("Qwen2ForCausalLM", "Qwen2Config", "qwen2"),
}
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
COS_MIN = 0.9999


def _base(checkpoint: Any, tmp_path: Path, arch: str) -> tuple[Any, Path]:
    model_cls, config_cls, tokenizer = BASES[arch]
    built = checkpoint(model_cls, config_cls, SMALL, tokenizer=tokenizer)
    base_gguf = tmp_path / "base.gguf"
    convert(built.folder, base_gguf, outtype="f32", verify=False)
    return built, base_gguf


def _adapter(built: Any, dst: Path, *, seed: int = 3, **lora: Any) -> Any:
    """A PEFT LoRA on the tiny base, saved to `dst`; the peft model, for reference logits."""
    import transformers

    cls = transformers.AutoModelForCausalLM
    model = cls.from_pretrained(built.folder, dtype=torch.float32).eval()
    config = peft.LoraConfig(
        **{"r": 4, "lora_alpha": 8, "target_modules": TARGETS, "init_lora_weights": False, **lora}
    )
    torch.manual_seed(seed)
    pm = peft.get_peft_model(model, config).eval()
    pm.save_pretrained(dst)
    return pm


def _logits(pm: Any, tokens: list[int], *, scale: float = 1.0) -> np.ndarray:
    from peft.tuners.lora import LoraLayer

    with torch.no_grad():
        if scale == 0.0:
            with pm.disable_adapter():
                return pm(torch.tensor([tokens])).logits[0].numpy()
        layers = [m for m in pm.modules() if isinstance(m, LoraLayer)]
        for m in layers:
            m.scale_layer(scale)
        try:
            return pm(torch.tensor([tokens])).logits[0].numpy()
        finally:
            for m in layers:
                m.unscale_layer(scale)


def _check(helpers: Any, got: np.ndarray, ref: np.ndarray) -> tuple[float, float]:
    """cos_min and top-1 agreement; fails on a low cosine or a top-1 flip at a clear margin."""
    cos_min = float(helpers.cosines(got, ref).min())
    agree = got.argmax(axis=1) == ref.argmax(axis=1)
    top2 = np.sort(ref, axis=1)[:, -2:]
    clear = top2[:, 1] - top2[:, 0] > 2 * float(np.abs(got - ref).max())
    assert cos_min >= COS_MIN, cos_min
    assert not (~agree & clear).any(), np.flatnonzero(~agree & clear)
    return cos_min, float(agree.mean())


@pytest.mark.parametrize("arch", list(BASES))
def test_lora_matches_peft(arch: str, checkpoint: Any, helpers: Any, tmp_path: Path) -> None:
    built, base_gguf = _base(checkpoint, tmp_path, arch)
    pm = _adapter(built, tmp_path / "adapter")
    report = convert_lora(tmp_path / "adapter", built.folder, tmp_path / "a.gguf", outtype="f32")
    assert (report.llama_arch, report.n_modules, report.alpha, report.notes) == (
        "llama" if arch == "llama" else "qwen2",
        2 * len(TARGETS),
        8.0,
        (),
    )

    reader = gguf.GGUFReader(tmp_path / "a.gguf")
    kv = {f.name: f.contents() for f in reader.fields.values() if not f.name.startswith("GGUF.")}
    assert kv["general.type"] == "adapter"
    assert kv["general.architecture"] == report.llama_arch
    assert kv["adapter.type"] == "lora"
    assert kv["adapter.lora.alpha"] == 8.0
    shapes = {t.name: tuple(int(n) for n in t.shape) for t in reader.tensors}  # ggml ne order
    assert shapes["blk.0.attn_q.weight.lora_a"] == (64, 4)  # ne[0] = the base weight's ne[0]
    assert shapes["blk.0.attn_q.weight.lora_b"] == (4, 64)
    assert shapes["blk.1.ffn_down.weight.lora_a"] == (128, 4)
    assert shapes["blk.1.ffn_down.weight.lora_b"] == (4, 64)
    assert len(shapes) == 2 * 2 * len(TARGETS)

    tokens = helpers.sample_tokens(built.n_vocab)
    base_ref = _logits(pm, tokens, scale=0.0)
    for scale in (1.0, 0.5, 0.0):
        ref = _logits(pm, tokens, scale=scale)
        if scale:  # the adapter moves the logits far: a wrong B or scale cannot pass
            assert helpers.cosines(ref, base_ref).min() < 0.99
        got = llamacpp.logits(base_gguf, tokens, lora=(tmp_path / "a.gguf", scale))
        _check(helpers, got, ref)
    got = llamacpp.logits(base_gguf, tokens)
    _check(helpers, got, base_ref)


@pytest.mark.parametrize(
    "lora",
    [
        {"use_rslora": True},
        {"use_rslora": True, "rank_pattern": {"q_proj": 2}, "alpha_pattern": {"down_proj": 3}},
    ],
    ids=["rslora", "rslora-patterns"],
)
def test_scaling(lora: dict[str, Any], checkpoint: Any, helpers: Any, tmp_path: Path) -> None:
    """rsLoRA's alpha/sqrt(r) written as alpha*sqrt(r) (llama.cpp divides by r); modules with
    their own rank or alpha have PEFT's scale folded into lora_b."""
    built, base_gguf = _base(checkpoint, tmp_path, "llama")
    pm = _adapter(built, tmp_path / "adapter", **lora)
    report = convert_lora(tmp_path / "adapter", built.folder, tmp_path / "a.gguf", outtype="f32")
    assert report.rslora and report.alpha == pytest.approx(8 * 2)  # 8 * sqrt(4)
    assert bool(report.notes) == ("rank_pattern" in lora)
    tokens = helpers.sample_tokens(built.n_vocab)
    for scale in (1.0, 0.5):
        got = llamacpp.logits(base_gguf, tokens, lora=(tmp_path / "a.gguf", scale))
        _check(helpers, got, _logits(pm, tokens, scale=scale))


@pytest.mark.parametrize(
    ("lora", "names"),
    [
        ({"use_dora": True}, "use_dora"),
        ({"target_modules": ["q_proj", "lm_head"]}, "lm_head"),
        ({"target_modules": ["q_proj", "embed_tokens"]}, "embed_tokens"),
        ({"modules_to_save": ["lm_head"]}, "modules_to_save"),
        ({"bias": "lora_only"}, "bias"),
    ],
    ids=["dora", "lm_head", "embedding", "modules_to_save", "bias"],
)
def test_refused(
    lora: dict[str, Any], names: str, checkpoint: Any, tmp_path: Path, capsys: Any
) -> None:
    built = checkpoint(*BASES["llama"][:2], SMALL)
    _adapter(built, tmp_path / "adapter", **lora)
    out = tmp_path / "a.gguf"
    with pytest.raises(UnsupportedAdapterError, match=names):
        convert_lora(tmp_path / "adapter", built.folder, out)
    assert list(tmp_path.glob("*.gguf*")) == list(tmp_path.glob(".a.gguf*")) == []
    rc = main(
        ["convert-lora", str(tmp_path / "adapter"), "--base", str(built.folder), "-o", str(out)]
    )
    assert rc == 2 and names in capsys.readouterr().err and not out.exists()


def test_cli_writes_and_refuses_overwrite(
    checkpoint: Any, helpers: Any, tmp_path: Path, capsys: Any
) -> None:
    built, base_gguf = _base(checkpoint, tmp_path, "llama")
    pm = _adapter(built, tmp_path / "adapter")
    args = ["convert-lora", str(tmp_path / "adapter"), "--base", str(built.folder)]
    assert main([*args, "-o", str(tmp_path), "--outtype", "q8_0"]) == 0
    out = tmp_path / "adapter-Q8_0-LoRA.gguf"
    assert "14 modules" in capsys.readouterr().out
    reader = gguf.GGUFReader(out)
    types = {t.name: t.tensor_type for t in reader.tensors}
    assert types["blk.0.attn_q.weight.lora_a"] == gguf.GGMLQuantizationType.Q8_0
    assert types["blk.0.attn_q.weight.lora_b"] == gguf.GGMLQuantizationType.F16  # r=4 rows
    tokens = helpers.sample_tokens(built.n_vocab)
    got = llamacpp.logits(base_gguf, tokens, lora=(out, 1.0))  # Q8_0 lora_a: near, not exact
    assert helpers.cosines(got, _logits(pm, tokens)).min() >= 0.999
    before = out.stat().st_mtime_ns
    assert main([*args, "-o", str(out)]) == 2
    assert "--force" in capsys.readouterr().err and out.stat().st_mtime_ns == before
    assert main([*args, "-o", str(out), "--force", "--outtype", "f16"]) == 0


def test_unmappable_targets(
    checkpoint: Any, helpers: Any, tmp_path: Path, monkeypatch: Any
) -> None:
    """A target the base conversion has no plain weight for is refused, naming the module."""
    from llorch.convert.families import llama
    from llorch.convert.lora import AdapterError

    built = checkpoint(*BASES["llama"][:2], SMALL)
    _adapter(built, tmp_path / "adapter")
    one_layer = helpers.build_checkpoint(
        tmp_path / "hf1", *BASES["llama"][:2], {**SMALL, "num_hidden_layers": 1}
    )
    with pytest.raises(UnsupportedAdapterError, match=r"model\.layers\.1\.mlp\.down_proj: "):
        convert_lora(tmp_path / "adapter", one_layer.folder, tmp_path / "a.gguf")
    qwen = helpers.build_checkpoint(tmp_path / "qwen", *BASES["qwen2"][:2], SMALL)
    with pytest.raises(AdapterError, match="trained on a LlamaForCausalLM"):
        convert_lora(tmp_path / "adapter", qwen.folder, tmp_path / "a.gguf")
    # a family transform that is not a row reordering cannot be followed by lora_b
    monkeypatch.setattr(llama, "permute_rope", lambda w, n_head: w * 2.0)
    with pytest.raises(UnsupportedAdapterError, match=r"self_attn\.k_proj\.weight: .*row reorder"):
        convert_lora(tmp_path / "adapter", built.folder, tmp_path / "a.gguf")
    assert not list(tmp_path.glob("*.gguf"))
