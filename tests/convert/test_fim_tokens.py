"""FIM token ids in the GGUF: llorch's keys against llama.cpp's converter and loader.

Each family's tiny checkpoint (tests/fim_checkpoints.py) is converted by llorch and by
llama.cpp's convert_hf_to_gguf.py. llama.cpp's converter writes no fim_* key for any family
(gguf-py has no writer for them); its loader finds most FIM tokens by text. So the checks are:
llorch writes every FIM id the tokenizer has; any key llama.cpp writes (CodeLlama's eot) is
equal; llama.cpp's loaded vocabulary reports the same FIM ids from both files, except where
its text lists miss the family's tokens, which is what the keys are for; and both files
tokenize text that spells the FIM tokens alike, with and without special-token parsing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gguf
import pytest
from fim_checkpoints import FAMILIES, ROLES, build, llama_cpp_convert

from llorch.convert import convert
from llorch.convert.tokenizer import fim_tokens

# Roles whose tokens llama.cpp's loader does not find by text (llama-vocab.cpp's lists).
MISSED_BY_LOADER = {
    "starcoder2": {"fim_rep", "fim_sep"},  # <repo_name>, <file_sep>
    "codestral": {"fim_pre", "fim_suf", "fim_mid"},  # [PREFIX], [SUFFIX], [MIDDLE]
}
_KEY_ROLES = {key: role for role, key in fim_tokens.KEYS.items()}


def _ids(path: Path) -> dict[str, int]:
    """fim_* and eot ids as written in the file."""
    reader = gguf.GGUFReader(path)
    out = {}
    for key, f in reader.fields.items():
        if key in _KEY_ROLES:
            out[_KEY_ROLES[key]] = int(f.contents())
        elif key == gguf.Keys.Tokenizer.EOT_ID:
            out["eot"] = int(f.contents())
    return out


def _loaded(path: Path, text: str) -> tuple[dict[str, int], list[list[int]]]:
    """llama.cpp's FIM ids of the loaded vocabulary, and `text` tokenized without and with
    special-token parsing."""
    import llama_cpp as ll

    from llorch.convert import llamacpp

    with llamacpp.load_model(path, vocab_only=True) as model:
        v = ll.llama_model_get_vocab(model)
        getters = (
            ll.llama_vocab_fim_pre,
            ll.llama_vocab_fim_suf,
            ll.llama_vocab_fim_mid,
            ll.llama_vocab_fim_pad,
            ll.llama_vocab_fim_rep,
            ll.llama_vocab_fim_sep,
        )
        ids = {role: int(get(v)) for role, get in zip(ROLES, getters, strict=True)}
        words = llamacpp.vocab(model)
        tokens = [words.tokenize(text, False, parse) for parse in (False, True)]
    return ids, tokens


@pytest.mark.slow
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_fim_ids_match_llama_cpp(family: str, tmp_path: Path, helpers: Any) -> None:
    expected = build(tmp_path / "hf", family, helpers)
    ours = tmp_path / "llorch.gguf"
    convert(tmp_path / "hf", ours, outtype="f32")
    written = _ids(ours)
    assert written == expected

    reader = gguf.GGUFReader(ours)
    pre = reader.fields.get(gguf.Keys.Tokenizer.PRE)
    theirs = llama_cpp_convert(
        tmp_path / "hf",
        tmp_path / "ref.gguf",
        pre=str(pre.contents()) if pre is not None else None,
        vocab_only=True,
    )
    for role, idx in _ids(theirs).items():  # today only CodeLlama's eot
        assert written[role] == idx, role

    spelled = "def f():\n" + "".join(f" {t} x" for t in FAMILIES[family].fim) + "\n"
    our_ids, our_tokens = _loaded(ours, spelled)
    their_ids, their_tokens = _loaded(theirs, spelled)
    fim_expected = {role: expected.get(role, -1) for role in ROLES}
    assert our_ids == fim_expected
    missed = MISSED_BY_LOADER.get(family, set())
    assert their_ids == {r: -1 if r in missed else idx for r, idx in fim_expected.items()}
    assert our_tokens == their_tokens


def test_no_fim_keys_without_prefix_suffix_and_middle() -> None:
    # SmolLM2's vocabulary has <repo_name>, <reponame> and <file_sep>, but no FIM tokens.
    lookup = {"<|endoftext|>": 0, "<repo_name>": 3, "<reponame>": 4, "<file_sep>": 5}
    assert fim_tokens.find(lookup) == {}


def test_llama_cpp_loader_texts_win_over_the_additions() -> None:
    # A vocabulary with both spellings gets the one llama.cpp's loader would find.
    lookup = {"<fim_prefix>": 1, "<fim_suffix>": 2, "<fim_middle>": 3}
    lookup |= {"<repo_name>": 5, "<reponame>": 6}
    assert fim_tokens.find(lookup)["fim_rep"] == 6


def test_codellama_eot_and_control_types() -> None:
    tokens = ["<unk>", "a", "▁<PRE>", "▁<SUF>", "▁<MID>", "▁<EOT>"]
    types = [gguf.TokenType.UNKNOWN] + [gguf.TokenType.NORMAL] * 5
    special: dict[str, int] = {}
    fim_tokens.add_fim_ids(tokens, types, special)
    assert special == {"fim_pre": 2, "fim_suf": 3, "fim_mid": 4, "eot": 5}
    # the FIM tokens become control tokens, as llama.cpp's loader makes them; eot keeps its type
    assert types[2:] == [gguf.TokenType.CONTROL] * 3 + [gguf.TokenType.NORMAL]
