"""llorch.llama_vocab.LlamaVocab on the real default model's vocabulary (Gemma 3, vocab-only)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from llorch import llama_vocab as vocab_module
from llorch.llama_vocab import LlamaVocab, TokenIdError

TEXT = "Hello <start_of_turn>user\nhi 🦙 中文 naïve — ok"


@pytest.fixture(scope="module")
def vocab(model_path: Path) -> Iterator[LlamaVocab]:
    from llorch.convert import llamacpp

    with llamacpp.load_model(model_path, vocab_only=True) as model:
        yield llamacpp.vocab(model)


def test_special_tokens_are_added_and_parsed_only_when_asked(vocab: LlamaVocab) -> None:
    with_bos = vocab.tokenize("Hello", add_special=True)
    assert with_bos[0] == vocab.bos() and vocab.token_text(vocab.bos()) == "<bos>"
    assert with_bos[1:] == vocab.tokenize("Hello", add_special=False)

    parsed = vocab.tokenize("<start_of_turn>", add_special=False)
    assert len(parsed) == 1 and vocab.token_text(parsed[0]) == "<start_of_turn>"
    as_text = vocab.tokenize("<start_of_turn>", add_special=False, parse_special=False)
    assert len(as_text) > 1 and parsed[0] not in as_text
    assert vocab.detokenize(as_text) == "<start_of_turn>"


def test_pieces_are_bytes_and_add_up_to_the_text(vocab: LlamaVocab) -> None:
    text = "hi 🦙 中文 naïve"
    ids = vocab.tokenize(text, add_special=False)
    pieces = [vocab.token_bytes(t) for t in ids]
    assert b"".join(pieces) == text.encode()
    # Gemma spells the llama emoji with byte-fallback tokens: pieces end inside a character.
    assert b"\xf0" in pieces
    assert vocab.detokenize(ids) == text


def test_results_longer_than_the_first_buffer_are_fetched_whole(
    vocab: LlamaVocab, monkeypatch: pytest.MonkeyPatch
) -> None:
    ids = vocab.tokenize(TEXT, add_special=True)
    pieces = [vocab.token_bytes(t) for t in ids]
    text = vocab.detokenize(ids)
    monkeypatch.setattr(vocab_module, "TOKENIZE_SLACK", 2 - len(TEXT.encode()))
    monkeypatch.setattr(vocab_module, "PIECE_BYTES", 1)
    monkeypatch.setattr(vocab_module, "DETOKENIZE_BYTES_PER_TOKEN", 0)
    assert vocab.tokenize(TEXT, add_special=True) == ids
    assert [vocab.token_bytes(t) for t in ids] == pieces
    assert vocab.detokenize(ids) == text and len(text.encode()) > 1


def test_token_text_and_ids_outside_the_vocabulary(vocab: LlamaVocab) -> None:
    assert vocab.n_tokens == 262144
    assert vocab.token_text(-1) is None  # LLAMA_TOKEN_NULL
    for bad in (vocab.n_tokens, -5):
        with pytest.raises(TokenIdError):
            vocab.token_bytes(bad)
        with pytest.raises(TokenIdError):
            vocab.detokenize([vocab.bos(), bad])
    with pytest.raises(TokenIdError):
        vocab.token_text(vocab.n_tokens)
