"""worker/media.py without a model: what is refused before decoding, URL fetching from
allowed hosts over a real socket, and the marker tokenization llama-server's mtmd does."""

from __future__ import annotations

import base64
import hashlib
import http.server
import io
import struct
import threading
import zlib
from collections.abc import Iterator

import pytest
from PIL import Image

from llorch.worker import media
from llorch.worker.media import MediaError, MediaLimits, MediaRef

LIMITS = MediaLimits(max_per_request=2, max_image_pixels=64 * 64)


def _png(width: int, height: int, color: tuple[int, int, int] = (1, 2, 3)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (width, height), color).save(out, format="PNG")
    return out.getvalue()


def _header_only_png(width: int, height: int) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0"))


def test_an_image_decodes_to_rgb_with_a_hash_of_its_pixels() -> None:
    image = media.decode_image(_png(8, 4), LIMITS, "p")
    assert (image.width, image.height, len(image.rgb)) == (8, 4, 8 * 4 * 3)
    assert image.rgb[:3] == bytes((1, 2, 3))
    assert image.sha256 == hashlib.sha256(b"8x4:" + image.rgb).digest()
    # the same pixels in another format hash the same; other pixels do not
    out = io.BytesIO()
    Image.new("RGB", (8, 4), (1, 2, 3)).save(out, format="BMP")
    assert media.decode_image(out.getvalue(), LIMITS, "p").sha256 == image.sha256
    assert media.decode_image(_png(8, 4, (9, 9, 9)), LIMITS, "p").sha256 != image.sha256


def test_a_bomb_is_refused_from_its_header_without_decoding(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    wide = _png(65, 64)

    def never(self: Image.Image) -> None:
        raise AssertionError("the image was decoded")

    monkeypatch.setattr(Image.Image, "load", never)
    monkeypatch.setattr("PIL.ImageFile.ImageFile.load", never)
    with pytest.raises(MediaError, match="50000x50000 = 2500000000 pixels") as refused:
        media.decode_image(_header_only_png(50_000, 50_000), LIMITS, "images[3]")
    assert refused.value.param == "images[3]"
    with pytest.raises(MediaError, match="--max-image-pixels"):
        media.decode_image(wide, LIMITS, "p")


@pytest.mark.parametrize(
    ("data", "why"),
    [
        (b"GIF89a not really", "corrupt header"),
        (b"\x00" * 32, "not an image llorch reads"),
        (_png(16, 16)[:-30], "truncated"),
        (_header_only_png(4, 4), "truncated"),  # header fine, pixel data missing
    ],
)
def test_corrupt_or_truncated_images(data: bytes, why: str) -> None:
    with pytest.raises(MediaError, match=why):
        media.decode_image(data, LIMITS, "p")


def test_data_uris_and_base64() -> None:
    png = _png(2, 2)
    uri = "data:image/png;base64," + base64.b64encode(png).decode()
    assert media.load_image(MediaRef(uri, "p"), LIMITS).width == 2
    bare = MediaRef(base64.b64encode(png).decode(), "images[0]", bare_base64=True)
    assert media.load_image(bare, LIMITS).height == 2
    for bad, why in [
        ("data:image/png;base64,%%%", "not valid base64"),
        ("data:image/png,abc", "must be base64"),
        ("file:///etc/passwd", "data: URI"),
    ]:
        with pytest.raises(MediaError, match=why):
            media.load_image(MediaRef(bad, "p"), LIMITS)


def test_too_many_images() -> None:
    refs = [MediaRef("x", f"images[{i}]") for i in range(3)]
    media.check_count(refs[:2], LIMITS, "images")
    with pytest.raises(MediaError, match="at most 2"):
        media.check_count(refs, LIMITS, "images")


@pytest.fixture(scope="module")
def image_server() -> Iterator[str]:
    """A real HTTP server on loopback: /cat.png, /big.png (over the fetch limit), /moved."""
    png = _png(3, 3)

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path == "/moved":
                self.send_response(302)
                self.send_header("Location", "/cat.png")
                self.end_headers()
                return
            body = png if self.path == "/cat.png" else b"\0" * 4096
            self.send_response(200 if self.path in ("/cat.png", "/big.png") else 404)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_urls_are_fetched_only_from_listed_hosts(image_server: str) -> None:
    url = f"{image_server}/cat.png"
    with pytest.raises(MediaError, match="--allowed-media-hosts"):
        media.load_image(MediaRef(url, "p"), LIMITS)
    # any host: but loopback is private, so only by name
    anyone = MediaLimits(allowed_hosts=("*",))
    with pytest.raises(MediaError, match="loopback or private"):
        media.load_image(MediaRef(url, "p"), anyone)
    listed = MediaLimits(allowed_hosts=("127.0.0.1",), max_fetch_bytes=1024)
    assert media.load_image(MediaRef(url, "p"), listed).width == 3
    with pytest.raises(MediaError, match="over 1024 bytes"):
        media.load_image(MediaRef(f"{image_server}/big.png", "p"), listed)
    with pytest.raises(MediaError, match="HTTP 302"):
        media.load_image(MediaRef(f"{image_server}/moved", "p"), listed)
    with pytest.raises(MediaError, match="HTTP 404"):
        media.load_image(MediaRef(f"{image_server}/nope.png", "p"), listed)


def test_markers_split_the_text_as_mtmd_does() -> None:
    calls: list[tuple[str, bool, bool]] = []

    def tokenize(text: str, add_special: bool, parse_special: bool) -> list[int]:
        calls.append((text, add_special, parse_special))
        return [len(text)]

    m = media.EXECUTE_MARKER
    tokens = media.tokenize_marked(tokenize, f"ab{m}cde{m}", m)
    assert tokens == [2, media.MARKER_ID, 3, media.MARKER_ID]
    # the first piece carries the BOS (add_special), even when empty; later ones never
    assert calls == [("ab", True, True), ("cde", False, True)]
    calls.clear()
    assert media.tokenize_marked(tokenize, f"{m}x", m) == [0, media.MARKER_ID, 1]
    assert calls[0] == ("", True, True)
    vocab = media.MarkedVocabulary(type("V", (), {"tokenize": staticmethod(tokenize)})())
    assert vocab.tokenize(f"a{media.CHAT_MARKER}b", False, False) == [1, media.MARKER_ID, 1]
    assert vocab.tokenize(f"a{m}b", False, False) == [len(f"a{m}b")]  # not the chat marker
