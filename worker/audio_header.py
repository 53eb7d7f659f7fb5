"""How long an audio clip is, read from its container before a sample is decoded.

mtmd decodes audio with miniaudio (wav, mp3, flac), which sizes its output from the header:
a WAV whose `data` chunk claims 4 GiB, or a few megabytes of the shortest MP3 frames, would
make it allocate gigabytes. So the worker reads the length first, and refuses a clip that is
malformed, truncated, in an encoding miniaudio does not read, or longer than the operator
allows (`--max-audio-seconds`). Layouts: the WAVE format (RIFF chunks, `fmt ` then `data`),
MPEG-1/2/2.5 Layer III frame headers (ISO 11172-3 / 13818-3), FLAC's STREAMINFO block.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import numpy as np

FORMATS = ("wav", "mp3", "flac")

# WAVE format tags miniaudio's dr_wav decodes to float as PCM does; EXTENSIBLE names one of
# them in its sub-format.
_WAV_PCM, _WAV_FLOAT, _WAV_EXTENSIBLE = 0x0001, 0x0003, 0xFFFE
_WAV_BITS = {_WAV_PCM: (8, 16, 24, 32), _WAV_FLOAT: (32, 64)}

# Layer III: bitrates (kbit/s) by index, MPEG-1 and MPEG-2/2.5; sample rates of MPEG-1 (MPEG-2
# halves them, MPEG-2.5 quarters them). The header's bits after the sync: version (2), layer
# (2), no-CRC (1), bitrate index (4), rate index (2), padding (1), private (1), channel mode (2).
_BITRATES_V1 = (0, 32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320)
_BITRATES_V2 = (0, 8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160)
_RATES_V1 = (44100, 48000, 32000)
_BITRATES_V1_A, _BITRATES_V2_A = np.array(_BITRATES_V1), np.array(_BITRATES_V2)
_RATES_V1_A = np.array((*_RATES_V1, 1))  # index 3 is reserved (refused)


@dataclass(frozen=True)
class AudioHeader:
    format: str  # one of FORMATS
    seconds: float
    sample_rate: int
    channels: int


class AudioHeaderError(ValueError):
    """The clip cannot be read; the message says why (without the field's name)."""


def sniff(data: bytes) -> str | None:
    """The container of `data` by its first bytes (as mtmd's helper tells audio from an
    image), or None."""
    if len(data) >= 12 and data[:4] == b"RIFF" and data[8:12] == b"WAVE":
        return "wav"
    if data[:4] == b"fLaC":
        return "flac"
    if data[:3] == b"ID3" or (len(data) >= 2 and data[0] == 0xFF and data[1] & 0xE0 == 0xE0):
        return "mp3"
    return None


def read(data: bytes) -> AudioHeader:
    kind = sniff(data)
    if kind == "wav":
        return _wav(data)
    if kind == "mp3":
        return _mp3(data)
    if kind == "flac":
        return _flac(data)
    raise AudioHeaderError(f"not an audio clip llorch reads (formats: {', '.join(FORMATS)})")


def _wav(data: bytes) -> AudioHeader:
    fmt: tuple[int, int, int, int, int] | None = None
    pos = 12
    while pos + 8 <= len(data):
        chunk, size = data[pos : pos + 4], struct.unpack_from("<I", data, pos + 4)[0]
        body = pos + 8
        if chunk == b"fmt ":
            if size < 16 or body + size > len(data):
                raise AudioHeaderError("a WAV file with a short or truncated fmt chunk")
            tag, channels, rate, _, align, bits = struct.unpack_from("<HHIIHH", data, body)
            if tag == _WAV_EXTENSIBLE:
                if size < 40:
                    raise AudioHeaderError("a WAV EXTENSIBLE fmt chunk without its sub-format")
                tag = struct.unpack_from("<H", data, body + 24)[0]
            fmt = (tag, channels, rate, align, bits)
        elif chunk == b"data":
            if fmt is None:
                raise AudioHeaderError("a WAV file whose data comes before its fmt chunk")
            tag, channels, rate, align, bits = fmt
            if bits not in _WAV_BITS.get(tag, ()):
                raise AudioHeaderError(
                    f"WAV encoding {tag:#06x} at {bits} bits is not read (PCM at 8, 16, 24 or "
                    "32 bits, or 32/64-bit float)"
                )
            if not 1 <= channels <= 8 or not 1000 <= rate <= 384_000:
                raise AudioHeaderError(f"a WAV file of {channels} channels at {rate} Hz")
            if align != channels * bits // 8:
                raise AudioHeaderError(f"a WAV file whose block align {align} does not match")
            present = len(data) - body
            if size > present:
                raise AudioHeaderError(
                    f"a truncated WAV file: its data chunk claims {size} bytes, {present} follow"
                )
            return AudioHeader("wav", size / align / rate, rate, channels)
        pos = body + size + (size & 1)  # chunks are padded to an even size
    raise AudioHeaderError("a WAV file without a data chunk")


def _mp3_frames(data: bytes, start: int) -> tuple[np.ndarray, ...]:
    """Every position from `start` where a Layer III frame header stands, with its frame's
    bytes, samples, sample rate and channels (arrays, read at once: a walk byte by byte
    over megabytes of 0xFF would take seconds)."""
    raw = np.frombuffer(data, dtype=np.uint8)[start:]
    at = np.flatnonzero(raw[:-3] == 0xFF) if len(raw) >= 4 else np.zeros(0, dtype=np.intp)
    at = at[raw[at + 1] >= 0xE0]  # the sync's last 3 bits
    h = (raw[at + 1].astype(np.int64) << 8) | raw[at + 2]  # the two bytes after 0xFF
    version, layer = (h >> 11) & 3, (h >> 9) & 3
    bitrate_index, rate_index = (h >> 4) & 0xF, (h >> 2) & 3
    ok = (version != 1) & (layer == 1) & (rate_index != 3)
    ok &= (bitrate_index != 0) & (bitrate_index != 15)  # free format, forbidden
    at, h = at[ok], h[ok]
    version, bitrate_index, rate_index = version[ok], bitrate_index[ok], rate_index[ok]
    mpeg1 = version == 3
    kbps = np.where(mpeg1, _BITRATES_V1_A[bitrate_index], _BITRATES_V2_A[bitrate_index])
    rate = _RATES_V1_A[rate_index] // np.where(mpeg1, 1, np.where(version == 2, 2, 4))
    samples = np.where(mpeg1, 1152, 576)
    size = samples // 8 * kbps * 1000 // rate + ((h >> 1) & 1)
    channels = np.where((raw[at + 3] >> 6) == 3, 1, 2)
    return at + start, size, samples, rate, channels


def _mp3(data: bytes) -> AudioHeader:
    pos = 0
    if data[:3] == b"ID3" and len(data) >= 10:  # ID3v2: a syncsafe size, a footer flag
        tag = 0
        for byte in data[6:10]:
            tag = tag << 7 | (byte & 0x7F)
        pos = 10 + tag + (10 if data[5] & 0x10 else 0)
    at, size, samples, rate, channels = _mp3_frames(data, pos)
    if len(at) == 0:
        raise AudioHeaderError("an MP3 stream without a Layer III frame")
    # Frame by frame from the first; past bytes that are no frame header to the next that is
    # (a decoder resyncs there too): the sum bounds what miniaudio can decode.
    seconds = 0.0
    i = int(np.searchsorted(at, pos))
    while i < len(at):
        seconds += int(samples[i]) / int(rate[i])
        i = int(np.searchsorted(at, at[i] + size[i]))
    return AudioHeader("mp3", seconds, int(rate[0]), int(channels[0]))


def _flac(data: bytes) -> AudioHeader:
    # STREAMINFO is the first metadata block: 4 bytes of block header, then 10 bytes of block
    # and frame sizes, then 20 bits of sample rate, 3 of channels - 1, 5 of bits - 1, 36 of
    # total samples.
    if len(data) < 4 + 4 + 18 or data[4] & 0x7F != 0:
        raise AudioHeaderError("a FLAC stream without its STREAMINFO block")
    packed = int.from_bytes(data[18:26], "big")
    rate = packed >> 44
    channels = ((packed >> 41) & 7) + 1
    total = packed & ((1 << 36) - 1)
    if rate == 0 or total == 0:
        raise AudioHeaderError("a FLAC stream that does not state its length")
    return AudioHeader("flac", total / rate, rate, channels)
