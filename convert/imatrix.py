"""Importance matrices: computed through llama.cpp's evaluation callback, read and written in
llama.cpp's formats, and handed to its quantizer.

What is collected follows tools/imatrix/imatrix.cpp (IMatrixCollector::collect_imatrix) in
the vendored llama.cpp: for every matrix multiplication whose weight is a `blk.*` tensor and
whose input is F32 with at least 16 rows, the sum over rows of each input column's square;
for MUL_MAT_ID (mixture of experts) the sum per expert, over the tokens routed to it, with a
count per expert. The text is cut into chunks of `chunk` tokens (the first token of each
replaced by BOS when the vocabulary adds one), each evaluated from an empty cache with every
position's logits requested (so the last layer runs on every token, as there); but for the
first chunk's, a decode stops once the last weight's input is read (_Collector).

The file format is llama.cpp's GGUF imatrix (`general.type = imatrix`, `imatrix.datasets`,
`imatrix.chunk_count`, `imatrix.chunk_size`; per weight `<name>.in_sum2` F32 [n, n_mat] and
`<name>.counts` F32 [1, n_mat]); the legacy `.dat` format is read too. `quantizer_data` is
what tools/quantize/quantize.cpp (load_imatrix) passes to `llama_model_quantize_params.imatrix`:
each sum divided by its count.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import os
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gguf
import numpy as np

from llorch import atomic, keys
from llorch.convert.errors import ConversionError, ImatrixError
from llorch.cpus import default_threads

DEFAULT_CHUNK = 512
GGUF_SUFFIX = ".imatrix.gguf"
# llama.cpp's keys (common/imatrix-loader.h, LLM_KV_IMATRIX_*)
KEY_DATASETS = "imatrix.datasets"
KEY_CHUNK_COUNT = "imatrix.chunk_count"
KEY_CHUNK_SIZE = "imatrix.chunk_size"
MIN_ROWS = 16  # imatrix.cpp ignores smaller batches (src1->ne[1] < 16)


@dataclass
class Entry:
    """One weight's sums of squared inputs: `sums` (n_mat, n) float64, `counts` (n_mat,)."""

    sums: np.ndarray
    counts: np.ndarray


@dataclass
class Imatrix:
    entries: dict[str, Entry] = field(default_factory=dict)
    datasets: list[str] = field(default_factory=list)
    chunk_count: int = 0
    chunk_size: int = 0
    legacy: bool = False  # read from a .dat: sums are already means times the chunk count
    inputs: str | None = None  # llorch.keys.IMATRIX_INPUTS, when convert-batch wrote it

    def quantizer_data(self) -> dict[str, np.ndarray]:
        """Per weight, the float32 values llama.cpp's quantizer weighs each column by."""
        out: dict[str, np.ndarray] = {}
        for name, e in self.entries.items():
            sums = e.sums.astype(np.float32)
            if self.legacy:
                ncall = float(e.counts[0]) if e.counts.size else 0.0
                out[name] = (sums / np.float32(ncall) if ncall > 0 else sums).reshape(-1)
                continue
            counts = np.rint(e.counts).astype(np.float32)
            vals = np.ones_like(sums)  # an expert no token reached weighs every column alike
            seen = counts > 0
            vals[seen] = sums[seen] / counts[seen, None]
            out[name] = vals.reshape(-1)
        return out


# --- reading and writing -------------------------------------------------------------------


def load(path: str | os.PathLike[str]) -> Imatrix:
    """An imatrix from llama.cpp's GGUF format, or its legacy `.dat` one."""
    path = Path(path)
    try:
        with path.open("rb") as f:
            magic = f.read(4)
    except OSError as exc:
        raise ImatrixError(f"{path}: cannot read the imatrix ({exc.strerror})") from exc
    if magic == b"GGUF":
        return _load_gguf(path)
    return _load_legacy(path)


