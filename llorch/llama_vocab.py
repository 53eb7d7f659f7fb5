"""LlamaVocab: llama.cpp's tokenizer behind a small Python face, shared by worker and converter.

It wraps a `llama_vocab` pointer owned by a loaded model (llama_model_get_vocab) and does not
free anything: it lives no longer than that model. Every call that fills a buffer retries once
with the size llama.cpp asks for (a negative return is the size it needs), so no text, token
list or piece is ever cut short.
"""

from __future__ import annotations

import ctypes
from collections.abc import Sequence
from typing import Any

import llama_cpp as ll

# First buffer sizes; a longer result is fetched again at the size llama.cpp asks for.
TOKENIZE_SLACK = 8  # a token covers at least one byte; the slack is room for BOS/EOS
PIECE_BYTES = 64  # Gemma 3's longest piece is 48 bytes
DETOKENIZE_BYTES_PER_TOKEN = 32


class VocabError(RuntimeError):
    """llama.cpp refused to tokenize or detokenize (it returned an impossible size)."""


class TokenIdError(VocabError, IndexError):
    """A token id outside the vocabulary: llama.cpp would abort on it rather than fail."""


class LlamaVocab:
    def __init__(self, vocab: Any) -> None:
        if not vocab:
            raise VocabError("no llama_vocab: the model is not loaded")
        self._vocab = vocab
        self._n_tokens = int(ll.llama_vocab_n_tokens(vocab))

    @classmethod
    def of_model(cls, model: Any) -> LlamaVocab:
        """The vocabulary of a loaded `llama_model` pointer."""
        return cls(ll.llama_model_get_vocab(model))

    @property
    def pointer(self) -> Any:
        return self._vocab

    @property
    def n_tokens(self) -> int:
        return self._n_tokens

    def _check(self, token: int) -> None:
        if not 0 <= token < self._n_tokens:
            raise TokenIdError(
                f"token id {token} is not in the vocabulary (0..{self._n_tokens - 1})"
            )

    def tokenize(
        self, text: str, add_special: bool = True, parse_special: bool = True
    ) -> list[int]:
        """Token ids of `text`. `add_special` adds BOS/EOS as the vocabulary asks;
        `parse_special` turns special-token text (e.g. `<start_of_turn>`) into its token."""
        raw = text.encode("utf-8")
        capacity = max(1, len(raw) + TOKENIZE_SLACK)
        for _ in range(2):
            buf = (ll.llama_token * capacity)()
            n = ll.llama_tokenize(
                self._vocab, raw, len(raw), buf, capacity, add_special, parse_special
            )
            if n >= 0:
                return list(buf[:n])
            capacity = -n
        raise VocabError(f"llama_tokenize asked for {capacity} tokens twice for {len(raw)} bytes")

    def detokenize(
        self, tokens: Sequence[int], *, remove_special: bool = False, unparse_special: bool = False
    ) -> str:
        """The text of `tokens`; bytes that are not valid UTF-8 become U+FFFD."""
        for token in tokens:
            self._check(token)
        arr = (ll.llama_token * max(1, len(tokens)))(*tokens)
        capacity = PIECE_BYTES + DETOKENIZE_BYTES_PER_TOKEN * len(tokens)
        for _ in range(2):
            buf = ctypes.create_string_buffer(capacity)
            n = ll.llama_detokenize(
                self._vocab, arr, len(tokens), buf, capacity, remove_special, unparse_special
            )
            if n >= 0:
                return buf.raw[:n].decode("utf-8", "replace")
            capacity = -n
        raise VocabError(f"llama_detokenize asked for {capacity} bytes twice")

    def token_bytes(self, token: int, *, special: bool = False) -> bytes:
        """The bytes token `token` adds to the output (llama_token_to_piece); a piece may end
        inside a multi-byte character, so it is bytes, not text. `special` renders control
        tokens as their text instead of nothing."""
        self._check(token)
        capacity = PIECE_BYTES
        for _ in range(2):
            buf = ctypes.create_string_buffer(capacity)
            n = ll.llama_token_to_piece(self._vocab, token, buf, capacity, 0, special)
            if n >= 0:
                return buf.raw[:n]
            capacity = -n
        raise VocabError(f"llama_token_to_piece asked for {capacity} bytes twice")

    def token_text(self, token: int) -> str | None:
        """The vocabulary entry of `token` as stored (e.g. "<bos>"); None for LLAMA_TOKEN_NULL
        (a negative id: the vocabulary has no such token) or an empty entry."""
        if token < 0:
            return None
        self._check(token)
        text = ll.llama_vocab_get_text(self._vocab, token)
        return text.decode("utf-8", "replace") if text else None

    def bos(self) -> int:
        return int(ll.llama_vocab_bos(self._vocab))

    def eos(self) -> int:
        return int(ll.llama_vocab_eos(self._vocab))
