"""M-RoPE images on a hybrid recurrent model, on the tiny random Qwen 3.5 (tests/tiny_vlm.py,
family "qwen3.5": Gated DeltaNet layers beside full attention; one 112 x 112 image is 16
tokens on a 4 x 4 grid, which take 4 positions).

- The greedy tokens of a text + image + text prompt equal llama.cpp's own path for it
  (mtmd_tokenize, mtmd_helper_eval_chunks, then one token at a time at the next position).
- Prefix reuse through context checkpoints (backend/checkpoints.py: a recurrent state cannot
  be cut back, so the latest checkpoint at or before the shared prefix is restored): a prompt
  that shares the first past its checkpoints, in the text after the image, restores one taken
  after the image and answers as a fresh backend does; so does a second turn, and a prompt
  that shares the text before the image only.
"""

from __future__ import annotations

import pytest
import tiny_vlm
from support import THREADS

from llorch.worker.backend.llama import LlamaCppBackend
from llorch.worker.backend.protocol import (
    LoadOptions,
    position,
)
from llorch.worker.backend.slots import common_prefix

pytestmark = pytest.mark.slow

HEAD = "<|im_start|>user\ndescribe the image in one sentence please "
TAIL = (
    " the quick brown fox jumps over the lazy dog 123 4567 a red square on a white background,"
    " a blue circle, green lines, the quick brown fox jumps over the lazy dog<|im_end|>\n"
    "<|im_start|>assistant\n"
)
N = 12
SIZE = tiny_vlm.QWEN35_IMAGE_SIZE
EVERY = 16  # a checkpoint every 16 prompt tokens: several after the image


@pytest.fixture(scope="module")
def vlm(tmp_path_factory: pytest.TempPathFactory) -> tiny_vlm.TinyVlm:
    return tiny_vlm.cached(tmp_path_factory.getbasetemp(), "qwen3.5")


def _options(vlm: tiny_vlm.TinyVlm) -> LoadOptions:
    return LoadOptions(
        ctx_size=512, parallel=1, threads=THREADS, mmproj=vlm.mmproj, checkpoint_every=EVERY
    )


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
            assert span.length == 16 and span.n_pos == 4
            assert position(spans, len(tokens)) == len(tokens) - 12
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


def test_prefix_reuse_restores_checkpoints_at_positions(vlm: tiny_vlm.TinyVlm) -> None:
    picture, _ = tiny_vlm.image(2, size=SIZE)
    other, _ = tiny_vlm.image(3, size=SIZE)
    backend = LlamaCppBackend()
    backend.load(vlm.text, _options(vlm))
    try:
        first, spans = _prompt(backend, picture)
        image_end = spans[0].start + spans[0].length
        answer, _ = _run(backend, first, spans)
        checkpoints = backend.decoder()._checkpoints
        assert checkpoints is not None and checkpoints.enabled
        taken = [c.n_tokens for c in checkpoints.of(0)]
        assert any(n > image_end for n in taken), taken
        cases = []
        # shares the first prompt up to a point in the text after the image, past checkpoints
        third, third_spans = _prompt(backend, picture, TAIL.replace("lazy dog<", "red cat<"))
        shared = common_prefix(first, third)
        want = max(n for n in taken if n <= shared)
        assert image_end < want < shared < len(first), (image_end, want, shared, taken)
        restored = checkpoints.restored
        tokens, end = _run(backend, third, third_spans)
        assert checkpoints.restored == restored + 1
        assert end.prompt_cached == want
        cases.append((third, third_spans, tokens))
        # a second turn that extends the first (read on from the end of the first prompt)
        again, _ = _run(backend, first, spans)
        assert again == answer
        more = backend.tokenize("<|im_end|>\n<|im_start|>user\nand the fox?", False, True)
        second = (*first, *answer, *more)
        turn, end = _run(backend, second, spans)
        assert end.prompt_cached >= len(first) - 4 - EVERY
        cases.append((second, spans, turn))
        # shares the text before the image only
        fourth, fourth_spans = _prompt(backend, other)
        tokens, end = _run(backend, fourth, fourth_spans)
        assert end.prompt_cached <= spans[0].start
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
