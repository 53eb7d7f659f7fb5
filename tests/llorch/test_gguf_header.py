"""The header reader against gguf's own GGUFReader: every field and tensor of a file with every
value type, and of the real SmolLM2 GGUF (a 49,152-token vocabulary); values rewritten in
place, read back by GGUFReader."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gguf
import numpy as np
import pytest

from llorch.gguf_header import GGUFHeaderError, StringArray, read_header, rewrite_values


def reference(path: Path) -> tuple[dict[str, Any], list[tuple[str, tuple[int, ...], int, int]]]:
    """What GGUFReader reads: fields (string arrays as their length) and tensors."""
    reader = gguf.GGUFReader(path)
    fields: dict[str, Any] = {}
    for name, field in reader.fields.items():
        if name.startswith("GGUF."):  # the reader's own entries for the preamble
            continue
        if field.types[0] == gguf.GGUFValueType.ARRAY and field.types[-1] == (
            gguf.GGUFValueType.STRING
        ):
            fields[name] = StringArray(len(field.data))
        elif field.types[0] == gguf.GGUFValueType.ARRAY:
            fields[name] = tuple(field.contents())
        else:
            fields[name] = field.contents()
    tensors = [
        (t.name, tuple(int(d) for d in t.shape), int(t.tensor_type), int(t.n_bytes), t.data_offset)
        for t in reader.tensors
    ]
    return fields, tensors


def check(path: Path) -> None:
    header = read_header(path)
    fields, tensors = reference(path)
    assert header.fields == fields
    got = [(t.name, t.shape, int(t.type), t.n_bytes, t.offset) for t in header.tensors]
    assert got == tensors


def every_type(path: Path) -> Path:
    writer = gguf.GGUFWriter(path, "llama")
    writer.add_uint8("t.u8", 250)
    writer.add_int8("t.i8", -100)
    writer.add_uint16("t.u16", 65000)
    writer.add_int16("t.i16", -32000)
    writer.add_uint32("t.u32", 4_000_000_000)
    writer.add_int32("t.i32", -2_000_000_000)
    writer.add_float32("t.f32", 0.25)
    writer.add_uint64("t.u64", 1 << 60)
    writer.add_int64("t.i64", -(1 << 60))
    writer.add_float64("t.f64", 1e-300)
    writer.add_bool("t.bool", True)
    writer.add_string("t.str", "Grüße ✓")
    writer.add_array("t.ints", [1, -2, 3])
    writer.add_array("t.floats", [0.5, 1.5])
    writer.add_array("t.bools", [True, False, True])
    writer.add_array("t.strings", ["a", "", "ünï", "x" * 300])
    writer.add_array("t.empty", [])
    rng = np.random.default_rng(0)
    writer.add_tensor("blk.0.w", rng.standard_normal((4, 32)).astype(np.float32))
    writer.add_tensor("blk.1.w", rng.standard_normal((3, 64)).astype(np.float16))
    q8 = gguf.quantize(
        rng.standard_normal((2, 64)).astype(np.float32), gguf.GGMLQuantizationType.Q8_0
    )
    writer.add_tensor("out", q8, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_every_value_type_and_tensor_type(tmp_path: Path) -> None:
    path = every_type(tmp_path / "all.gguf")
    check(path)
    header = read_header(path)
    assert header.fields["t.strings"] == StringArray(4)
    whole = read_header(path, strings=lambda key: key == "t.strings").fields
    assert whole["t.strings"] == ("a", "", "ünï", "x" * 300)
    assert whole == header.fields | {"t.strings": whole["t.strings"]}
    assert header.int_field("t.ints") == 3 and header.int_field("absent", 7) == 7


def test_the_real_chat_model() -> None:
    from llorch.worker.models import chat_model_path

    path = chat_model_path()
    check(path)
    assert read_header(path).fields["tokenizer.ggml.tokens"] == StringArray(49152)


@pytest.mark.parametrize("data", [b"", b"GGUF", b"GGML" + bytes(20), b"GGUF\x03\0\0\0" + bytes(7)])
def test_what_is_not_a_header_is_refused(tmp_path: Path, data: bytes) -> None:
    path = tmp_path / "bad.gguf"
    path.write_bytes(data)
    with pytest.raises(GGUFHeaderError):
        read_header(path)


def test_a_cut_file_is_refused(tmp_path: Path) -> None:
    from llorch.worker.models import chat_model_path

    path = tmp_path / "cut.gguf"
    path.write_bytes(chat_model_path().read_bytes()[:100_000])  # inside the vocabulary
    with pytest.raises(GGUFHeaderError):
        read_header(path)


def test_values_rewritten_in_place(tmp_path: Path) -> None:
    path = every_type(tmp_path / "all.gguf")
    before = path.read_bytes()
    new = {"t.u32": 7, "t.i64": -5, "t.f32": 0.125, "t.f64": 2.5, "t.str": "Grüße ✗"}
    rewrite_values(path, new)
    after = path.read_bytes()
    assert len(after) == len(before)
    fields, tensors = reference(path)
    for key, value in new.items():
        assert fields[key] == (pytest.approx(value) if isinstance(value, float) else value)
    # nothing else moved: every other field as it was, the tensor bytes untouched
    path.write_bytes(before)
    was, was_tensors = reference(path)
    assert {k: v for k, v in fields.items() if k not in new} == {
        k: v for k, v in was.items() if k not in new
    }
    assert tensors == was_tensors
    changed = sum(a != b for a, b in zip(before, after, strict=True))
    assert 0 < changed <= sum(len(str(v).encode()) + 8 for v in new.values())


@pytest.mark.parametrize(
    "values",
    [{"absent": 1}, {"t.ints": 1}, {"t.str": "shorter"}, {"t.u32": "x"}, {"t.u8": 1, "t.str": 2}],
)
def test_a_value_that_does_not_fit_writes_nothing(tmp_path: Path, values: dict) -> None:
    path = every_type(tmp_path / "all.gguf")
    before = path.read_bytes()
    with pytest.raises(GGUFHeaderError):
        rewrite_values(path, values)
    assert path.read_bytes() == before
