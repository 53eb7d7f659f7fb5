"""Media a request carries (images, audio), read and bounded before anything reaches the model.

A surface finds a media part and names it (`MediaRef`: where it came from and which field it
was); the engine loads and decodes it here, off the event loop: a `data:` URI, or an http(s)
URL of a host the operator listed (`--allowed-media-hosts`). Every refusal is a 400 naming
the field and why, decided as early as the bytes allow: the format and the pixel count come
from the header, so a decompression bomb (a 50,000 x 50,000 PNG of a few kilobytes) is refused
before a pixel is decoded; an audio clip's length comes from its container's header
(worker/audio_header.py), so a clip longer than `--max-audio-seconds` is refused before a
sample is decoded.

An image is decoded by Pillow; the RGB bytes and their hash go to the backend
(worker/backend/mtmd.py), which keys the image by that hash in the prompt cache. An audio clip
goes as it came, with its checked length: mtmd decodes it to the model's sample rate there.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import io
import ipaddress
import secrets
import socket
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from llorch.worker import audio_header
from llorch.worker.backend.errors import InvalidRequestError
from llorch.worker.backend.protocol import DecodedImage, EncodedAudio, Media

if TYPE_CHECKING:
    from types import ModuleType

# Formats read (Pillow's names), as llama.cpp's own loader (stb_image) reads them, WebP added.
FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "BMP")

# The marker a chat surface puts in a message's text where an image goes: random per process,
# as llama-server's (server-common.cpp, get_media_marker), so no text a client writes can
# stand for an image. `/execute` prompts are raw and use mtmd's documented marker.
CHAT_MARKER = f"<__media_{secrets.token_hex(8)}__>"
EXECUTE_MARKER = "<__media__>"  # mtmd_default_marker()


@dataclass(frozen=True)
class MediaLimits:
    """The bounds every request's media is held to (--max-media-per-request,
    --max-image-pixels, --max-audio-seconds, --allowed-media-hosts)."""

    max_per_request: int = 8
    max_image_pixels: int = 16_777_216  # 4096 x 4096
    max_audio_seconds: float = 600.0
    allowed_hosts: tuple[str, ...] = ()  # "*": any host that is not loopback or private
    max_fetch_bytes: int = 20 * 2**20
    fetch_timeout_s: float = 10.0


@dataclass(frozen=True)
class MediaRef:
    """A media part as a surface found it: a `data:` URI, an http(s) URL, or bare base64
    (`/execute`, OpenAI's `input_audio`), and the request field it came from (for errors).
    An audio part may name its container (`audio_format`: OpenAI's `input_audio.format`),
    which the bytes must then be."""

    source: str
    param: str
    bare_base64: bool = False
    kind: Literal["image", "audio"] = "image"
    audio_format: str | None = None


class MediaError(InvalidRequestError):
    """A media part refused: the message names the field and the reason."""


def check_count(refs: Sequence[MediaRef], limits: MediaLimits, param: str) -> None:
    if len(refs) > limits.max_per_request:
        raise MediaError(
            f"{param}: {len(refs)} media parts (images and audio); a request takes at most "
            f"{limits.max_per_request} (--max-media-per-request)",
            param=param,
            constraint=f"at most {limits.max_per_request} media parts",
            value=len(refs),
        )


def load_media(ref: MediaRef, limits: MediaLimits) -> Media:
    """The image or audio clip `ref` names, loaded and bounded (blocking)."""
    return load_audio(ref, limits) if ref.kind == "audio" else load_image(ref, limits)


def load_audio(ref: MediaRef, limits: MediaLimits) -> EncodedAudio:
    """The audio clip `ref` names, its container and length checked from its header."""
    data = _bytes_of(ref, limits)
    found = audio_header.sniff(data)
    if ref.audio_format is not None and found is not None and found != ref.audio_format:
        raise MediaError(
            f"{ref.param}: the part says {ref.audio_format}, its data is {found}",
            param=ref.param,
            value=ref.audio_format,
        )
    try:
        header = audio_header.read(data)
    except audio_header.AudioHeaderError as exc:
        raise MediaError(f"{ref.param}: {exc}", param=ref.param) from None
    if header.seconds > limits.max_audio_seconds:
        raise MediaError(
            f"{ref.param}: the clip is {header.seconds:.1f} s long; at most "
            f"{limits.max_audio_seconds:g} s (--max-audio-seconds)",
            param=ref.param,
            constraint=f"at most {limits.max_audio_seconds:g} seconds",
            value=round(header.seconds, 1),
        )
    return EncodedAudio(data, header.format, header.seconds)


@functools.cache
def _pillow() -> ModuleType:
    """Pillow's Image module, imported at the first image: a worker that is never sent one
    does not hold it (2 MiB resident)."""
    from PIL import Image

    # Pillow's own bomb check raises from Image.open, before the size can be reported; ours
    # (--max-image-pixels, from the same header, before any decoding) replaces it.
    Image.MAX_IMAGE_PIXELS = None
    return Image


def load_image(ref: MediaRef, limits: MediaLimits) -> DecodedImage:
    """The image `ref` names, fetched if it is a URL, decoded and hashed (blocking)."""
    return decode_image(_bytes_of(ref, limits), limits, ref.param)


def decode_image(data: bytes, limits: MediaLimits, param: str) -> DecodedImage:
    """RGB pixels of an encoded image; the format and size are checked from the header."""
    pillow = _pillow()
    try:
        image = pillow.open(io.BytesIO(data))  # reads the header only
    except pillow.UnidentifiedImageError:
        raise MediaError(
            f"{param}: not an image llorch reads (a corrupt header, or a format other than "
            f"{', '.join(FORMATS)})",
            param=param,
        ) from None
    except Exception as exc:  # a header Pillow cannot parse
        raise MediaError(f"{param}: a corrupt image header ({exc})", param=param) from None
    if image.format not in FORMATS:
        raise MediaError(
            f"{param}: {image.format} images are not read; formats: {', '.join(FORMATS)}",
            param=param,
            value=image.format,
        )
    width, height = image.size
    if width < 1 or height < 1 or width * height > limits.max_image_pixels:
        raise MediaError(
            f"{param}: the image is {width}x{height} = {width * height} pixels; at most "
            f"{limits.max_image_pixels} (--max-image-pixels)",
            param=param,
            constraint=f"width x height <= {limits.max_image_pixels}",
            value=f"{width}x{height}",
        )
    try:
        image.load()
        rgb = image.convert("RGB")  # palette, grey, alpha: as llama.cpp reads 3 channels
    except Exception as exc:  # truncated data, a bad chunk, a CRC error
        raise MediaError(
            f"{param}: a corrupt or truncated {image.format} image ({exc})", param=param
        ) from None
    pixels = rgb.tobytes()
    digest = hashlib.sha256(f"{width}x{height}:".encode() + pixels).digest()
    return DecodedImage(pixels, width, height, digest)


def _bytes_of(ref: MediaRef, limits: MediaLimits) -> bytes:
    source = ref.source.strip()
    if ref.bare_base64:
        return _base64(source, ref.param, ref.kind)
    if source.startswith("data:"):
        head, sep, payload = source.partition(",")
        if not sep or not head.endswith(";base64"):
            raise MediaError(
                f"{ref.param}: a data URI must be base64 (data:image/png;base64,...)",
                param=ref.param,
                value=head[:64],
            )
        return _base64(payload, ref.param, ref.kind)
    scheme = urllib.parse.urlsplit(source).scheme.lower()
    if scheme in ("http", "https"):
        return _fetch(source, ref.param, limits)
    raise MediaError(
        f"{ref.param}: {'an image' if ref.kind == 'image' else 'an audio clip'} is a data: "
        "URI (base64) or an http(s) URL of an allowed host",
        param=ref.param,
        value=source[:64],
    )


def _base64(text: str, param: str, kind: str = "image") -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise MediaError(f"{param}: the {kind} data is not valid base64", param=param) from None


def _private(host: str) -> bool:
    """Whether `host` resolves to a loopback, private, link-local or reserved address."""
    try:
        infos = socket.getaddrinfo(host, None)
    except OSError:
        return False  # the fetch will fail and say so
    for info in infos:
        address = ipaddress.ip_address(info[4][0])
        if not address.is_global:
            return True
    return False


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: object, **kwargs: object) -> None:
        return None  # a redirect could lead anywhere: it is an error, not followed


def _fetch(url: str, param: str, limits: MediaLimits) -> bytes:
    host = (urllib.parse.urlsplit(url).hostname or "").lower()
    listed = host in (h.lower() for h in limits.allowed_hosts)
    if not listed and "*" not in limits.allowed_hosts:
        allowed = ", ".join(limits.allowed_hosts) or "none"
        raise MediaError(
            f"{param}: images are fetched only from the hosts in --allowed-media-hosts "
            f"({allowed}); {host!r} is not one (or send a data: URI)",
            param=param,
            value=host,
        )
    if not listed and _private(host):
        raise MediaError(
            f"{param}: {host!r} is a loopback or private address; list it in "
            "--allowed-media-hosts to fetch from it",
            param=param,
            value=host,
        )
    opener = urllib.request.build_opener(_NoRedirect)
    try:
        with opener.open(url, timeout=limits.fetch_timeout_s) as response:
            data: bytes = response.read(limits.max_fetch_bytes + 1)
    except urllib.error.HTTPError as exc:
        raise MediaError(f"{param}: fetching the image got HTTP {exc.code}", param=param) from None
    except (urllib.error.URLError, OSError, TimeoutError) as exc:
        raise MediaError(f"{param}: the image could not be fetched ({exc})", param=param) from None
    if len(data) > limits.max_fetch_bytes:
        raise MediaError(f"{param}: the image is over {limits.max_fetch_bytes} bytes", param=param)
    return data


# The id that stands for an image in a tokenized prompt until the backend puts the image's
# pieces there (worker/backend/mtmd.py's placeholders are below it).
MARKER_ID = -1


def tokenize_marked(
    tokenize: Callable[[str, bool, bool], list[int]],
    text: str,
    marker: str,
    add_special: bool = True,
    parse_special: bool = True,
) -> list[int]:
    """`text` tokenized with MARKER_ID for each `marker`: the text between markers is
    tokenized piece by piece, as mtmd_tokenize does (so the tokens match llama-server's)."""
    pieces = text.split(marker)
    tokens: list[int] = []
    for i, piece in enumerate(pieces):
        if i:
            tokens.append(MARKER_ID)
        if piece or (i == 0 and add_special):
            tokens += tokenize(piece, add_special and i == 0, parse_special)
    return tokens


class MarkedVocabulary:
    """A chat vocabulary whose tokenize turns CHAT_MARKER into MARKER_ID, for building the
    prompt of a chat with images (worker/chat/prompt.py tokenizes through it)."""

    def __init__(self, inner: Any, marker: str = CHAT_MARKER) -> None:
        self._inner = inner
        self._marker = marker

    def tokenize(
        self, text: str, add_special: bool = True, parse_special: bool = True
    ) -> list[int]:
        if self._marker not in text:
            return list(self._inner.tokenize(text, add_special, parse_special))
        return tokenize_marked(self._inner.tokenize, text, self._marker, add_special, parse_special)

    def builtin_chat_template(
        self, messages: Sequence[Any], add_generation_prompt: bool = True
    ) -> str:
        return str(self._inner.builtin_chat_template(messages, add_generation_prompt))
