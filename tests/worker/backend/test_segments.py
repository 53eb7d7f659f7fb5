"""A cross-encoder's segment rows read from the memory-mapped GGUF at the header's offsets,
against gguf's own reader and dequantizer, for the table types a converted model has."""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np
import pytest

from llorch.worker.backend.segments import open_segments

Q = gguf.GGMLQuantizationType


def write(path: Path, embd_type: Q, alignment: int | None) -> None:
    rng = np.random.default_rng(0)
    writer = gguf.GGUFWriter(path, "bert")
    if alignment is not None:
        writer.add_custom_alignment(alignment)
    writer.add_array("tokenizer.ggml.tokens", [f"t{i}" for i in range(40)])
    embd = rng.standard_normal((40, 64)).astype(np.float32)
    if embd_type == Q.F32:
        writer.add_tensor("token_embd.weight", embd)
    elif embd_type == Q.F16:
        writer.add_tensor("token_embd.weight", embd.astype(np.float16))
    else:
        writer.add_tensor("token_embd.weight", gguf.quantize(embd, embd_type), raw_dtype=embd_type)
    writer.add_tensor("token_types.weight", rng.standard_normal((2, 64)).astype(np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def reference(path: Path, tokens: np.ndarray, types: np.ndarray) -> np.ndarray:
    tensors = {t.name: t for t in gguf.GGUFReader(path).tensors}
    embd, kinds = tensors["token_embd.weight"], tensors["token_types.weight"]
    table = np.asarray(gguf.quants.dequantize(embd.data, embd.tensor_type), dtype=np.float32)
    rows = np.asarray(kinds.data, dtype=np.float32)
    return table[tokens] + (rows[types] - rows[0])


@pytest.mark.parametrize("alignment", [None, 64])
@pytest.mark.parametrize("embd_type", [Q.F32, Q.F16, Q.Q8_0])
def test_rows_equal_ggufs_reader(tmp_path: Path, embd_type: Q, alignment: int | None) -> None:
    path = tmp_path / "ce.gguf"
    write(path, embd_type, alignment)
    segments = open_segments(path)
    assert segments is not None
    tokens, types = np.array([1, 39, 0, 7, 7]), np.array([0, 0, 1, 1, 0])
    np.testing.assert_array_equal(segments.rows(tokens, types), reference(path, tokens, types))