def _load_gguf(path: Path) -> Imatrix:
    reader = gguf.GGUFReader(path)

    def value(key: str) -> Any:
        f = reader.get_field(key)
        return None if f is None else f.contents()

    sums: dict[str, np.ndarray] = {}
    counts: dict[str, np.ndarray] = {}
    for t in reader.tensors:
        if t.tensor_type != gguf.GGMLQuantizationType.F32:
            raise ImatrixError(f"{path}: {t.name} is {t.tensor_type.name}, not F32")
        data = np.asarray(t.data, dtype=np.float32)
        if t.name.endswith(".in_sum2"):
            sums[t.name.removesuffix(".in_sum2")] = data.reshape(-1)
        elif t.name.endswith(".counts"):
            counts[t.name.removesuffix(".counts")] = data.reshape(-1)
    if not sums or set(sums) != set(counts):
        odd = sorted(set(sums) ^ set(counts))
        raise ImatrixError(
            f"{path}: not an imatrix (no entries)"
            if not sums
            else f"{path}: sums without counts or counts without sums: {', '.join(odd)}"
        )
    entries = {}
    for name, s in sums.items():
        c = counts[name].astype(np.float64)
        entries[name] = Entry(s.astype(np.float64).reshape(c.size, -1), c)
    datasets = value(KEY_DATASETS)
    inputs = value(keys.IMATRIX_INPUTS)
    return Imatrix(
        entries,
        [str(d) for d in datasets] if datasets is not None else [],
        int(value(KEY_CHUNK_COUNT) or 0),
        int(value(KEY_CHUNK_SIZE) or 0),
        inputs=str(inputs) if inputs is not None else None,
    )


def _load_legacy(path: Path) -> Imatrix:
    """common_imatrix_load_legacy: n_entries, then per entry name, ncall, nval, nval floats;
    optionally the chunk count and the dataset's name."""
    data = path.read_bytes()
    pos = 0

    def take(fmt: str) -> tuple[Any, ...]:
        nonlocal pos
        size = struct.calcsize(fmt)
        if pos + size > len(data):
            raise ImatrixError(f"{path}: not an imatrix (GGUF or legacy .dat): truncated")
        out = struct.unpack_from(fmt, data, pos)
        pos += size
        return out

    (n_entries,) = take("<i")
    if n_entries < 1:
        raise ImatrixError(f"{path}: not an imatrix (GGUF or legacy .dat): no entries")
    out = Imatrix(legacy=True)
    for _ in range(n_entries):
        (length,) = take("<i")
        if length < 0 or length > 4096:
            raise ImatrixError(f"{path}: not an imatrix (GGUF or legacy .dat)")
        name = bytes(take(f"<{length}s")[0]).decode("utf-8", "replace")
        ncall, nval = take("<ii")
        if nval < 1:
            raise ImatrixError(f"{path}: entry {name!r} has no values")
        values = np.frombuffer(data, dtype="<f4", count=nval, offset=pos).astype(np.float64)
        pos += 4 * nval
        if pos > len(data):
            raise ImatrixError(f"{path}: truncated in entry {name!r}")
        out.entries[name] = Entry(values.reshape(1, -1), np.array([float(ncall)]))
    if pos + 4 <= len(data):
        (out.chunk_count,) = take("<i")
        if pos + 4 <= len(data):
            (length,) = take("<i")
            if length > 0 and pos + length <= len(data):
                out.datasets.append(data[pos : pos + length].decode("utf-8", "replace"))
    return out


