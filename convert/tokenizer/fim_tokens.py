"""Fill-in-the-middle tokens: `tokenizer.ggml.fim_{pre,suf,mid,pad,rep,sep}_token_id`.

llama.cpp's converter writes none of these keys: gguf-py's SpecialVocab has no writer for the
"prefix", "suffix" and "middle" ids that its CodeLlama, CodeGemma and Refact converters set,
and drops them with a warning (gguf/vocab.py add_to_gguf). Its loader finds FIM tokens by
their text instead (src/llama-vocab.cpp, "auto-detect special tokens by text"); the texts it
knows are mirrored below, in its order. The ids are written here so that the file says which
tokens they are, and for the tokens those lists miss: StarCoder 2's `<repo_name>` and
`<file_sep>`, and Codestral's `[PREFIX]`, `[SUFFIX]`, `[MIDDLE]`.

CodeLlama's end of an infill, `▁<EOT>`, becomes the eot id, as llama.cpp's converter writes it
for CodeLlama's vocabulary (conversion/llama.py, vocabulary size 32016: id 32010); its loader
would not find it (its EOT list has "_<EOT>", not "▁<EOT>").
"""

from __future__ import annotations

from collections.abc import Mapping

import gguf

_T = gguf.TokenType

# Role -> the texts that name it: llama-vocab.cpp's lists first, then the families it misses.
TEXTS: dict[str, tuple[str, ...]] = {
    "fim_pre": (
        "<|fim_prefix|>",  # Qwen 2.5 / Qwen 3 Coder
        "<fim-prefix>",
        "<fim_prefix>",  # StarCoder 2, Granite
        "<｜fim▁begin｜>",  # noqa: RUF001 (DeepSeek-Coder's full-width bars)
        "<PRE>",
        "▁<PRE>",  # CodeLlama
        "<|code_prefix|>",  # GLM-4.5
        "<|prefix|>",  # Falcon-H1-Tiny-Coder
        "[PREFIX]",  # Codestral (not in llama.cpp's list)
    ),
    "fim_suf": (
        "<|fim_suffix|>",
        "<fim-suffix>",
        "<fim_suffix>",
        "<｜fim▁hole｜>",  # noqa: RUF001
        "<SUF>",
        "▁<SUF>",
        "<|code_suffix|>",
        "<|suffix|>",
        "[SUFFIX]",
    ),
    "fim_mid": (
        "<|fim_middle|>",
        "<fim-middle>",
        "<fim_middle>",
        "<｜fim▁end｜>",  # noqa: RUF001
        "<MID>",
        "▁<MID>",
        "<|code_middle|>",
        "<|middle|>",
        "[MIDDLE]",
    ),
    "fim_pad": ("<|fim_pad|>", "<fim-pad>", "<fim_pad>", "<PAD>", "[PAD]"),
    "fim_rep": (
        "<|fim_repo|>",
        "<|repo_name|>",  # Qwen 2.5 Coder
        "<fim-repo>",
        "<REPO>",
        "<reponame>",
        "<repo_name>",  # StarCoder 2 (not in llama.cpp's list)
    ),
    "fim_sep": (
        "<|file_sep|>",  # Qwen 2.5 Coder
        "<file_sep>",  # StarCoder 2 (not in llama.cpp's list)
    ),
}

KEYS: dict[str, str] = {
    "fim_pre": gguf.Keys.Tokenizer.FIM_PRE_ID,
    "fim_suf": gguf.Keys.Tokenizer.FIM_SUF_ID,
    "fim_mid": gguf.Keys.Tokenizer.FIM_MID_ID,
    "fim_pad": gguf.Keys.Tokenizer.FIM_PAD_ID,
    "fim_rep": gguf.Keys.Tokenizer.FIM_REP_ID,
    "fim_sep": gguf.Keys.Tokenizer.FIM_SEP_ID,
}
_REQUIRED = ("fim_pre", "fim_suf", "fim_mid")
CODELLAMA_EOT = "▁<EOT>"


def find(lookup: Mapping[str, int]) -> dict[str, int]:
    """Role -> token id, or {} when the vocabulary lacks a prefix, suffix or middle token: a
    vocabulary that cannot fill in the middle gets no FIM key (SmolLM2's `<reponame>`, say,
    names no repository-level FIM model, and llama.cpp's loader still finds it by itself)."""
    found: dict[str, int] = {}
    for role, texts in TEXTS.items():
        idx = next((lookup[text] for text in texts if text in lookup), None)
        if idx is not None:
            found[role] = idx
    if not all(role in found for role in _REQUIRED):
        return {}
    return found


def add_fim_ids(tokens: list[str], types: list[int], special_ids: dict[str, int]) -> None:
    """Add the FIM ids (and CodeLlama's eot) to `special_ids`. A FIM token that is not a
    control token becomes one, as llama.cpp's loader makes every FIM token it finds by text
    ("its type will be overridden"): a key in the file stops that search, so the type is set
    here, and text that spells the token is text again unless specials are parsed (Qwen 2.5
    marks its FIM tokens `special: false`; llama.cpp's converter makes them control tokens
    too, as tokens that look special)."""
    lookup = {text: i for i, text in enumerate(tokens)}
    found = find(lookup)
    for role, idx in found.items():
        special_ids.setdefault(role, idx)
        if types[special_ids[role]] != _T.CONTROL:
            types[special_ids[role]] = _T.CONTROL
    if found and CODELLAMA_EOT in lookup:
        special_ids.setdefault("eot", lookup[CODELLAMA_EOT])
