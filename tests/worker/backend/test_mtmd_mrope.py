"""M-RoPE images in the batch decoder, on the tiny random Qwen2.5-VL (tests/tiny_vlm.py, family
"qwen2.5-vl": one 224 x 224 image is 64 tokens on an 8 x 8 grid, which take 8 positions).

- The greedy tokens of a text + image + text prompt equal llama.cpp's own path for it
  (mtmd_tokenize, mtmd_helper_eval_chunks, then one token at a time at the next position):
  the image decoded from its start position with 2-D positions, the text after it from there
  plus 8, generated tokens after that; the same prompt tokens on both sides, two images.
- Prefix reuse counts positions, not tokens: a second turn that extends the first, a prompt
  that shares the first up to a point in the text after the image, and one that shares it
  only up to the image (another image) each reuse what they share (cut at that point's
  position) and answer as a fresh backend does.
"""

from __future__ import annotations

import pytest
import tiny_vlm
from support import THREADS

from llorch.worker.backend.llama import LlamaCppBackend
from llorch.worker.backend.protocol import (
    LoadOptions,
    MediaSpan,
    position,
)
from llorch.worker.backend.slots import common_prefix

pytestmark = pytest.mark.slow

HEAD = "<|im_start|>user\ndescribe the image in one sentence please "
TAIL = " the quick brown fox<|im_end|>\n<|im_start|>assistant\n"
N = 12
SIZE = tiny_vlm.QWEN_VL_IMAGE_SIZE


@pytest.fixture(scope="module")
def vlm(tmp_path_factory: pytest.TempPathFactory) -> tiny_vlm.TinyVlm:
    return tiny_vlm.cached(tmp_path_factory.getbasetemp(), "qwen2.5-vl")


def _options(vlm: tiny_vlm.TinyVlm) -> LoadOptions:
    return LoadOptions(ctx_size=512, parallel=1, threads=THREADS, mmproj=vlm.mmproj)


def _prompt(backend: LlamaCppBackend, picture: object, tail: str = TAIL) -> tuple:
    return tiny_vlm.media_prompt(backend, HEAD, picture, tail)


def _run(backend: LlamaCppBackend, tokens: tuple, spans: tuple) -> tuple:
    return tiny_vlm.greedy_with_media(backend, tokens, spans, N)


def test_greedy_tokens_equal_llama_cpps_mtmd_path(vlm: tiny_vlm.TinyVlm) -> None:
    backend = LlamaCppBackend()
    backend.load(vlm.text, _options(vlm))
    try:
        answers = []
        for seed in (0, 1):
            picture, _ = tiny_vlm.image(seed, size=SIZE)
            tokens, spans = _prompt(backend, picture)
            (span,) = spans
            assert isinstance(span, MediaSpan) and span.length == 64 and span.n_pos == 8
            assert position(spans, len(tokens)) == len(tokens) - 56
            text = HEAD + "<__media__>" + TAIL
            ref_prompt, expected = tiny_vlm.mtmd_greedy(vlm.text, vlm.mmproj, text, picture, N)
            assert [t for t in tokens if t >= 0] == ref_prompt
            got, _ = _run(backend, tokens, spans)
            print(f"TOKENS seed {seed}: ours {got} llama.cpp {expected}")
            assert got == expected
            answers.append(got)
        assert answers[0] != answers[1], "the answer does not depend on the image"
    finally:
        backend.close()


def test_prefix_reuse_cuts_at_positions(vlm: tiny_vlm.TinyVlm) -> None:
    picture, _ = tiny_vlm.image(2, size=SIZE)
    other, _ = tiny_vlm.image(3, size=SIZE)
    backend = LlamaCppBackend()
    backend.load(vlm.text, _options(vlm))
    try:
        first, spans = _prompt(backend, picture)
        image_end = spans[0].start + spans[0].length
        answer, _ = _run(backend, first, spans)
        more = backend.tokenize("<|im_end|>\n<|im_start|>user\nand the fox?", False, True)
        second = (*first, *answer, *more)
        turn, end = _run(backend, second, spans)
        assert end.prompt_cached >= len(first)
        cases = [(second, spans, turn)]
        # shares the first prompt up to a point in the text after the image
        third, third_spans = _prompt(backend, picture, " the quick red dog<|im_end|>\n")
        shared = common_prefix(first, third)
        assert image_end < shared < len(first)
        tokens, end = _run(backend, third, third_spans)
        assert end.prompt_cached == shared
        cases.append((third, third_spans, tokens))
        # shares the text before the image only
        fourth, fourth_spans = _prompt(backend, other)
        tokens, end = _run(backend, fourth, fourth_spans)
        assert end.prompt_cached == spans[0].start
        cases.append((fourth, fourth_spans, tokens))
    finally:
        backend.close()
    for prompt, prompt_spans, reused in cases:
        fresh = LlamaCppBackend()
        fresh.load(vlm.text, _options(vlm))
        try:
            alone, end = _run(fresh, prompt, prompt_spans)
            assert end.prompt_cached == 0
            assert reused == alone
        finally:
            fresh.close()