def save(imatrix: Imatrix, path: str | os.PathLike[str]) -> Path:
    """Written in llama.cpp's GGUF imatrix format (entries in name order), atomically."""
    path = Path(path)
    if imatrix.legacy:
        raise ImatrixError("a legacy .dat imatrix keeps no counts; it cannot be written as GGUF")
    with atomic.temp_path(path, ".tmp") as tmp:
        w = gguf.GGUFWriter(tmp, arch=None)  # type: ignore[arg-type]
        w.kv_data[0].pop(gguf.Keys.General.ARCHITECTURE, None)  # an imatrix has none
        w.add_type("imatrix")
        w.add_array(KEY_DATASETS, list(imatrix.datasets))
        w.add_uint32(KEY_CHUNK_COUNT, imatrix.chunk_count)
        w.add_uint32(KEY_CHUNK_SIZE, imatrix.chunk_size)
        if imatrix.inputs is not None:
            w.add_string(keys.IMATRIX_INPUTS, imatrix.inputs)
        for name in sorted(imatrix.entries):
            e = imatrix.entries[name]
            w.add_tensor(f"{name}.in_sum2", e.sums.astype(np.float32))
            w.add_tensor(f"{name}.counts", e.counts.astype(np.float32).reshape(-1, 1))
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
        os.replace(tmp, path)
    return path


# --- computing -----------------------------------------------------------------------------


class _Tensor(ctypes.Structure):
    """struct ggml_tensor (ggml/include/ggml.h): GGML_MAX_DIMS 4, GGML_MAX_OP_PARAMS 64,
    GGML_MAX_SRC 10, GGML_MAX_NAME 64."""

    _fields_ = [
        ("type", ctypes.c_int),
        ("buffer", ctypes.c_void_p),
        ("ne", ctypes.c_int64 * 4),
        ("nb", ctypes.c_size_t * 4),
        ("op", ctypes.c_int),
        ("op_params", ctypes.c_int32 * 16),
        ("flags", ctypes.c_int32),
        ("src", ctypes.c_void_p * 10),
        ("view_src", ctypes.c_void_p),
        ("view_offs", ctypes.c_size_t),
        ("data", ctypes.c_void_p),
        ("name", ctypes.c_char * 64),
        ("extra", ctypes.c_void_p),
        ("padding", ctypes.c_char * 8),
    ]


def _ggml() -> Any:
    """libggml-base from llama-cpp-python's lib folder: op names and tensor reads."""
    import llama_cpp

    lib = ctypes.CDLL(str(Path(llama_cpp.__file__).parent / "lib" / "libggml-base.so"))
    lib.ggml_op_name.argtypes, lib.ggml_op_name.restype = [ctypes.c_int], ctypes.c_char_p
    lib.ggml_nbytes.argtypes, lib.ggml_nbytes.restype = [ctypes.c_void_p], ctypes.c_size_t
    lib.ggml_backend_tensor_get.argtypes = [
        ctypes.c_void_p,
        ctypes.c_void_p,
        ctypes.c_size_t,
        ctypes.c_size_t,
    ]
    lib.ggml_backend_tensor_get.restype = None
    return lib


def _weight_name(name: bytes) -> str:
    """filter_tensor_name: "CUDA0#blk.0.attn_k.weight#0" -> "blk.0.attn_k.weight"."""
    text = name.decode("utf-8", "replace")
    if "#" in text:
        text = text.split("#")[1]
    return text


