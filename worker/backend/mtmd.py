"""Images and audio in, through llama.cpp's mtmd library (the projector file, `--mmproj`).

A projector turns an image into embeddings of the text model's width; mtmd preprocesses the
image as the model's own processor does (resize, normalise, tiles) and wraps it in the
family's markup (Gemma 3's `<start_of_image>` … `<end_of_image>`). Here:

- `Projector.media_pieces` (any thread, as llama-server tokenizes in its HTTP threads): an
  image's text tokens and its media chunk, preprocessed but not yet encoded;
- `Projector.eval` (the model thread): encode a chunk and decode its embeddings into one
  sequence, as llama-server does (mtmd_helper_eval_chunk_single).

Inside the decoder a media chunk stands in the prompt as a run of negative placeholder ids
derived from the hash of the decoded pixels, so that prefix reuse and the host-RAM prompt
cache match an image by its content (a second turn about the same image does not encode it
again) and never confuse two images.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import llama_cpp as ll
import numpy as np
from gguf import Keys
from llama_cpp import mtmd_cpp as mt

from llorch.worker.backend.errors import InvalidRequestError, ModelLoadError
from llorch.worker.backend.protocol import DecodedImage, EncodedAudio, Media, MediaSpan

log = logging.getLogger("llorch.mtmd")


class MediaChunk:
    """One preprocessed media chunk (mtmd_input_chunk), owned: freed with the object."""

    def __init__(self, handle: int, n_tokens: int, n_pos: int) -> None:
        self._handle: int | None = handle
        self.n_tokens = n_tokens
        self.n_pos = n_pos

    @property
    def handle(self) -> int:
        assert self._handle is not None, "the chunk was freed"
        return self._handle

    def close(self) -> None:
        if self._handle is not None:
            mt.mtmd_input_chunk_free(self._handle)
            self._handle = None

    def __del__(self) -> None:
        # at interpreter exit the bindings may be gone before the chunk
        with contextlib.suppress(Exception):
            self.close()


def placeholders(digest: bytes, n: int) -> tuple[int, ...]:
    """The ids a media chunk of `n` tokens holds in the prompt: negative int32s (the prompt
    cache hashes prompts as int32), a function of the pixels' hash and the position, so two
    images share a prefix only when every one of their ids agrees."""
    seed = int.from_bytes(hashlib.sha256(digest).digest()[:8], "little")
    ids = np.random.default_rng(seed).integers(2, 2**31, size=n, dtype=np.int64)
    return tuple(int(-x) for x in ids)


@dataclass(frozen=True)
class Tile:
    """A media chunk of an image and the placeholder ids it holds in the prompt."""

    chunk: MediaChunk
    ids: tuple[int, ...]


@dataclass(frozen=True)
class Pieces:
    """An image in the prompt, as mtmd lays it out: text tokens (the family's markup) and
    media chunks (one, or one per tile where the projector cuts the image), in order, each
    chunk with its placeholder ids."""

    items: tuple[tuple[int, ...] | Tile, ...]


# A Voxtral clip is 3,000 mel frames, 1,500 after the encoder's strided convolution. The
# vendored mtmd pools those by 2 (clip.cpp, `audio_has_avgpool`) and then stacks
# `stack_factor` frames a row, padding the last: 750 / 4 makes 188 rows where its count of
# the output expects 187, and it aborts the process ("Invalid number of output tokens";
# llama.cpp issue 25496). Released Voxtrals stack 4.
VOXTRAL_POOLED_FRAMES = 750


def _check_what_mtmd_runs_wrong(path: Path) -> None:
    from llorch.gguf_header import GGUFHeaderError, read_header

    try:
        fields = read_header(path).fields
    except GGUFHeaderError:
        return  # mtmd says what it cannot read
    clip, vision, audio = Keys.Clip, Keys.ClipVision, Keys.ClipAudio
    if fields.get(clip.PROJECTOR_TYPE, fields.get(vision.PROJECTOR_TYPE)) == "llama4":
        # tools/mtmd/models/llama4.cpp leaves out the pixel shuffle's last permute: a tile's
        # tokens reach the model column by column, transformers gives them row by row
        # (tests/convert/test_llama4_projector.py: the same rows, min cosine -0.33 in order)
        log.warning(
            "%s: llama.cpp's mtmd gives Llama 4's image tokens in another order than the "
            "model was trained with; its answers about images may be worse than the model's",
            path,
        )
    kind = fields.get(audio.PROJECTOR_TYPE, fields.get(clip.PROJECTOR_TYPE))
    stack = fields.get(audio.Projector.STACK_FACTOR)
    if kind == "voxtral" and isinstance(stack, int) and stack > 0 and VOXTRAL_POOLED_FRAMES % stack:
        raise ModelLoadError(
            f"{path}: a Voxtral projector stacking {stack} frames, on which this llama.cpp's "
            "mtmd aborts (it pools the encoder's output, which Voxtral does not: llama.cpp "
            "issue 25496); serve the model without --mmproj"
        )


class Projector:
    """An mtmd context over a loaded text model."""

    def __init__(self, path: Path, model: ll.llama_model_p, threads: int, use_gpu: bool) -> None:
        if not path.is_file():
            raise ModelLoadError(f"projector file not found: {path}")
        _check_what_mtmd_runs_wrong(path)
        params = mt.mtmd_context_params_default()
        params.use_gpu = use_gpu
        params.n_threads = threads
        params.print_timings = False
        params.warmup = False
        ctx = mt.mtmd_init_from_file(str(path).encode(), model, params)
        if not ctx:
            raise ModelLoadError(
                f"llama.cpp's mtmd could not load the projector {path} for this model (a "
                "projector converted for another model, or a family this llama.cpp does not run)"
            )
        self._ctx: int | None = ctx
        self.vision = bool(mt.mtmd_support_vision(ctx))
        self.audio = bool(mt.mtmd_support_audio(ctx))
        # M-RoPE (Qwen2-VL and later): an image's tokens get 2-D positions, and the text after
        # it continues from its start plus max(columns, rows), not plus its token count
        # (MediaSpan.n_pos; the decoder places every token by protocol.position).
        self.mrope = bool(mt.mtmd_decode_use_mrope(ctx))

    @property
    def inputs(self) -> tuple[str, ...]:
        return tuple(name for name, on in (("vision", self.vision), ("audio", self.audio)) if on)

    def close(self) -> None:
        if self._ctx is not None:
            mt.mtmd_free(self._ctx)
            self._ctx = None

    def _handle(self) -> int:
        assert self._ctx is not None, "the projector is closed"
        return self._ctx

    def media_pieces(self, item: Media, param: str) -> Pieces:
        """The prompt pieces of an image or an audio clip (preprocessed here, encoded on the
        model thread)."""
        if isinstance(item, EncodedAudio):
            bitmap, digest = self._audio_bitmap(item, param)
        else:
            bitmap, digest = self._image_bitmap(item, param), item.sha256
        chunks = mt.mtmd_input_chunks_init()
        try:
            part = mt.mtmd_input_part(text=None, bitmap=bitmap)
            parts = (ctypes.POINTER(mt.mtmd_input_part) * 1)(ctypes.pointer(part))
            rc = mt.mtmd_tokenize_from_parts(self._handle(), chunks, parts, 1, False)
            if rc != 0:
                raise InvalidRequestError(
                    f"{param}: mtmd could not preprocess it (status {rc})", param=param
                )
            return self._pieces(chunks, digest, param)
        finally:
            mt.mtmd_input_chunks_free(chunks)
            mt.mtmd_bitmap_free(bitmap)

    def _image_bitmap(self, image: DecodedImage, param: str) -> int:
        if not self.vision:
            raise InvalidRequestError(
                f"{param}: this model's projector takes no images", param=param
            )
        data = (ctypes.c_uint8 * len(image.rgb)).from_buffer_copy(image.rgb)
        bitmap = mt.mtmd_bitmap_init(image.width, image.height, data)
        if not bitmap:
            raise InvalidRequestError(f"{param}: mtmd refused the image", param=param)
        return int(bitmap)

    def _audio_bitmap(self, audio: EncodedAudio, param: str) -> tuple[int, bytes]:
        """The clip decoded by mtmd's helper (miniaudio: mono, float, resampled to the
        model's rate), and the hash of those samples. Its length was checked from the
        header (worker/audio_header.py), which bounds what the decoder allocates."""
        if not self.audio:
            raise InvalidRequestError(
                f"{param}: this model's projector takes no audio", param=param
            )
        data = (ctypes.c_uint8 * len(audio.data)).from_buffer_copy(audio.data)
        ctx = cast(mt.mtmd_context_p, self._handle())  # the bindings type it; _handle an int
        bitmap = mt.mtmd_helper_bitmap_init_from_buf(ctx, data, len(data), False)
        if not bitmap:
            raise InvalidRequestError(
                f"{param}: the {audio.format} clip could not be decoded (corrupt or truncated)",
                param=param,
            )
        if not mt.mtmd_bitmap_is_audio(bitmap):  # the helper reads images too
            mt.mtmd_bitmap_free(bitmap)
            raise InvalidRequestError(f"{param}: not an audio clip", param=param)
        n_bytes = mt.mtmd_bitmap_get_n_bytes(bitmap)
        if n_bytes == 0:
            mt.mtmd_bitmap_free(bitmap)
            raise InvalidRequestError(f"{param}: the clip holds no samples", param=param)
        digest = hashlib.sha256(b"audio:")
        digest.update(ctypes.string_at(mt.mtmd_bitmap_get_data(bitmap), n_bytes))
        return int(bitmap), digest.digest()

    def _pieces(self, chunks: int, digest: bytes, param: str) -> Pieces:
        items: list[tuple[int, ...] | Tile] = []
        for i in range(mt.mtmd_input_chunks_size(chunks)):
            chunk = mt.mtmd_input_chunks_get(chunks, i)
            if mt.mtmd_input_chunk_get_type(chunk) == mt.MTMD_INPUT_CHUNK_TYPE_TEXT:
                n = ctypes.c_size_t(0)
                ptr = mt.mtmd_input_chunk_get_tokens_text(chunk, ctypes.byref(n))
                items.append(tuple(ptr[k] for k in range(n.value)))
                continue
            n_tokens = mt.mtmd_input_chunk_get_n_tokens(chunk)
            n_pos = mt.mtmd_input_chunk_get_n_pos(chunk)
            if n_pos != n_tokens and not self.mrope:
                raise InvalidRequestError(
                    f"{param}: the projector gives this image {n_pos} positions for {n_tokens} "
                    "tokens, which llorch does not decode",
                    param=param,
                )
            media = MediaChunk(mt.mtmd_input_chunk_copy(chunk), n_tokens, n_pos)
            # a tile's ids: the image's hash and the tile's place in it
            items.append(Tile(media, placeholders(digest + i.to_bytes(4, "little"), n_tokens)))
        if not any(isinstance(item, Tile) for item in items):
            raise InvalidRequestError(f"{param}: mtmd made no chunk of the image", param=param)
        return Pieces(tuple(items))

    def embeddings(self, image: DecodedImage, n_embd: int) -> list[np.ndarray]:
        """The projector's output for each chunk of `image` ((tokens, n_embd) each), as the
        decoder would get it: for checking a converted projector against its reference."""
        out = []
        for item in self.media_pieces(image, "image").items:
            if isinstance(item, Tile):
                if mt.mtmd_encode_chunk(self._handle(), item.chunk.handle) != 0:
                    raise RuntimeError("mtmd could not encode the image")
                data = mt.mtmd_get_output_embd(self._handle())
                flat = np.ctypeslib.as_array(data, shape=(item.chunk.n_tokens * n_embd,))
                out.append(flat.reshape(item.chunk.n_tokens, n_embd).copy())
        return out

    def eval(
        self, lctx: ll.llama_context_p, span: MediaSpan, pos: int, seq_id: int, n_batch: int
    ) -> None:
        """Encode the chunk and decode its embeddings into `seq_id` from position `pos` (mtmd's
        helper lays out an M-RoPE image's 2-D positions from there)."""
        chunk = span.chunk
        assert isinstance(chunk, MediaChunk)
        new_n_past = ll.llama_pos(0)
        rc = mt.mtmd_helper_eval_chunk_single(
            self._handle(),
            lctx,
            chunk.handle,
            pos,
            seq_id,
            n_batch,
            False,
            ctypes.byref(new_n_past),
        )
        if rc != 0:
            raise RuntimeError(f"mtmd could not encode or decode an image (status {rc})")


def expand(
    tokens: Sequence[int], pieces: Sequence[Pieces], marker: int
) -> tuple[tuple[int, ...], tuple[MediaSpan, ...]]:
    """The prompt with each `marker` replaced by its image's pieces, and the media spans."""
    out: list[int] = []
    spans: list[MediaSpan] = []
    images = iter(pieces)
    for token in tokens:
        if token != marker:
            out.append(token)
            continue
        for item in next(images).items:
            if isinstance(item, Tile):
                chunk = item.chunk
                n_pos = chunk.n_pos if chunk.n_pos != chunk.n_tokens else None
                spans.append(MediaSpan(len(out), len(item.ids), chunk, n_pos))
                out.extend(item.ids)
            else:
                out.extend(item)
    return tuple(out), tuple(spans)
