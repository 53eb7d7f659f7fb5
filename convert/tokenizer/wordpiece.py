"""WordPiece (BERT) tokenizer.json -> llama.cpp's WPM vocabulary (`tokenizer.ggml.model` bert).

Facts from llama.cpp src/llama-vocab.cpp (llm_tokenizer_wpm_session, the WPM defaults) and its
converter (BertModel.set_vocab):
- llama.cpp marks the start of a word with a phantom space U+2581 instead of marking
  continuations: a continuation `##x` is stored as `x`, a word-initial `x` as `▁x`; special
  (control) tokens keep their text.
- It splits words like BertPreTokenizer (whitespace, punctuation, ASCII symbols, CJK
  ideographs), drops control characters, and lower-cases / strips accents only when
  `tokenizer.ggml.normalizer.lowercase` / `.strip_accents` say so (default: neither), so the
  BertNormalizer's options are written out.
- With special tokens it adds BOS before and SEP after the text, as the BERT post-processor
  adds [CLS] and [SEP]: BOS is the [CLS] id.
- Known difference: to strip accents llama.cpp maps each character to the first code point of
  its canonical decomposition (unicode_cpts_normalize_nfd), where BertNormalizer keeps the
  whole decomposition and drops only combining marks. Characters whose decomposition has more
  than a base and marks (Korean Hangul syllables, some Indic vowel signs) tokenize differently,
  so strings with them are left out of verification and the report says so.
"""

from __future__ import annotations

import functools
import re
import sys
import unicodedata
from pathlib import Path
from typing import Any

import gguf

from llorch.convert.errors import ShapeMismatchError, TokenizerError
from llorch.convert.tokenizer.gguf_vocab import Vocab

PHANTOM = "\u2581"
_T = gguf.TokenType

NFD_NOTE = (
    "WordPiece: llama.cpp strips accents by keeping the first code point of each character's "
    "decomposition, so text with Korean Hangul syllables (and a few Indic vowel signs) "
    "tokenizes differently from tokenizer.json; those strings are not verified"
)


@functools.cache
def nfd_differences() -> re.Pattern[str]:
    """Characters llama.cpp's one-code-point NFD strips differently from BertNormalizer: their
    decomposition has more than a base followed by combining marks (Mn)."""
    found = []
    for cp in range(sys.maxunicode + 1):
        ch = chr(cp)
        nfd = unicodedata.normalize("NFD", ch)
        if len(nfd) > 1 and any(unicodedata.category(c) != "Mn" for c in nfd[1:]):
            found.append(cp)
    ranges: list[tuple[int, int]] = []
    for cp in found:
        if ranges and ranges[-1][1] == cp - 1:
            ranges[-1] = (ranges[-1][0], cp)
        else:
            ranges.append((cp, cp))
    body = "".join(f"{re.escape(chr(a))}-{re.escape(chr(b))}" for a, b in ranges)
    return re.compile(f"[{body}]")


def is_wordpiece(tokenizer_json: dict[str, Any]) -> bool:
    return (tokenizer_json.get("model") or {}).get("type") == "WordPiece"


def _normalizer(node: dict[str, Any] | None, where: Path) -> tuple[bool, bool]:
    """(lowercase, strip_accents) of a BertNormalizer; anything llama.cpp cannot do is refused."""
    if node is None:
        return False, False
    if node.get("type") != "BertNormalizer":
        raise TokenizerError(
            f"{where}: WordPiece normalizer {node.get('type')!r} is not supported (llama.cpp's "
            "WordPiece tokenizer implements BertNormalizer only)"
        )
    for key in ("clean_text", "handle_chinese_chars"):
        if node.get(key) is False:
            raise TokenizerError(
                f"{where}: BertNormalizer with {key}=false is not supported (llama.cpp always "
                "drops control characters and splits CJK ideographs)"
            )
    lowercase = bool(node.get("lowercase", True))
    strip = node.get("strip_accents")
    return lowercase, lowercase if strip is None else bool(strip)


def _check_pre_tokenizer(node: dict[str, Any] | None, where: Path) -> None:
    if node is None or node.get("type") != "BertPreTokenizer":
        kind = None if node is None else node.get("type")
        raise TokenizerError(
            f"{where}: WordPiece pre-tokenizer {kind!r} is not supported (llama.cpp's WordPiece "
            "tokenizer splits like BertPreTokenizer)"
        )


