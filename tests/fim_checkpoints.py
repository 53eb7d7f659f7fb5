"""Tiny coder checkpoints whose tokenizers carry the FIM tokens of real coder families, built
offline with transformers, and llama.cpp's own converter run on them for comparison.

The FIM tokens sit where the families put them: Qwen 2.5 Coder adds them as `special: false`
tokens, StarCoder 2 as special tokens, CodeLlama has `▁<PRE>`..`▁<EOT>` at 32007..32010 of a
32016-token vocabulary, DeepSeek-Coder adds its fim▁begin, hole and end tokens, Codestral has
control tokens `[PREFIX]`, `[SUFFIX]`, `[MIDDLE]`.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SMALL = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 4096,
}


@dataclass(frozen=True)
class Family:
    model_cls: str
    config_cls: str
    tokenizer: str  # a tests/convert/conftest.py tokenizer kind: "spm" or a BPE kind
    fim: tuple[str, ...]  # texts in role order: pre, suf, mid[, pad, rep, sep]
    special: bool  # whether the tokenizer marks them special
    config: tuple[tuple[str, Any], ...] = ()
    codellama: bool = False  # ids 32007.. of a 32016-token vocabulary, plus ▁<EOT>
    # Special tokens the family's transformers tokenizer adds when missing (<|endoftext|>),
    # so that llama.cpp's converter sees no id past the vocabulary.
    own_specials: tuple[str, ...] = ()
    add_bos: bool = True  # Qwen starts prompts with no BOS


FAMILIES: dict[str, Family] = {
    "qwen2.5-coder": Family(
        "Qwen2ForCausalLM",
        "Qwen2Config",
        "qwen2",
        (
            *("<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>", "<|fim_pad|>"),
            *("<|repo_name|>", "<|file_sep|>"),
        ),
        special=False,
        own_specials=("<|endoftext|>",),
        add_bos=False,
    ),
    "starcoder2": Family(
        "Starcoder2ForCausalLM",
        "Starcoder2Config",
        "starcoder",
        ("<fim_prefix>", "<fim_suffix>", "<fim_middle>", "<fim_pad>", "<repo_name>", "<file_sep>"),
        special=True,
        config=(("sliding_window", None),),
        own_specials=("<|endoftext|>",),
    ),
    "codellama": Family(
        "LlamaForCausalLM",
        "LlamaConfig",
        "spm",
        ("▁<PRE>", "▁<SUF>", "▁<MID>"),
        special=True,
        codellama=True,
    ),
    "deepseek-coder": Family(
        "LlamaForCausalLM",
        "LlamaConfig",
        "llama3",
        ("<｜fim▁begin｜>", "<｜fim▁hole｜>", "<｜fim▁end｜>"),  # noqa: RUF001
        special=False,
    ),
    "codestral": Family(
        "MistralForCausalLM", "MistralConfig", "spm", ("[PREFIX]", "[SUFFIX]", "[MIDDLE]"), True
    ),
}
ROLES = ("fim_pre", "fim_suf", "fim_mid", "fim_pad", "fim_rep", "fim_sep")
CODELLAMA_VOCAB = 32016  # CodeLlama's: ▁<PRE> ▁<SUF> ▁<MID> ▁<EOT> at 32007..32010


def _add_bpe_tokens(folder: Path, family: Family) -> int:
    from tokenizers import AddedToken, Tokenizer

    texts, special = family.fim, family.special
    tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
    tok.add_special_tokens([AddedToken(t, special=True) for t in family.own_specials])
    added = [AddedToken(t, special=special, normalized=False) for t in texts]
    if special:
        tok.add_special_tokens(added)
    else:
        tok.add_tokens(added)
    tok.save(str(folder / "tokenizer.json"))
    return int(tok.get_vocab_size())


def _add_spm_tokens(folder: Path, family: Family, n_pieces: int) -> tuple[int, dict[str, int]]:
    texts = (*family.fim, "▁<EOT>") if family.codellama else family.fim
    first = 32007 if family.codellama else n_pieces
    ids = {text: first + i for i, text in enumerate(texts)}
    cfg_path = folder / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["added_tokens_decoder"] = {
        str(i): {"content": t, "special": family.special} for t, i in ids.items()
    }
    cfg_path.write_text(json.dumps(cfg, ensure_ascii=False))
    return (CODELLAMA_VOCAB if family.codellama else first + len(texts)), ids


def build(folder: Path, name: str, helpers: Any, *, seed: int = 0) -> dict[str, int]:
    """A random tiny model of family `name` in `folder`; returns FIM role -> token id (and
    "eot" for CodeLlama) as the tokenizer has them. `helpers`: tests/convert/conftest.py."""
    import torch
    import transformers

    family = FAMILIES[name]
    folder.mkdir(parents=True, exist_ok=True)
    if family.tokenizer == "spm":
        n_vocab, ids = _add_spm_tokens(folder, family, helpers.make_spm(folder))
    else:
        helpers.make_bpe(folder, family.tokenizer)
        n_vocab = _add_bpe_tokens(folder, family)
        vocab = json.loads((folder / "tokenizer.json").read_text())["added_tokens"]
        ids = {entry["content"]: entry["id"] for entry in vocab}
        cfg_path = folder / "tokenizer_config.json"
        cfg_path.write_text(
            json.dumps(json.loads(cfg_path.read_text()) | {"add_bos_token": family.add_bos})
        )
    roles = {role: ids[text] for role, text in zip(ROLES, family.fim, strict=False)}
    if family.codellama:
        roles["eot"] = ids["▁<EOT>"]
    torch.manual_seed(seed)
    config = getattr(transformers, family.config_cls)(
        vocab_size=n_vocab, **SMALL, **dict(family.config)
    )
    model = getattr(transformers, family.model_cls)(config).eval()
    with torch.no_grad():  # larger than the default init: greedy choices far from ties
        for p in model.parameters():
            if p.dim() >= 2:
                p.normal_(0.0, 0.08)
    model.save_pretrained(folder)
    return roles


_LAUNCHER = """
import runpy, sys
root, pre, script, *args = sys.argv[1:]
sys.path.insert(0, root)
from conversion import base
if pre:  # a tiny trained BPE hashes to no released pre-tokenizer: name it as llorch found it
    base.TextModel.get_vocab_base_pre = lambda self, tokenizer: pre
sys.argv = [script, *args]
runpy.run_path(script, run_name="__main__")
"""


def llama_cpp_convert(folder: Path, out: Path, *, pre: str | None, vocab_only: bool) -> Path:
    """`folder` converted by llama.cpp's convert_hf_to_gguf.py (llama-cpp-python's sdist)."""
    root = llama_cpp_root()
    args = [str(folder), "--outfile", str(out), "--outtype", "f32"]
    if vocab_only:
        args.append("--vocab-only")
    cmd = [
        sys.executable,
        "-c",
        _LAUNCHER,
        str(root),
        pre or "",
        str(root / "convert_hf_to_gguf.py"),
    ]
    done = subprocess.run([*cmd, *args], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"convert_hf_to_gguf.py failed:\n{done.stderr[-4000:]}")
    return out


def llama_cpp_root() -> Path:
    import importlib.util

    repo = Path(__file__).resolve().parents[1]
    spec = importlib.util.spec_from_file_location("llorch_build_backend", repo / "build/backend.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return Path(module.sdist_source(sys.executable)) / "vendor" / "llama.cpp"
