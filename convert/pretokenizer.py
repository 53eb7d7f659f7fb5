"""Identify a BPE tokenizer's pre-tokenizer from its structure, as a llama.cpp name.

llama.cpp does not read the regexes from GGUF: it hard-codes them per name in
src/llama-vocab.cpp (llm_tokenizer_bpe) and selects them by `tokenizer.ggml.pre`. llama.cpp's
own converter picks the name by hashing the tokenization of a fixed text, which fails on every
fine-tune whose hash it has not seen. We instead reduce tokenizer.json's `normalizer` and
`pre_tokenizer` to a signature (the regex splits, digit and punctuation steps, byte-level
mapping, normalizer type) and look that up. Verification after conversion then checks the
choice on a corpus, so a wrong table row cannot pass silently.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from convert.errors import TokenizerError, UnknownPreTokenizerError

# Regexes as they appear in tokenizer.json `Split` steps (upstream tokenizer files).
LLAMA3_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
QWEN2_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
FALCON_DIGITS = r"[0-9][0-9][0-9]"

Step = tuple[str, ...]
BYTES = ("bytelevel",)  # byte-to-unicode mapping without a regex of its own
GPT2 = ("bytelevel-gpt2-regex",)  # ByteLevel(use_regex=True): GPT-2's built-in regex


def split(pattern: str) -> Step:
    return ("split", pattern)


# signature (normalizer, steps) -> llama.cpp pre-tokenizer name
KNOWN: Mapping[tuple[str | None, tuple[Step, ...]], str] = {
    (None, (GPT2,)): "gpt-2",
    (None, (split(LLAMA3_REGEX), BYTES)): "llama-bpe",
    (None, (split(QWEN2_REGEX), BYTES)): "qwen2",
    # Qwen2 ships an NFC normalizer; llama.cpp does not normalize, which only matters for
    # non-NFC input and is checked by verification's corpus.
    ("NFC", (split(QWEN2_REGEX), BYTES)): "qwen2",
    (None, (("digits", "individual"), GPT2)): "starcoder",
    (None, (("punctuation",), GPT2, ("digits", "grouped"), split(FALCON_DIGITS))): "falcon",
}


def _steps(node: Mapping[str, Any] | None) -> list[Step]:
    if node is None:
        return []
    kind = node.get("type")
    if kind == "Sequence":
        out: list[Step] = []
        for child in node.get("pretokenizers", []):
            out.extend(_steps(child))
        return out
    if kind == "ByteLevel":
        if node.get("add_prefix_space"):
            return [("bytelevel-add-prefix-space",)]
        return [GPT2 if node.get("use_regex", True) else BYTES]
    if kind == "Split":
        pattern = node.get("pattern", {})
        regex = pattern.get("Regex") if "Regex" in pattern else pattern.get("String")
        behaviour = node.get("behavior", "Isolated")
        invert = node.get("invert", False)
        if behaviour != "Isolated" or invert:
            return [("split", str(regex), f"{behaviour}", f"invert={invert}")]
        return [split(str(regex))]
    if kind == "Digits":
        return [("digits", "individual" if node.get("individual_digits") else "grouped")]
    if kind == "Punctuation":
        return [("punctuation",)]
    return [(str(kind),)]


def _normalizer(node: Mapping[str, Any] | None) -> str | None:
    if node is None:
        return None
    if node.get("type") == "Sequence" and not node.get("normalizers"):
        return None
    return str(node.get("type"))


def signature(tokenizer_json: Mapping[str, Any]) -> tuple[str | None, tuple[Step, ...]]:
    return _normalizer(tokenizer_json.get("normalizer")), tuple(
        _steps(tokenizer_json.get("pre_tokenizer"))
    )


def is_byte_level(tokenizer_json: Mapping[str, Any]) -> bool:
    _, steps = signature(tokenizer_json)
    return any(s[0].startswith("bytelevel") for s in steps)


def describe(sig: tuple[str | None, tuple[Step, ...]]) -> str:
    norm, steps = sig
    parts = [" ".join(s) for s in steps] or ["(none)"]
    return f"normalizer={norm or 'none'}; pre_tokenizer=[{' | '.join(parts)}]"


def identify(tokenizer_json: Mapping[str, Any], *, where: str, override: str | None) -> str:
    """The llama.cpp pre-tokenizer name, or UnknownPreTokenizerError naming what was seen."""
    if override:
        return override
    sig = signature(tokenizer_json)
    name = KNOWN.get(sig)
    if name is None:
        known = sorted(set(KNOWN.values()))
        raise UnknownPreTokenizerError(
            f"{where}: pre-tokenizer not recognized: {describe(sig)}. Known llama.cpp "
            f"pre-tokenizers matched by structure: {', '.join(known)}. If you know which "
            "llama.cpp pre-tokenizer reproduces it, pass --pre NAME (verification still "
            "checks the result)."
        )
    return name


def require_byte_level(tokenizer_json: Mapping[str, Any], *, where: str) -> None:
    model = tokenizer_json.get("model", {})
    if model.get("type") != "BPE":
        raise TokenizerError(
            f"{where}: tokenizer model type {model.get('type')!r} is not supported without "
            "tokenizer.model (supported: SentencePiece tokenizer.model, byte-level BPE "
            "tokenizer.json)"
        )
    if not is_byte_level(tokenizer_json):
        raise TokenizerError(
            f"{where}: BPE tokenizer is not byte-level ({describe(signature(tokenizer_json))}); "
            "SentencePiece-style BPE needs its tokenizer.model next to it"
        )
