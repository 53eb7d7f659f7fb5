"""An audio clip's length read from its container before anything is decoded
(worker/audio_header.py), and the media loader's refusals built on it (worker/media.py):
WAV as Python's own `wave` module writes it and as float WAV, MPEG-1 Layer III frames laid
out by their standard header, FLAC's STREAMINFO; a clip that lies about its length, one in an
encoding miniaudio does not read, one over --max-audio-seconds, one whose part names another
format."""

from __future__ import annotations

import base64
import io
import struct
import wave

import numpy as np
import pytest
from tiny_alm import float_wav

from llorch.worker import audio_header
from llorch.worker.audio_header import AudioHeaderError
from llorch.worker.media import MediaError, MediaLimits, MediaRef, load_audio


def pcm16_wav(seconds: float, rate: int = 16000, channels: int = 1) -> bytes:
    out = io.BytesIO()
    with wave.open(out, "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(b"\0\0" * channels * round(seconds * rate))
    return out.getvalue()


# MPEG-1 Layer III, 128 kbit/s, 44.1 kHz, no CRC, stereo: 417 bytes a frame (418 padded)
MP3_HEADER = bytes([0xFF, 0xFB, 0x90, 0x00])
MP3_FRAME = MP3_HEADER + bytes(417 - 4)


def test_wav_lengths_from_the_header():
    assert audio_header.read(pcm16_wav(2.5)).seconds == pytest.approx(2.5)
    stereo = audio_header.read(pcm16_wav(1.0, rate=44100, channels=2))
    assert (stereo.format, stereo.sample_rate, stereo.channels) == ("wav", 44100, 2)
    assert stereo.seconds == pytest.approx(1.0)
    assert audio_header.read(float_wav(np.zeros(8000))).seconds == pytest.approx(0.5)


def test_a_wav_that_lies_or_is_not_read_is_refused():
    clip = pcm16_wav(1.0)
    with pytest.raises(AudioHeaderError, match="truncated"):
        audio_header.read(clip[:-100])
    huge = bytearray(clip)  # a data chunk claiming 4 GiB (miniaudio would allocate it)
    at = huge.index(b"data") + 4
    huge[at : at + 4] = struct.pack("<I", 0xFFFFFFF0)
    with pytest.raises(AudioHeaderError, match="truncated"):
        audio_header.read(bytes(huge))
    adpcm = bytearray(clip)
    fmt = adpcm.index(b"fmt ") + 8
    adpcm[fmt : fmt + 2] = struct.pack("<H", 0x0011)  # IMA ADPCM
    with pytest.raises(AudioHeaderError, match="not read"):
        audio_header.read(bytes(adpcm))
    with pytest.raises(AudioHeaderError, match="without a data chunk"):
        audio_header.read(clip[: clip.index(b"data")])


def test_mp3_frames_are_counted_past_tags_and_junk():
    frames = MP3_FRAME * 100
    assert audio_header.read(frames).seconds == pytest.approx(100 * 1152 / 44100)
    id3 = b"ID3\x04\x00\x00" + bytes([0, 0, 0, 10]) + bytes(10)
    junk = b"\x00\x01junk\xff\x00"  # a decoder resyncs past it, and so does the count
    clip = id3 + MP3_FRAME * 50 + junk + MP3_FRAME * 50 + b"TAG" + bytes(125)
    header = audio_header.read(clip)
    assert header.seconds == pytest.approx(100 * 1152 / 44100)
    assert (header.format, header.sample_rate, header.channels) == ("mp3", 44100, 2)
    with pytest.raises(AudioHeaderError, match="Layer III"):
        audio_header.read(b"ID3\x04\x00\x00\x00\x00\x00\x00" + bytes(100))


def test_flac_length_from_streaminfo():
    rate, channels, bits, total = 48000, 2, 16, 48000 * 3
    packed = rate << 44 | (channels - 1) << 41 | (bits - 1) << 36 | total
    streaminfo = bytes(10) + packed.to_bytes(8, "big") + bytes(16)
    clip = b"fLaC" + bytes([0x80]) + len(streaminfo).to_bytes(3, "big") + streaminfo
    header = audio_header.read(clip)
    assert (header.seconds, header.sample_rate, header.channels) == (3.0, 48000, 2)
    unknown = b"fLaC" + clip[4:18] + (rate << 44).to_bytes(8, "big") + bytes(16)
    with pytest.raises(AudioHeaderError, match="length"):
        audio_header.read(unknown)


def test_not_audio():
    assert audio_header.sniff(b"\x89PNG\r\n\x1a\n" + bytes(10)) is None
    with pytest.raises(AudioHeaderError, match="wav, mp3, flac"):
        audio_header.read(b"OggS" + bytes(40))


def _ref(data: bytes, fmt: str | None = "wav") -> MediaRef:
    return MediaRef(base64.b64encode(data).decode(), "p", True, "audio", fmt)


def test_the_loader_bounds_the_length_and_checks_the_format():
    clip = pcm16_wav(3.0)
    loaded = load_audio(_ref(clip), MediaLimits())
    assert (loaded.format, loaded.data) == ("wav", clip)
    assert loaded.seconds == pytest.approx(3.0)
    with pytest.raises(MediaError, match=r"3\.0 s long; at most 2 s \(--max-audio-seconds\)"):
        load_audio(_ref(clip), MediaLimits(max_audio_seconds=2))
    with pytest.raises(MediaError, match="the part says mp3, its data is wav"):
        load_audio(_ref(clip, "mp3"), MediaLimits())
    with pytest.raises(MediaError, match="p: the audio data is not valid base64"):
        load_audio(MediaRef("@@@", "p", True, "audio", "wav"), MediaLimits())
    with pytest.raises(MediaError, match="p: a truncated WAV"):
        load_audio(_ref(clip[:-10]), MediaLimits())
