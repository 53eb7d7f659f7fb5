"""Check that the written GGUF tokenizes like the source tokenizer.

The GGUF is loaded vocab-only through llama.cpp and a built-in corpus is tokenized by both
llama.cpp and the source tokenizer (`tokenizers` for tokenizer.json, `sentencepiece` for
tokenizer.model). Both sides tokenize without adding BOS/EOS and with special tokens in the
text recognised. The first differing string fails the conversion, with one exception, which is
reported rather than fatal (`TokenDifference`, kind "legacy-spacing"): llama.cpp strips the
whitespace next to a special token that it marks rstrip/lstrip (it does so for Phi-3 by
model name, as Phi-3's added tokens declare `rstrip` in tokenizer_config.json), where
SentencePiece's legacy mode keeps it as an extra `▁` after the token. A difference counts as
that case only when the reference, given the text with exactly that whitespace removed,
tokenizes as llama.cpp does; a string without special tokens is always compared strictly.

SentencePiece reference semantics follow the Hugging Face slow tokenizer (and llama.cpp):
the text is split at special tokens and each piece in between is encoded on its own, so each
gets the dummy-prefix space. XLM-RoBERTa's `sentencepiece.bpe.model` is read the same way, its
ids moved to fairseq's (ugm.fairseq_id), as transformers' XLMRobertaTokenizer does.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from llorch.convert import llamacpp
from llorch.convert.errors import VerificationError
from llorch.convert.tokenizer import ugm
from llorch.convert.tokenizer.gguf_vocab import Vocab, special_texts

Strip = tuple[bool, bool]  # (lstrip, rstrip) of a special token in llama.cpp

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
class TokenDifference:
    """A known, documented tokenizer-library difference found on one string."""

    kind: str  # "legacy-spacing"
    text: str
    llama_cpp: tuple[str, ...]  # pieces
    source: tuple[str, ...]
    explanation: str

    def to_json(self) -> dict[str, object]:
        return {
            "kind": self.kind,
            "text": self.text,
            "llama_cpp": list(self.llama_cpp),
            "source": list(self.source),
            "explanation": self.explanation,
        }

    def note(self) -> str:
        return (
            f"tokenizer {self.kind} difference on {self.text!r}: llama.cpp "
            f"{list(self.llama_cpp)} vs source {list(self.source)} ({self.explanation})"
        )


@dataclass(frozen=True)
class VerifyResult:
    strings: int
    tokens: int
    differences: tuple[TokenDifference, ...] = ()


def special_splitter(vocab: Vocab) -> re.Pattern[str] | None:
    """Special tokens as a capturing alternation, longest first (as llama.cpp matches them)."""
    specials = sorted(set(special_texts(vocab)), key=len, reverse=True)
    return re.compile("(" + "|".join(re.escape(s) for s in specials) + ")") if specials else None


def _spm_reference(
    vocab: Vocab, to_id: Callable[[int], int] = lambda i: i
) -> Callable[[str], list[int]]:
    import sentencepiece

    sp = sentencepiece.SentencePieceProcessor(model_file=str(vocab.files[0]))
    ids = {t: i for i, t in enumerate(vocab.tokens)}
    splitter = special_splitter(vocab)

    def encode(text: str) -> list[int]:
        parts = splitter.split(text) if splitter else [text]
        out: list[int] = []
        for part in parts:
            if not part:
                continue
            if part in ids and splitter is not None and splitter.fullmatch(part):
                out.append(ids[part])
            else:
                out.extend(to_id(i) for i in sp.encode(part))
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


_C_SPACE = " \t\n\v\f\r"  # what llama.cpp's isspace() strips next to a special token


def strip_at_specials(text: str, splitter: re.Pattern[str], strip: Mapping[str, Strip]) -> str:
    """`text` with the whitespace removed that llama.cpp strips next to special tokens."""
    parts = splitter.split(text)  # odd indices are the special tokens
    for i in range(1, len(parts), 2):
        lstrip, rstrip = strip.get(parts[i], (False, False))
        if lstrip:
            parts[i - 1] = parts[i - 1].rstrip(_C_SPACE)
        if rstrip and i + 1 < len(parts):
            parts[i + 1] = parts[i + 1].lstrip(_C_SPACE)
    return "".join(parts)


def known_difference(
    text: str,
    got: list[int],
    reference: Callable[[str], list[int]],
    splitter: re.Pattern[str] | None,
    strip: Mapping[str, Strip],
    pieces: Sequence[str],
) -> TokenDifference | None:
    """The documented difference that explains llama.cpp's `got`, or None (a real bug).

    Only SentencePiece text containing special tokens qualifies, and only when the reference
    tokenizes the text with llama.cpp's stripped whitespace removed exactly as llama.cpp does.
    """
    if splitter is None or not splitter.search(text):
        return None
    stripped = strip_at_specials(text, splitter, strip)
    if stripped == text or reference(stripped) != got:
        return None
    names = sorted({t for t in splitter.findall(text) if any(strip.get(t, ()))})
    return TokenDifference(
        kind="legacy-spacing",
        text=text,
        llama_cpp=tuple(pieces[i] for i in got),
        source=tuple(pieces[i] for i in reference(text)),
        explanation=(
            f"llama.cpp strips the whitespace next to {', '.join(names)} (its lstrip/rstrip "
            "token attributes); SentencePiece's legacy mode keeps it as an extra '▁'"
        ),
    )


def verify_tokenizer(gguf_path: Path, vocab: Vocab, extra: Sequence[str] = ()) -> VerifyResult:
    """Tokenize the corpus both ways; raise VerificationError on the first unexplained
    difference. Known legacy-spacing differences (SentencePiece only) are returned."""
    spm = vocab.kind == "sentencepiece"
    if spm:
        reference = _spm_reference(vocab)
    elif vocab.files[0].name == ugm.FAIRSEQ_FILE:
        reference = _spm_reference(vocab, ugm.fairseq_id)
    else:
        reference = _bpe_reference(vocab)
    splitter = special_splitter(vocab) if spm else None
    texts = [t for t in corpus_for(vocab) + list(extra) if vocab.verifiable(t)]
    total = 0
    differences: list[TokenDifference] = []
    with llamacpp.load_model(gguf_path, vocab_only=True) as model:
        tokenizer = llamacpp.vocab(model)
        strip = llamacpp.strip_attributes(tokenizer, vocab.tokens, special_texts(vocab))
        for text in texts:
            want = reference(text)
            got = tokenizer.tokenize(text, add_special=False, parse_special=True)
            if got != want:
                known = known_difference(text, got, reference, splitter, strip, vocab.tokens)
                if known is not None:
                    differences.append(known)
                    total += len(got)
                    continue
                first = next(
                    (i for i, (a, b) in enumerate(zip(got, want, strict=False)) if a != b),
                    min(len(got), len(want)),
                )
                raise VerificationError(
                    f"{gguf_path}: llama.cpp tokenizes {text!r} differently from "
                    f"{vocab.files[0].name} (tokenizer {vocab.ggml_model}, pre-tokenizer "
                    f"{vocab.pre or 'none'}): first "
                    f"difference at token {first}: llama.cpp {got[first : first + 6]} vs "
                    f"source {want[first : first + 6]}"
                )
            total += len(got)
    return VerifyResult(strings=len(texts), tokens=total, differences=tuple(differences))