class _Collector:
    """The evaluation callback's state: sums per weight, as IMatrixCollector keeps them.

    Every decode is the same graph (a whole chunk), so the first one, run to its end, counts
    the inputs read; a later decode is stopped after as many (returning false from the
    callback ends ggml_backend_sched's pass over the graph): what follows the last `blk.*`
    weight, the output norm and the output matrix over every position's logits, is not
    computed, as nothing is read from it. For a small model with a large vocabulary that is
    most of the work (a 46M-parameter Llama with 32,000 tokens: 4.2 of 7.7 GFLOP a chunk of
    128; measured, its 76 chunks 6.4 -> 3.1 s on two cores)."""

    GGML_TYPE_F32 = 0

    def __init__(self) -> None:
        self.lib = _ggml()
        self.ops: dict[int, str] = {}
        self.entries: dict[str, Entry] = {}
        self.error: BaseException | None = None
        self.read_now = 0  # inputs read in the current decode
        self.per_decode: int | None = None  # inputs the whole graph gives (the first decode)

    def op(self, t: _Tensor) -> str:
        name = self.ops.get(t.op)
        if name is None:
            name = self.ops[t.op] = (self.lib.ggml_op_name(t.op) or b"").decode()
        return name

    def read(self, ptr: int, dtype: Any) -> np.ndarray:
        """A tensor's elements as an array of shape (ne3, ne2, ne1, ne0), through its strides."""
        t = _Tensor.from_address(ptr)
        nbytes = int(self.lib.ggml_nbytes(ptr))
        buf = np.empty(nbytes, dtype=np.uint8)
        self.lib.ggml_backend_tensor_get(ptr, buf.ctypes.data, 0, nbytes)
        shape = tuple(int(t.ne[i]) for i in (3, 2, 1, 0))
        strides = tuple(int(t.nb[i]) for i in (3, 2, 1, 0))
        # A view of `buf`, which is this call's own copy of the tensor (callers convert it).
        return np.lib.stride_tricks.as_strided(buf.view(dtype), shape, strides, writeable=False)

    def __call__(self, ptr: int, ask: bool, user_data: Any) -> bool:
        del user_data
        try:
            needed = self._collect(ptr, ask)
            if ask or not needed:
                return needed
            self.read_now += 1
            return self.read_now != self.per_decode  # false: the rest is not computed
        except BaseException as exc:  # an exception cannot cross the C callback
            self.error = self.error or exc
            return False

    def _collect(self, ptr: int, ask: bool) -> bool:
        t = _Tensor.from_address(ptr)
        op = self.op(t)
        if op not in ("MUL_MAT", "MUL_MAT_ID"):
            return False
        src0 = _Tensor.from_address(t.src[0])
        src1 = _Tensor.from_address(t.src[1])
        name = _weight_name(src0.name)
        if ask:
            if op == "MUL_MAT_ID":
                return True
            return (
                src1.ne[1] >= MIN_ROWS
                and src1.type == self.GGML_TYPE_F32
                and name.startswith("blk.")
            )
        x = self.read(t.src[1], np.float32).astype(np.float64)  # (ne3, ne2, ne1, ne0)
        n0 = x.shape[-1]
        if op == "MUL_MAT_ID":
            ids = self.read(t.src[2], np.int32)[0, 0]  # (n_tokens, n_ids)
            n_as = int(src0.ne[2])
            e = self.entries.setdefault(
                name, Entry(np.zeros((n_as, n0)), np.zeros(n_as, dtype=np.float64))
            )
            rows = x[0]  # (n_tokens, ne1, n0)
            n_ids = ids.shape[1]
            slot = np.arange(n_ids) % rows.shape[1]
            picked = rows[:, slot, :]  # (n_tokens, n_ids, n0): the input each expert got
            np.add.at(e.sums, ids.reshape(-1), (picked**2).reshape(-1, n0))
            e.counts += np.bincount(ids.reshape(-1), minlength=n_as)
        else:
            n_mat = int(src0.ne[2] * src0.ne[3])
            e = self.entries.setdefault(
                name, Entry(np.zeros((n_mat, n0)), np.zeros(1, dtype=np.float64))
            )
            sq = (x**2).sum(axis=2)  # (ne3, ne2, n0)
            for i3 in range(x.shape[0]):
                for i2 in range(x.shape[1]):
                    mat = (i3 % int(src0.ne[3])) * int(src0.ne[2]) + (i2 % int(src0.ne[2]))
                    e.sums[mat] += sq[i3, i2]
            e.counts += x.shape[0] * x.shape[1] * x.shape[2] // n_mat
        if not np.isfinite(e.sums).all():
            raise ImatrixError(f"non-finite activations into {name}")
        return True


def tokenize_calibration(model: Any, text: str) -> list[int]:
    """The calibration text as llama-imatrix tokenizes it: special tokens added (BOS), special
    token text not parsed."""
    from llorch.convert import llamacpp

    return list(llamacpp.vocab(model).tokenize(text, add_special=True, parse_special=False))