def _id(tokens: list[str], text: str | None, where: Path, role: str) -> int | None:
    if text is None:
        return None
    try:
        return tokens.index(text)
    except ValueError:
        raise TokenizerError(f"{where}: {role} token {text!r} is not in the vocabulary") from None


def _token_text(value: Any) -> str | None:
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


def wordpiece_vocab(
    json_path: Path,
    tok_json: dict[str, Any],
    tok_cfg: dict[str, Any],
    n_vocab: int,
    chat_template: str | list[dict[str, str]] | None,
) -> Vocab:
    """The GGUF vocabulary of a WordPiece tokenizer.json."""
    model = tok_json["model"]
    prefix = model.get("continuing_subword_prefix", "##")
    if prefix != "##":
        raise TokenizerError(
            f"{json_path}: WordPiece continuing_subword_prefix {prefix!r} is not supported "
            "(llama.cpp's WordPiece tokenizer assumes '##')"
        )
    lowercase, strip_accents = _normalizer(tok_json.get("normalizer"), json_path)
    _check_pre_tokenizer(tok_json.get("pre_tokenizer"), json_path)
    vocab_map: dict[str, int] = model["vocab"]
    size = max(vocab_map.values()) + 1 if vocab_map else 0
    tokens = [""] * size
    for text, idx in vocab_map.items():
        tokens[idx] = text
    types = [int(_T.NORMAL)] * size
    for entry in tok_json.get("added_tokens", []):
        idx = int(entry["id"])
        while idx >= len(tokens):
            tokens.append("")
            types.append(int(_T.UNUSED))
        tokens[idx] = entry["content"]
        types[idx] = int(_T.CONTROL if entry.get("special") else _T.USER_DEFINED)
    if len(tokens) > n_vocab:
        raise ShapeMismatchError(
            f"{json_path}: tokenizer has {len(tokens)} tokens but the embedding has {n_vocab} rows"
        )
    tokens += [""] * (n_vocab - len(tokens))
    types += [int(_T.UNUSED)] * (n_vocab - len(types))
    source = list(tokens)
    stored = [_phantom(t, k) for t, k in zip(tokens, types, strict=True)]
    for i, text in enumerate(stored):
        if text == "":
            stored[i], types[i] = f"[PAD{i}]", int(_T.UNUSED)
    if len(set(stored)) != len(stored):
        raise TokenizerError(f"{json_path}: two WordPiece tokens map to the same llama.cpp text")
    return Vocab(
        kind="wordpiece",
        ggml_model="bert",
        tokens=tuple(stored),
        types=tuple(types),
        scores=None,
        merges=(),
        pre=None,
        special_ids=_special_ids(json_path, source, tok_json, tok_cfg),
        add_bos=True,  # [CLS]; llama.cpp's WordPiece tokenizer also adds [SEP] after the text
        add_eos=False,
        add_space_prefix=None,
        chat_template=chat_template,
        files=(json_path,),
        lowercase=lowercase,
        strip_accents=strip_accents,
        differs=nfd_differences() if strip_accents else None,
        notes=(NFD_NOTE,) if strip_accents else (),
    )


def _phantom(text: str, kind: int) -> str:
    if text == "" or kind != _T.NORMAL:
        return text
    return text[2:] if text.startswith("##") else PHANTOM + text


def _special_ids(
    where: Path, tokens: list[str], tok_json: dict[str, Any], tok_cfg: dict[str, Any]
) -> dict[str, int]:
    """bos=[CLS], sep, unk, pad, mask: tokenizer_config.json first, then tokenizer.json."""
    post = (tok_json.get("post_processor") or {}).get("special_tokens") or {}
    defaults = {
        "cls": "[CLS]" if "[CLS]" in post else None,
        "sep": "[SEP]" if "[SEP]" in post else None,
        "unk": tok_json["model"].get("unk_token"),
    }
    ids: dict[str, int] = {}
    for role, key in (("cls", "bos"), ("sep", "sep"), ("unk", "unk"), ("pad", "pad")):
        text = _token_text(tok_cfg.get(f"{role}_token")) or defaults.get(role)
        idx = _id(tokens, text, where, role)
        if idx is not None:
            ids[key] = idx
    mask = _id(tokens, _token_text(tok_cfg.get("mask_token")), where, "mask")
    if mask is not None:
        ids["mask"] = mask
    for needed in ("bos", "sep"):
        if needed not in ids:
            raise TokenizerError(
                f"{where}: no {'[CLS]' if needed == 'bos' else '[SEP]'} token (cls_token / "
                "sep_token in tokenizer_config.json); llama.cpp adds both around every text"
            )
    return ids
