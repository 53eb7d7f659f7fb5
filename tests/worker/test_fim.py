"""The FIM prompt against sequences derived by hand from llama-server's format_prompt_infill
(tools/server/server-common.cpp): order, repository-level context, SPM order, trimming.

Tokens are characters here (id = code point); the FIM tokens are ids past them.
"""

from __future__ import annotations

import asyncio

import pytest

from llorch.worker import fim
from llorch.worker.backend.protocol import FimTokens

PRE, SUF, MID, PAD, REP, SEP, BOS = range(1000, 1007)
SPECIALS = {"<PRE>": PRE, "<SEP>": SEP}
PLAIN = FimTokens(pre=PRE, suf=SUF, mid=MID)
REPO = FimTokens(pre=PRE, suf=SUF, mid=MID, pad=PAD, rep=REP, sep=SEP, bos=BOS)
BIG = {"n_batch": 2048, "n_predict": 16, "n_ctx": 4096}


def t(text: str) -> list[int]:
    return [ord(c) for c in text]


async def _tokenize(text: str, parse_special: bool) -> list[int]:
    out: list[int] = []
    at = 0
    while at < len(text):
        special = next((s for s in SPECIALS if parse_special and text.startswith(s, at)), None)
        if special is not None:
            out.append(SPECIALS[special])
            at += len(special)
        else:
            out.append(ord(text[at]))
            at += 1
    return out


def build(fim_tokens: FimTokens, text: fim.InfillText, **budget: int) -> fim.Infill:
    parts = asyncio.run(fim.tokenize(text, _tokenize))
    return fim.assemble(fim_tokens, parts, **{**BIG, **budget})


def test_prefix_prompt_suffix_middle_in_llama_servers_order():
    # The prompt follows the prefix, before FIM_SUF (llama-server's code, not its comment).
    got = build(PLAIN, fim.InfillText("def f(", ")\n", prompt="x, "))
    assert got.tokens == [PRE, *t("def f("), *t("x, "), SUF, *t(")\n"), MID]
    assert (got.dropped_prefix, got.dropped_suffix, got.dropped_extra) == (0, 0, 0)


def test_repository_level_context_with_rep_and_sep():
    text = fim.InfillText("a", "b", extra=(("u.py", "x = 1\n"), ("", "y")))
    got = build(REPO, text)
    assert got.tokens == [
        *[REP, *t("myproject\n")],
        *[SEP, *t("u.py\n"), *t("x = 1\n")],
        *[SEP, *t("tmp\n"), *t("y")],  # a chunk without a filename: llama-server's "tmp"
        *[SEP, *t("filename\n")],  # the current file: llama-server's fixed placeholder
        BOS,
        *[PRE, *t("a"), SUF, *t("b"), MID],
    ]


def test_chunks_without_file_separator_get_the_snippet_separator():
    text = fim.InfillText("a", "b", extra=(("u.py", "x"), ("v.py", "y")))
    sep = t("\n\n--- snippet ---\n\n")
    assert build(PLAIN, text).tokens == [*sep, *t("x"), *sep, *t("y"), PRE, 97, SUF, 98, MID]


def test_spm_order_puts_the_suffix_first():
    text = fim.InfillText("pre", "suf", prompt="p")
    parts = asyncio.run(fim.tokenize(text, _tokenize))
    got = fim.assemble(REPO, parts, **BIG, spm=True)
    tail = [BOS, SUF, *t("suf"), PRE, *t("pre"), *t("p"), MID]
    assert got.tokens[-len(tail) :] == tail


def test_prompt_parses_special_tokens_and_the_code_does_not():
    got = build(PLAIN, fim.InfillText("<PRE>", "<SEP>", prompt="<PRE>"))
    assert got.tokens == [PRE, *t("<PRE>"), PRE, SUF, *t("<SEP>"), MID]


def test_trimming_keeps_the_prefix_end_and_the_suffix_start():
    # n_batch 16: the prefix keeps its last 3 * 16 / 4 = 12 tokens, the suffix its first
    # 16 / 4 - 2 - len(prompt) = 1 (llama-server's n_prefix_take, n_suffix_take).
    prefix, suffix = "0123456789abcdefghij", "ABCDEFGH"
    got = build(PLAIN, fim.InfillText(prefix, suffix, prompt="p"), n_batch=16, n_ctx=256)
    assert got.tokens == [PRE, *t(prefix[-12:]), *t("p"), SUF, *t("A"), MID]
    assert (got.dropped_prefix, got.dropped_suffix) == (8, 7)


def test_a_prefix_that_fits_stays_whole():
    got = build(PLAIN, fim.InfillText("x" * 1536, "y"), n_batch=2048)
    assert got.dropped_prefix == 0 and got.tokens[1:1537] == t("x" * 1536)


def test_extra_context_loses_the_farthest_chunks_first():
    # n_ctx - n_batch - 2 * n_predict = 64 - 16 - 2 * 4 = 40 tokens of extra context are kept,
    # counted from the end: the first chunks (farthest from the cursor) and the repository
    # header go, the cut falling inside a chunk as llama-server's does.
    chunks = tuple((f"f{i}", "z" * 10) for i in range(5))
    text = fim.InfillText("a", "b", extra=chunks)
    parts = asyncio.run(fim.tokenize(text, _tokenize))
    extra = [REP, *t("myproject\n")]
    for name, chunk in chunks:
        extra += [SEP, *t(name + "\n"), *t(chunk)]
    extra += [SEP, *t("filename\n")]
    got = fim.assemble(REPO, parts, n_batch=16, n_predict=4, n_ctx=64)
    assert got.tokens == [*extra[-40:], BOS, PRE, 97, SUF, 98, MID]
    assert got.dropped_extra == len(extra) - 40
    assert got.tokens[:3] == [*t("zz"), SEP]  # the end of chunk 2, then chunks 3 and 4


def test_extra_context_never_pushes_past_the_context():
    # llama-server's budget with n_predict -1 is n_ctx - n_batch + 2 = 34 tokens of extra
    # context, beside 44 of prefix and prompt: 78 in a context of 64. The extra context is
    # cut to leave one token to generate.
    text = fim.InfillText("a" * 20, "b", prompt="p" * 20, extra=(("f", "z" * 100),))
    got = build(REPO, text, n_batch=32, n_predict=-1, n_ctx=64)
    assert len(got.tokens) == 63 and got.tokens[-44:-22] == [BOS, PRE, *t("a" * 20)]


def test_missing_names_the_absent_tokens():
    assert fim.missing(FimTokens()) == ["prefix", "suffix", "middle"]
    assert fim.missing(FimTokens(pre=1, mid=2)) == ["suffix"]
    assert fim.missing(PLAIN) == []
    with pytest.raises(ValueError, match="suffix"):
        fim.assemble(FimTokens(pre=1, mid=2), fim.InfillTokens((), ()), **BIG)


def test_fim_batch_is_llama_servers_default_within_half_the_context():
    assert fim.fim_batch(4096) == 2048
    assert fim.fim_batch(32768) == 2048
    assert fim.fim_batch(1024) == 512