@dataclass(frozen=True)
class Progress:
    chunk: int
    chunks: int
    first: int = 0  # chunks taken from a progress file: this run started after them


# --- progress kept across a kill ---------------------------------------------------------
# compute(partial=...) saves the sums every `save_every` chunks (llama-imatrix's
# --output-frequency is 10 too) in float64, so a rerun that finds them continues and ends
# with the same sums, to the bit, as a run that was never stopped. The file names what it was
# computed from; another model, text or chunking starts over.
PARTIAL_SUFFIX = ".partial.npz"
DEFAULT_SAVE_EVERY = 10


def partial_path(output: str | os.PathLike[str]) -> Path:
    """Where the progress towards `output` is kept."""
    output = Path(output)
    return output.with_name(output.name + PARTIAL_SUFFIX)


def _save_partial(path: Path, entries: dict[str, Entry], done: int, identity: str) -> None:
    names = sorted(entries)
    arrays: dict[str, np.ndarray] = {
        "meta": np.array(json.dumps({"identity": identity, "done": done})),
        "names": np.array(names, dtype=str),
    }
    for i, name in enumerate(names):
        arrays[f"s{i}"], arrays[f"c{i}"] = entries[name].sums, entries[name].counts
    with atomic.temp_path(path, ".tmp") as tmp:
        with tmp.open("wb") as f:
            np.savez(f, **arrays)  # type: ignore[arg-type]
        os.replace(tmp, path)


def _load_partial(path: Path, identity: str) -> tuple[dict[str, Entry], int] | None:
    """The sums and the chunks done, if `path` holds progress on the same inputs."""
    try:
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
            if meta.get("identity") != identity:
                return None
            names = [str(n) for n in z["names"]]
            entries = {n: Entry(z[f"s{i}"], z[f"c{i}"]) for i, n in enumerate(names)}
            return entries, int(meta["done"])
    except (OSError, ValueError, KeyError, TypeError):  # absent, torn or not ours
        return None


