"""The projector as mtmd runs it against transformers: the image embeddings of the tiny Gemma 3
vision model (tests/tiny_vlm.py), its projector converted by llorch's converter, for the
same pixels given at the model's own size (no resampling to differ), row by row; and the
logits of a text+image prompt decoded by the worker's batch decoder against the reference's
at every position after the image."""

from __future__ import annotations

import numpy as np
import pytest
import tiny_vlm
from support import THREADS

from llorch.worker.backend.llama import LlamaCppBackend
from llorch.worker.backend.protocol import GenerationRequest, LoadOptions, SamplingParams

pytestmark = pytest.mark.slow

COS_MIN = 0.9999


@pytest.fixture(scope="module")
def vlm(tmp_path_factory: pytest.TempPathFactory) -> tiny_vlm.TinyVlm:
    return tiny_vlm.cached(tmp_path_factory.getbasetemp())


_image = tiny_vlm.image
_reference = tiny_vlm.reference


def test_image_embeddings_equal_the_references(vlm: tiny_vlm.TinyVlm) -> None:
    tiny_vlm.check_embeddings(vlm.text, vlm.mmproj, _reference(vlm.folder), COS_MIN)


def test_logits_after_an_image_equal_the_references(vlm: tiny_vlm.TinyVlm) -> None:
    """The batch decoder reads a text+image prompt (the image through mtmd) and gives the
    reference's next-token distribution: the last position's logits (the first generated
    token's log-probabilities) for two images."""
    import torch

    reference = _reference(vlm.folder)
    backend = LlamaCppBackend()
    backend.load(vlm.text, LoadOptions(ctx_size=256, parallel=1, mmproj=vlm.mmproj))
    try:
        for seed in (2, 3):
            image, pixel_values = _image(seed)
            head = backend.tokenize("the quick ", True, True)
            tail = backend.tokenize(" brown fox", False, True)
            tokens, spans = backend.media_prompt([*head, -1, *tail], [image], -1)
            decoder = backend.decoder()
            request = GenerationRequest(
                prompt_tokens=tokens,
                max_tokens=1,
                logprobs=5,
                media=spans,
                sampling=SamplingParams(temperature=0.0),  # no end of text drawn by chance
            )
            decoder.add("k", request)
            first = None
            for _ in range(100):  # a step at a time until the token, never forever
                for _, event in decoder.step():
                    scored = getattr(event, "scored", None)
                    if scored is not None:
                        first = scored
                    assert not hasattr(event, "error"), event
                if first is not None:
                    break
            assert first is not None, "no token came"
            # the reference: image token ids where mtmd put the embeddings
            ids = [t if t >= 0 else reference.config.image_token_id for t in tokens]  # type: ignore[attr-defined]
            # token type 1: image tokens, which attend to each other both ways (as mtmd
            # decodes them, non-causally)
            types = [int(t < 0) for t in tokens]
            with torch.no_grad():
                logits = reference(  # type: ignore[operator]
                    input_ids=torch.tensor([ids]),
                    pixel_values=torch.from_numpy(pixel_values),
                    token_type_ids=torch.tensor([types]),
                ).logits[0, -1]
            ref = torch.log_softmax(logits.float(), -1).numpy()
            top = [t.token_id for t in first.top]
            assert top == list(np.argsort(-ref)[:5])
            # the embeddings agree to a cosine of 0.9999 (llama.cpp's CPU GELU reads an F16
            # table): a few thousandths in the log-probabilities
            for alt in first.top:
                assert alt.logprob == pytest.approx(ref[alt.token_id], abs=5e-3)
    finally:
        backend.close()


def test_a_turn_past_the_window_reuses_the_image_through_a_checkpoint(
    vlm: tiny_vlm.TinyVlm,
) -> None:
    """The tiny model's first layer sees a 512-token window, which keeps only the window and a
    batch of cells: a third turn sharing only the first prompt (text, an image, text) goes
    back to the checkpoint taken in that prompt's text, after the image, so the image is not
    read again; and it answers as a fresh slot does."""
    from llorch.worker.backend.protocol import FinishEvent, SamplingParams, TokenEvent
    from llorch.worker.backend.single import generate

    options = LoadOptions(
        ctx_size=1024, parallel=1, threads=THREADS, batch_size=64, mmproj=vlm.mmproj
    )
    greedy = SamplingParams(temperature=0.0)
    image, _ = _image(4)

    def prompt(backend: LlamaCppBackend, head: str, tail: str) -> tuple[tuple[int, ...], tuple]:
        before = backend.tokenize(head, True, True)
        after = backend.tokenize(tail, False, True)
        return backend.media_prompt([*before, -1, *after], [image], -1)

    def run(backend: LlamaCppBackend, tokens: tuple[int, ...], spans: tuple, n: int) -> tuple:
        request = GenerationRequest(tokens, n, greedy, media=spans)
        events = list(generate(backend.decoder(), request))
        end = events[-1]
        assert isinstance(end, FinishEvent)
        return [e.token_id for e in events if isinstance(e, TokenEvent)], end

    head = "describe the image in one sentence please, the quick brown fox: "
    tail = " a red square on a white background, a blue circle, green lines."
    backend = LlamaCppBackend()
    backend.load(vlm.text, options)
    try:
        first, spans = prompt(backend, head, tail)
        assert len(first) >= 64  # long enough to be checkpointed (checkpoints.MIN_PROMPT)
        image_end = spans[0].start + spans[0].length
        answer, _ = run(backend, first, spans, 4)
        long = " the quick brown fox jumps over the lazy dog 123 4567" * 13
        second = (*first, *answer, *backend.tokenize(long, False, True))
        assert len(second) > 700  # the first prompt is out of the window's cells
        run(backend, second, spans, 4)
        third = (*first, *backend.tokenize(" which one?", False, True))
        tokens, end = run(backend, third, spans, 8)
        assert image_end <= end.prompt_cached < len(first)
    finally:
        backend.close()
    fresh = LlamaCppBackend()
    fresh.load(vlm.text, options)
    try:
        alone, end = run(fresh, third, spans, 8)
        assert end.prompt_cached == 0
        assert tokens == alone
    finally:
        fresh.close()
