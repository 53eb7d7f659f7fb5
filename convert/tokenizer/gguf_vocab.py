"""The GGUF vocabulary: what the converter writes (`Vocab`, built from a Hugging Face folder's
tokenizer files by hf_tokenizer.py and wordpiece.py) and how it is written (`write_vocab`)."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import gguf

from llorch.convert.tokenizer import fim_tokens

_T = gguf.TokenType

# gguf 0.19.0 (the pinned gguf-py) predates the BertNormalizer keys that llama.cpp reads
# (src/llama-arch.cpp LLM_KV_TOKENIZER_NORMALIZER_*); use gguf's constants once it has them.
LOWERCASE_KEY: str = getattr(
    gguf.Keys.Tokenizer, "NORMALIZER_LOWERCASE", "tokenizer.ggml.normalizer.lowercase"
)
STRIP_ACCENTS_KEY: str = getattr(
    gguf.Keys.Tokenizer, "NORMALIZER_STRIP_ACCENTS", "tokenizer.ggml.normalizer.strip_accents"
)


@dataclass(frozen=True)
class Vocab:
    kind: str  # "sentencepiece", "bpe", "wordpiece" or "unigram"
    ggml_model: str  # tokenizer.ggml.model: "llama", "gpt2", "bert", "gemma4" or "t5"
    tokens: tuple[str, ...]
    types: tuple[int, ...]
    scores: tuple[float, ...] | None
    merges: tuple[str, ...]
    pre: str | None
    special_ids: dict[str, int]  # bos, eos, unk, pad, ..., fim_pre (fim_tokens.py)
    add_bos: bool
    add_eos: bool
    add_space_prefix: bool | None
    chat_template: str | list[dict[str, str]] | None
    files: tuple[Path, ...]  # the files the reference tokenizer is loaded from
    notes: tuple[str, ...] = field(default=())
    # WordPiece only: BertNormalizer options, which llama.cpp reads from the GGUF
    lowercase: bool | None = None
    strip_accents: bool | None = None
    # characters llama.cpp is known to tokenize differently (named in notes): not verified
    differs: re.Pattern[str] | None = None
    # Unigram (ugm.py): a pair's separator after the first text's EOS, SentencePiece's
    # whitespace collapsing and its precompiled normalisation map
    add_sep: bool | None = None
    remove_extra_whitespaces: bool | None = None
    precompiled_charsmap: bytes = b""

    def verifiable(self, text: str) -> bool:
        return self.differs is None or self.differs.search(text) is None


def write_vocab(vocab: Vocab, writer: gguf.GGUFWriter) -> None:
    writer.add_tokenizer_model(vocab.ggml_model)
    if vocab.pre is not None:
        writer.add_tokenizer_pre(vocab.pre)
    writer.add_token_list(list(vocab.tokens))
    writer.add_token_types(list(vocab.types))
    if vocab.scores is not None:
        writer.add_token_scores(list(vocab.scores))
    if vocab.merges:
        writer.add_token_merges(list(vocab.merges))
    setters: dict[str, Callable[[int], None]] = {
        "bos": writer.add_bos_token_id,
        "eos": writer.add_eos_token_id,
        "unk": writer.add_unk_token_id,
        "pad": writer.add_pad_token_id,
        "eot": writer.add_eot_token_id,
        "eom": writer.add_eom_token_id,
        "sep": writer.add_sep_token_id,
        "mask": writer.add_mask_token_id,
        **{role: partial(writer.add_uint32, key) for role, key in fim_tokens.KEYS.items()},
    }
    for name, idx in vocab.special_ids.items():
        setters[name](idx)
    writer.add_add_bos_token(vocab.add_bos)
    writer.add_add_eos_token(vocab.add_eos)
    if vocab.add_space_prefix is not None:
        writer.add_add_space_prefix(vocab.add_space_prefix)
    if vocab.chat_template is not None:
        writer.add_chat_template(vocab.chat_template)
    if vocab.add_sep is not None:
        writer.add_add_sep_token(vocab.add_sep)
    if vocab.remove_extra_whitespaces is not None:
        writer.add_remove_extra_whitespaces(vocab.remove_extra_whitespaces)
    if vocab.precompiled_charsmap:
        writer.add_precompiled_charsmap(vocab.precompiled_charsmap)
    if vocab.ggml_model == "bert":
        writer.add_add_sep_token(True)
        writer.add_bool(LOWERCASE_KEY, bool(vocab.lowercase))
        writer.add_bool(STRIP_ACCENTS_KEY, bool(vocab.strip_accents))


def special_texts(vocab: Vocab) -> list[str]:
    """Tokens llama.cpp matches in text when parsing specials (control and user-defined)."""
    wanted = {int(_T.CONTROL), int(_T.USER_DEFINED), int(_T.UNKNOWN)}
    return [t for t, k in zip(vocab.tokens, vocab.types, strict=True) if k in wanted and t]


__all__ = ["LOWERCASE_KEY", "STRIP_ACCENTS_KEY", "Vocab", "special_texts", "write_vocab"]
