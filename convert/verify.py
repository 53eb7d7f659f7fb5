"""Check that the written GGUF tokenizes like the source tokenizer.

The GGUF is loaded vocab-only through llama.cpp and a built-in corpus is tokenized by both
llama.cpp and the source tokenizer (`tokenizers` for tokenizer.json, `sentencepiece` for
tokenizer.model). Both sides tokenize without adding BOS/EOS and with special tokens in the
text recognised. The first differing string fails the conversion.

SentencePiece reference semantics follow the Hugging Face slow tokenizer (and llama.cpp):
the text is split at special tokens and each piece in between is encoded on its own, so each
gets the dummy-prefix space.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from llorch.convert import llamacpp
from llorch.convert.errors import VerificationError
from llorch.convert.vocab import Vocab, special_texts

CORPUS: tuple[str, ...] = (
    "Hello world",
    " Hello world",
    "The quick brown fox jumps over the lazy dog.",
    "I'm sure you'll see they've done it; we'd agree. Isn't it?",
    "Numbers: 1 12 123 1234 12345 3.14159 -42 1e10",
    "def add(a, b):\n    return a + b\n\nprint(add(1, 2))  # -> 3\n",
    "for (int i = 0; i < n; ++i) { sum += x[i]; }",
    '{"key": [1, 2, {"nested": null}], "ok": true}',
    "   leading spaces and trailing   ",
    "tabs\tand\t\tnew\nlines\n\n\nend",
    "\n\n\n",
    "   ",
    "中文测试：你好，世界！",  # noqa: RUF001 (full-width punctuation on purpose)
    "日本語のテキストです。カタカナも。",
    "한국어 문장입니다.",
    "emoji 🦙🚀👍🏽 and flags 🇫🇷",
    "Ünïcödé àccents naïve café résumé",
    "Привет, мир! Γειά σου Κόσμε",  # noqa: RUF001 (Greek on purpose)
    "mixed\u00a0nbsp and\u200bzero-width",
    "",
)


@dataclass(frozen=True)
class VerifyResult:
    strings: int
    tokens: int


def _spm_reference(vocab: Vocab) -> Callable[[str], list[int]]:
    import sentencepiece

    sp = sentencepiece.SentencePieceProcessor(model_file=str(vocab.files[0]))
    specials = sorted(set(special_texts(vocab)), key=len, reverse=True)
    ids = {t: i for i, t in enumerate(vocab.tokens)}
    splitter = (
        re.compile("(" + "|".join(re.escape(s) for s in specials) + ")") if specials else None
    )

    def encode(text: str) -> list[int]:
        parts = splitter.split(text) if splitter else [text]
        out: list[int] = []
        for part in parts:
            if not part:
                continue
            if part in ids and splitter is not None and splitter.fullmatch(part):
                out.append(ids[part])
            else:
                out.extend(sp.encode(part))
        return out

    return encode


def _bpe_reference(vocab: Vocab) -> Callable[[str], list[int]]:
    import tokenizers

    tok = tokenizers.Tokenizer.from_file(str(vocab.files[0]))
    tok.no_padding()  # a tokenizer.json may pad or truncate every encoding (BERT's often do)
    tok.no_truncation()
    return lambda text: list(tok.encode(text, add_special_tokens=False).ids)


def corpus_for(vocab: Vocab) -> list[str]:
    texts = list(CORPUS)
    specials = [s for s in special_texts(vocab) if not s.startswith("[PAD")][:8]
    for s in specials:
        texts.append(f"before {s} after")
        texts.append(f"{s}start")
    if len(specials) >= 2:
        texts.append(f"{specials[0]}{specials[1]} two in a row")
    return texts


def verify_tokenizer(gguf_path: Path, vocab: Vocab, extra: Sequence[str] = ()) -> VerifyResult:
    reference = _spm_reference(vocab) if vocab.kind == "sentencepiece" else _bpe_reference(vocab)
    texts = [t for t in corpus_for(vocab) + list(extra) if vocab.verifiable(t)]
    total = 0
    with llamacpp.load_model(gguf_path, vocab_only=True) as model:
        tokenizer = llamacpp.vocab(model)
        for text in texts:
            want = reference(text)
            got = tokenizer.tokenize(text, add_special=False, parse_special=True)
            if got != want:
                first = next(
                    (i for i, (a, b) in enumerate(zip(got, want, strict=False)) if a != b),
                    min(len(got), len(want)),
                )
                raise VerificationError(
                    f"{gguf_path}: llama.cpp tokenizes {text!r} differently from "
                    f"{vocab.files[0].name} (pre-tokenizer {vocab.pre or 'spm'}): first "
                    f"difference at token {first}: llama.cpp {got[first : first + 6]} vs "
                    f"source {want[first : first + 6]}"
                )
            total += len(got)
    return VerifyResult(strings=len(texts), tokens=total)