def compute(
    model_path: str | os.PathLike[str],
    calibration: str | os.PathLike[str],
    *,
    chunk: int = DEFAULT_CHUNK,
    chunks: int | None = None,
    n_threads: int = 0,
    dataset: str | None = None,
    on_chunk: Callable[[Progress], None] | None = None,
    partial: str | os.PathLike[str] | None = None,
    save_every: int = DEFAULT_SAVE_EVERY,
) -> Imatrix:
    """The importance matrix of the GGUF at `model_path` on a calibration text file.

    `chunk` tokens per evaluation (llama-imatrix's --chunk/-c), at most `chunks` of them
    (default: every whole chunk of the text; at least two are needed, as there). `dataset`:
    the name recorded for the text (default: the path as given). `partial`: a progress file
    (`partial_path(output)`): the sums are saved there every `save_every` chunks, and a run
    that finds progress on the same model, text and chunking there continues from it; the
    caller removes it once the output is written."""
    from llorch.convert import llamacpp

    calibration = Path(calibration)
    try:
        text = calibration.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ImatrixError(f"{calibration}: cannot read the calibration text ({exc})") from exc
    if chunk < MIN_ROWS:
        raise ImatrixError(f"chunk {chunk}: must be at least {MIN_ROWS} tokens")
    if chunks is not None and chunks < 1:
        raise ImatrixError(f"chunks {chunks}: must be at least 1")
    if save_every < 0:
        raise ImatrixError(f"save every {save_every} chunks: must be 0 (never) or more")
    lib = llamacpp._lib()
    collector = _Collector()
    callback = lib.ggml_backend_sched_eval_callback(collector)
    threads = n_threads or default_threads()
    with llamacpp.load_model(Path(model_path)) as model:
        tokens = tokenize_calibration(model, text)
        if len(tokens) < 2 * chunk:
            raise ImatrixError(
                f"{calibration}: {len(tokens)} tokens; at least {2 * chunk} are needed for "
                f"chunks of {chunk} (give a longer text or a smaller --chunk)"
            )
        n_chunks = len(tokens) // chunk if chunks is None else min(chunks, len(tokens) // chunk)
        first, identity = 0, ""
        keep = Path(partial) if partial is not None else None
        if keep is not None:
            stat = Path(model_path).stat()
            made_from = {
                "model": [str(Path(model_path).resolve()), stat.st_size, stat.st_mtime_ns],
                "text": hashlib.sha256(text.encode()).hexdigest(),
                "chunks": [chunk, n_chunks],
            }
            identity = json.dumps(made_from, sort_keys=True)
            kept = _load_partial(keep, identity)
            if kept is not None and kept[1] <= n_chunks:
                collector.entries, first = kept
        vocab = llamacpp.vocab(model)
        bos = vocab.bos() if lib.llama_vocab_get_add_bos(vocab.pointer) else None
        cparams = lib.llama_context_default_params()
        cparams.n_ctx = cparams.n_batch = chunk
        cparams.n_ubatch = min(chunk, 512)  # llama-imatrix's default micro-batch
        cparams.n_threads = cparams.n_threads_batch = threads
        cparams.cb_eval = callback
        cparams.cb_eval_user_data = None
        ctx = lib.llama_init_from_model(model, cparams)
        if not ctx:
            raise ConversionError(f"{model_path}: llama.cpp could not create a context")
        batch = lib.llama_batch_init(chunk, 0, 1)
        try:
            for c in range(first, n_chunks):
                part = tokens[c * chunk : (c + 1) * chunk]
                if bos is not None:
                    part[0] = bos
                lib.llama_memory_clear(lib.llama_get_memory(ctx), True)
                collector.read_now = 0
                for i, tok in enumerate(part):
                    batch.token[i], batch.pos[i] = tok, i
                    batch.n_seq_id[i], batch.seq_id[i][0], batch.logits[i] = 1, 0, 1
                batch.n_tokens = len(part)
                rc = lib.llama_decode(ctx, batch)
                if collector.error is not None:
                    raise collector.error
                if rc != 0:
                    raise ConversionError(f"{model_path}: llama_decode failed with {rc}")
                if collector.per_decode is None:
                    collector.per_decode = collector.read_now
                if on_chunk is not None:
                    on_chunk(Progress(c + 1, n_chunks, first))
                if keep is not None and save_every > 0 and (c + 1) % save_every == 0:
                    _save_partial(keep, collector.entries, c + 1, identity)
        finally:
            lib.llama_batch_free(batch)
            lib.llama_free(ctx)
    if not collector.entries:
        raise ImatrixError(f"{model_path}: no matrix multiplication of a blk.* weight was seen")
    return Imatrix(
        collector.entries,
        [dataset if dataset is not None else str(calibration)],
        n_chunks,
        chunk,
    )


def sha256(path: str | os.PathLike[str]) -> str:
    """The calibration text's digest, for provenance."""
    h = hashlib.sha256()
    with Path(path).open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def is_imatrix_file(path: Path) -> bool:
    """An imatrix file (GGUF, or legacy by its .dat suffix) rather than a calibration text."""
    with path.open("rb") as f:
        head = f.read(4)
    return head == b"GGUF" or path.suffix == ".dat"


def resolve(
    arg: str | os.PathLike[str], model_path: Path, **compute_kw: Any
) -> tuple[Imatrix, str]:
    """--imatrix's value: an imatrix file (GGUF or legacy .dat) is read; anything else is a
    calibration text computed on `model_path`. Returns it and the name llama-quantize records
    (quantize.imatrix.file): the file as given, or the calibration text."""
    path = Path(arg)
    if not path.is_file():
        raise ImatrixError(f"{path}: no such imatrix or calibration text file")
    if is_imatrix_file(path):
        return load(path), str(arg)
    return compute(model_path, path, **compute_kw), str(arg)
