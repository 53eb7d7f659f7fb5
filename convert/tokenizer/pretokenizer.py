"""Identify a BPE tokenizer's pre-tokenizer from its structure, as a llama.cpp name.

llama.cpp does not read the regexes from GGUF: it hard-codes them per name in
src/llama-vocab.cpp (llm_tokenizer_bpe) and selects them by `tokenizer.ggml.pre`. llama.cpp's
own converter picks the name by hashing the tokenization of a fixed text, which fails on every
fine-tune whose hash it has not seen. We instead reduce tokenizer.json's `normalizer` and
`pre_tokenizer` to a signature (the regex splits, digit and punctuation steps, byte-level
mapping, normalizer type) and look that up, with llama.cpp's known-hash table
(pre_hashes.py) as cross-check and fallback. Verification after conversion then checks
the choice on a corpus, so a wrong table row cannot pass silently.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llorch.convert.errors import TokenizerError, UnknownPreTokenizerError
from llorch.convert.tokenizer.pre_hashes import CHECK_TEXT, HASHES

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


@dataclass(frozen=True)
class Identified:
    name: str
    method: str  # "structure", "hash", or "override"
    note: str | None  # disagreement between structure and hash, if any


def check_hash(path: Path) -> str | None:
    """llama.cpp's pre-tokenizer hash of this tokenizer.json (None if it cannot load)."""
    try:
        import tokenizers

        tok = tokenizers.Tokenizer.from_file(str(path))
    except Exception:  # tokenizers raises plain Exception for unreadable files
        return None
    ids = tok.encode(CHECK_TEXT).ids
    return hashlib.sha256(str(ids).encode()).hexdigest()


def identify(tokenizer_json: Mapping[str, Any], *, path: Path, override: str | None) -> Identified:
    """The llama.cpp pre-tokenizer name, or UnknownPreTokenizerError naming what was seen.

    Structure decides; the known-hash table is the cross-check, and the fallback when the
    structure is unknown. Verification then tests whichever name was chosen.
    """
    if override:
        return Identified(override, "override", None)
    sig = signature(tokenizer_json)
    by_structure = KNOWN.get(sig)
    by_hash = HASHES.get(check_hash(path) or "")
    if by_structure is not None:
        note = None
        if by_hash is not None and by_hash != by_structure:
            note = (
                f"pre-tokenizer: structure says {by_structure!r}, llama.cpp's hash table says "
                f"{by_hash!r}; using {by_structure!r} (verified below)"
            )
        return Identified(by_structure, "structure", note)
    if by_hash is not None:
        note = f"pre-tokenizer {by_hash!r} identified by llama.cpp's hash table ({describe(sig)})"
        return Identified(by_hash, "hash", note)
    known = sorted(set(KNOWN.values()))
    raise UnknownPreTokenizerError(
        f"{path}: pre-tokenizer not recognized: {describe(sig)}. Known llama.cpp "
        f"pre-tokenizers matched by structure: {', '.join(known)} (and {len(set(HASHES.values()))} "
        "more by the hash of unmodified upstream tokenizers). If you know which llama.cpp "
        "pre-tokenizer reproduces it, pass --pre NAME (verification still checks the result)."
    )


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
