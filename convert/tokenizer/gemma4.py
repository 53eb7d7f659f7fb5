"""Gemma 4's tokenizer.json: an SPM-style BPE, written as llama.cpp's "gemma4" vocabulary.

Released Gemma 4 folders ship tokenizer.json only: a BPE model with byte fallback (`<0xXX>`
tokens), a normalizer replacing " " with "▁" (the form transformers' GemmaConverter writes;
a Metaspace pre-tokenizer that neither prepends nor splits is the same), and merges over raw
UTF-8 with no word-level pre-splitting. llama.cpp (src/llama-vocab.cpp, tokenizer model
"gemma4") reads it as BPE with merges, escapes spaces as "▁", splits the text at newline runs
only (`[^\\n]+|[\\n]+`, no GPT-2 byte encoding) and looks a newline-only run up whole.

What is written follows llama.cpp's converter (conversion/gemma.py, Gemma4Model.set_vocab,
over gguf-py's LlamaHfVocab, which reads tokenizer.json only, never tokenizer.model): model
"gemma4", no pre-tokenizer name (llama.cpp implies it), every score -1000.0, `<0xXX>` tokens
BYTE, the chat-channel tokens below USER_DEFINED so that they render, merges, special ids,
add_space_prefix false and add_bos true. One departure: LlamaHfVocab types an added token
that lies inside the base vocabulary NORMAL unless transformers lists it among its special
tokens; here every tokenizer.json added token is CONTROL (special) or USER_DEFINED, as for
the other BPE vocabularies (hf_tokenizer.py), so that llama.cpp matches it whole, as
`tokenizers` does. llama.cpp matches such tokens in the raw text, before it escapes spaces:
a non-special added token containing "▁" and marked `normalized` (which `tokenizers` also
finds where the text has spaces) tokenizes differently, and verification reports it.
"""

from __future__ import annotations

import re
from typing import Any

import gguf

from llorch.convert.errors import TokenizerError

GGML_MODEL = "gemma4"
SCORE = -1000.0  # LlamaHfVocab.get_token_score: one placeholder score for every token
# Gemma4Model.set_vocab: always rendered, so that the chat parser can read them
VISIBLE = frozenset(
    {"<|channel>", "<channel|>", "<|tool_call>", "<tool_call|>", "<|tool_response>"}
    | {"<tool_response|>", '<|"|>'}
)
BYTE_TOKEN = re.compile(r"<0x[0-9A-Fa-f]{2}>")  # LlamaHfVocab.get_token_type
SPACE, META = " ", "\u2581"

_T = gguf.TokenType


def _steps(node: dict[str, Any] | None, key: str) -> list[dict[str, Any]]:
    """A normalizer or pre-tokenizer as the list of its steps (Sequence flattened)."""
    if not node:
        return []
    if node.get("type") == "Sequence":
        return [s for child in node.get(key, []) for s in _steps(child, key)]
    return [node]


def _is_space_replace(step: dict[str, Any]) -> bool:
    return (
        step.get("type") == "Replace"
        and step.get("pattern") == {"String": SPACE}
        and step.get("content") == META
    )


def _is_plain_metaspace(step: dict[str, Any]) -> bool:
    """A Metaspace that only replaces spaces: no prefix "▁", no split at "▁"."""
    legacy = "always" if step.get("add_prefix_space", True) else "never"  # before prepend_scheme
    prepend = step.get("prepend_scheme", legacy)
    return (
        step.get("type") == "Metaspace"
        and step.get("replacement", META) == META
        and prepend == "never"
        and step.get("split", True) is False
    )


def is_spm_bpe(tok_json: dict[str, Any]) -> bool:
    """True for a BPE tokenizer.json with byte fallback whose spaces become "▁" (SPM style)."""
    model = tok_json.get("model") or {}
    if model.get("type") != "BPE" or not model.get("byte_fallback"):
        return False
    normalizers = _steps(tok_json.get("normalizer"), "normalizers")
    pre = _steps(tok_json.get("pre_tokenizer"), "pretokenizers")
    metaspace = any(s.get("type") == "Metaspace" for s in pre)
    return metaspace or any(map(_is_space_replace, normalizers))


def check(tok_json: dict[str, Any], where: str) -> None:
    """Refuse, by name, what llama.cpp's gemma4 tokenizer does not do."""
    model = tok_json["model"]
    normalizers = _steps(tok_json.get("normalizer"), "normalizers")
    pre = _steps(tok_json.get("pre_tokenizer"), "pretokenizers")
    replaced = any(map(_is_space_replace, normalizers))
    problems = [f"normalizer {s.get('type')}" for s in normalizers if not _is_space_replace(s)]
    for s in pre:
        # after the normalizer there is no space left to split at
        noop_split = replaced and s.get("type") == "Split" and s.get("pattern") == {"String": SPACE}
        if not (noop_split or (not replaced and _is_plain_metaspace(s))):
            problems.append(f"pre-tokenizer {s}")
    keys = ("dropout", "continuing_subword_prefix", "end_of_word_suffix", "ignore_merges")
    options = {k: model[k] for k in keys if model.get(k)}  # unset, null, 0, "" or false: fine
    problems += [f"BPE {key}={value!r}" for key, value in options.items()]
    if problems:
        raise TokenizerError(
            f"{where}: SPM-style BPE tokenizer with {'; '.join(problems)}: llama.cpp's gemma4 "
            'tokenizer only replaces " " with "▁", splits at newline runs and merges (no '
            "other normalization, pre-splitting or BPE options)"
        )


def base_vocab(tok_json: dict[str, Any]) -> tuple[list[str], list[int], list[str]]:
    """(tokens by id, types, merges) of the BPE model; ids without a token are ''."""
    vocab_map: dict[str, int] = tok_json["model"]["vocab"]
    tokens = [""] * (max(vocab_map.values()) + 1 if vocab_map else 0)
    for text, idx in vocab_map.items():
        tokens[idx] = text
    types = [_T.BYTE if BYTE_TOKEN.fullmatch(t) else _T.NORMAL for t in tokens]
    merges = [m if isinstance(m, str) else " ".join(m) for m in tok_json["model"].get("merges", [])]
    return tokens, [int(t) for t in types], merges


def retype(tokens: list[str], types: list[int]) -> None:
    """The chat-channel tokens USER_DEFINED (rendered), as llama.cpp's converter writes them."""
    for i, text in enumerate(tokens):
        if text in VISIBLE:
            types[i] = int(_T.USER_DEFINED)


__all__ = ["GGML_MODEL", "SCORE", "VISIBLE", "base_vocab", "check", "is_spm_bpe", "retype"]
