"""A tiny random Voxtral checkpoint (transformers' VoxtralForConditionalGeneration: a Whisper-style
audio encoder, Voxtral's projector, a Llama language model), converted by llorch's converter to
a text GGUF and its audio projector beside it, and the harness that runs mtmd on PCM samples.

The audio config is Voxtral's at small width: 128 mel bins and 1500 positions (mtmd's 30 s
chunks), so one chunk of audio is 375 rows for transformers. `stack` is the number of encoder
frames the projector stacks per row (intermediate_size / hidden_size): 4 as released. The
vendored mtmd avg-pools Voxtral's encoder output by 2 (clip-model.h `audio_has_avgpool`), which
transformers' VoxtralEncoder does not (its `avg_pooler` is never called), and with 4 frames
stacked its graph makes 188 rows where clip_encode expects 187: it aborts the process
("Invalid number of output tokens"). With `stack=2` the counts agree (375 rows per chunk) and
mtmd runs: its rows are transformers' encoder with that pooling added before the final
LayerNorm (`reference_embeddings(..., pooled=True)`), not transformers' own.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from support import THREADS

SAMPLE_RATE = 16000  # mtmd's Whisper front-end and the feature extractor's
CHUNK_ROWS = 375  # transformers' rows per 30 s chunk: 1500 positions / 4 frames
# Voxtral's tokens: mtmd puts [BEGIN_AUDIO] before an audio's embeddings
VOXTRAL_TOKENS = ["[INST]", "[/INST]", "[BEGIN_AUDIO]", "[AUDIO]"]
# Voxtral's preprocessor_config.json (WhisperFeatureExtractor at 128 mel bins)
PREPROCESSOR = {
    "feature_extractor_type": "WhisperFeatureExtractor",
    "feature_size": 128,
    "sampling_rate": SAMPLE_RATE,
    "hop_length": 160,
    "chunk_length": 30,
    "n_fft": 400,
    "n_samples": 480000,
    "nb_max_frames": 3000,
    "padding_side": "right",
    "padding_value": 0.0,
    "return_attention_mask": False,
    "dither": 0.0,
}


@dataclass(frozen=True)
class TinyAlm:
    folder: Path  # the Hugging Face checkpoint
    text: Path  # the text part, GGUF F32
    mmproj: Path  # the projector llorch wrote beside it, GGUF F32 (clip `voxtral`)


class MtmdAborted(RuntimeError):
    """mtmd ended the process that ran it (GGML_ABORT); the message holds its last output."""


def build_checkpoint(folder: Path, seed: int = 0, stack: int = 4) -> Path:
    """VoxtralForConditionalGeneration with random weights: a three-layer audio encoder of
    width 32 (the MMPROJ map numbers conv 2 and the projector's linear_2 as blocks, and
    llama.cpp's converter maps them only for an encoder of three layers or more), `stack`
    frames per projector row, the Llama text part of parity_cases'
    `voxtral-multimodal-text-part`; a byte-level BPE with Voxtral's tokens, a template that
    leaves an audio's place to the caller (mtmd's marker), Voxtral's preprocessor config."""
    import torch
    import transformers
    from tiny_vlm import _bpe, _save

    from tests.convert.parity_cases import CASES

    folder.mkdir(parents=True, exist_ok=True)
    vocab = _bpe(folder, VOXTRAL_TOKENS)
    template = (
        "{{ bos_token }}{% for m in messages %}[INST]{% if m['content'] is string %}"
        "{{ m['content'] }}{% else %}{% for p in m['content'] %}{% if p['type'] == 'text' %}"
        "{{ p['text'] }}{% endif %}{% endfor %}{% endif %}[/INST]{% endfor %}"
    )
    tokenizer_config = {
        "bos_token": "<|im_start|>",
        "eos_token": "<|endoftext|>",
        "chat_template": template,
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(tokenizer_config))
    (folder / "preprocessor_config.json").write_text(json.dumps(PREPROCESSOR))
    case = CASES["voxtral-multimodal-text-part"]
    text = {
        **case.config["text_config"],
        "vocab_size": vocab["vocab_size"],
        "bos_token_id": vocab["<|im_start|>"],
        "eos_token_id": 0,  # <|endoftext|>
    }
    audio = {
        "hidden_size": 32,
        "intermediate_size": 32 * stack,
        "num_hidden_layers": 3,
        "num_attention_heads": 2,
    }
    config = transformers.VoxtralConfig(
        text_config=text, audio_config=audio, audio_token_id=vocab["[AUDIO]"]
    )
    torch.manual_seed(seed)
    _save(transformers.VoxtralForConditionalGeneration(config), folder)
    return folder


def _built(base: Path) -> TinyAlm:
    text = base / "tiny-voxtral-f32.gguf"
    return TinyAlm(base / "hf", text, text.with_name(text.stem + "-mmproj-f32.gguf"))


def build(base: Path, stack: int = 4) -> TinyAlm:
    from llorch.convert import convert

    built = _built(base)
    build_checkpoint(built.folder, stack=stack)
    report = convert(built.folder, built.text, outtype="f32")
    assert report.mmproj is not None and Path(report.mmproj["output"]) == built.mmproj
    return built


def cached(base: Path, stack: int = 4) -> TinyAlm:
    """The model built once under `base` (pytest's session folder, getbasetemp()) for each
    `stack`: the test modules that use it share one build. stack=4 is Voxtral as released
    (the vendored mtmd aborts on it, see above); stack=2 is the one mtmd runs."""
    folder = base / ("tiny-alm" if stack == 4 else f"tiny-alm-stack{stack}")
    done = folder / "built"
    if not done.exists():
        built = build(folder, stack)
        done.touch()
        return built
    return _built(folder)


# Gemma 4 with an audio tower (E2B / E4B's layout): tests/tiny_vlm.py's "gemma4-audio", whose one
# projector file holds the vision tower (clip gemma4v) and the audio tower (clip gemma4a).
# Gemma 4's feature extractor pads the samples to a multiple of 128 and masks the padding, mtmd
# pads nothing; both make the same rows: 2.56 s (40960 samples) 255 mel frames and 64 audio
# tokens, 2.5 s (40000, padded to 40064) 249 unmasked frames and 63 tokens.
GEMMA4_SECONDS = {2.56: 64, 2.5: 63}  # seconds: audio tokens


def cached_gemma4(base: Path) -> TinyAlm:
    """The tiny random Gemma 4 with an audio tower, built and converted by llorch once under
    `base` (pytest's session folder, getbasetemp()): its folder, the text part (GGUF F32) and
    the two-tower projector beside it (`<text>-mmproj-f32.gguf`)."""
    from tiny_vlm import cached

    built = cached(base, "gemma4-audio")
    return TinyAlm(built.folder, built.text, built.mmproj)


def gemma4_features(samples: np.ndarray) -> tuple[Any, Any]:
    """Gemma 4's input features for `samples` and their mask: Gemma4AudioFeatureExtractor
    with its defaults (128 mel bins, 20 ms windows, 10 ms hops), as released."""
    import transformers

    extractor = transformers.Gemma4AudioFeatureExtractor()
    out = extractor([samples], sampling_rate=SAMPLE_RATE, return_tensors="pt")
    return out["input_features"], out["input_features_mask"]


def gemma4_reference(model: Any, features: Any, mask: Any) -> np.ndarray:
    """transformers' audio tower + audio embedder (get_audio_features) on `features`, one row
    per audio token the mask keeps."""
    import torch

    with torch.no_grad():
        out = model.model.get_audio_features(features, mask)
        rows = out.pooler_output[0][out.attention_mask[0]]
    return np.asarray(rows.float().numpy())


def pcm(seed: int, seconds: float = 2.5) -> np.ndarray:
    """Mono float32 samples at SAMPLE_RATE in -1..1: two tones and some noise."""
    t = np.arange(int(SAMPLE_RATE * seconds)) / SAMPLE_RATE
    noise = np.random.default_rng(seed).standard_normal(t.size)
    tones = 0.3 * np.sin(2 * np.pi * (220 + 110 * seed) * t) + 0.2 * np.sin(2 * np.pi * 1234 * t)
    return np.asarray(tones + 0.05 * noise, dtype=np.float32)


def reference(folder: Path) -> Any:
    import torch
    import transformers

    return transformers.VoxtralForConditionalGeneration.from_pretrained(
        folder, dtype=torch.float32
    ).eval()


def features(folder: Path, samples: np.ndarray) -> Any:
    """Voxtral's input features for `samples`: its WhisperFeatureExtractor (from the folder's
    preprocessor_config.json), one 30 s chunk of log-mel frames."""
    import transformers

    extractor = transformers.WhisperFeatureExtractor.from_pretrained(folder)
    return extractor(samples, sampling_rate=SAMPLE_RATE, return_tensors="pt").input_features


def reference_embeddings(model: Any, input_features: Any, pooled: bool = False) -> np.ndarray:
    """transformers' audio tower + projector on `input_features`, one row per audio token;
    `pooled`: with mtmd's average pooling of the encoder's frames by 2 before the final
    LayerNorm (what the vendored mtmd computes for a Voxtral projector)."""
    import torch
    import torch.nn.functional as F

    with torch.no_grad():
        if not pooled:
            out = model.get_audio_features(input_features).pooler_output
            return np.asarray(out.float().numpy())
        tower = model.model.audio_tower
        x = F.gelu(tower.conv1(input_features))
        x = F.gelu(tower.conv2(x)).permute(0, 2, 1) + tower.embed_positions.weight
        for layer in tower.layers:
            x = layer(x, attention_mask=None)
        x = F.avg_pool1d(x.transpose(1, 2), 2, 2).transpose(1, 2)
        x = tower.layer_norm(x).reshape(-1, model.config.audio_config.intermediate_size)
        return np.asarray(model.model.multi_modal_projector(x).float().numpy())


def mtmd_embeddings(text: Path, mmproj: Path, samples: np.ndarray, work: Path) -> np.ndarray:
    """mtmd's embeddings of `samples` (mtmd_bitmap_init_from_audio, mtmd_tokenize,
    mtmd_encode_chunk): one array of rows per audio chunk, concatenated. Run in a child
    process (mtmd aborts the process on a Voxtral projector it cannot run); MtmdAborted when
    it ends that way."""
    return dict(_run_mtmd(text, mmproj, samples, work, "", 0))["rows"]


def mtmd_greedy(
    text: Path, mmproj: Path, samples: np.ndarray, work: Path, prompt: str, n: int
) -> dict[str, np.ndarray]:
    """llama.cpp's own path for `prompt` with one audio where mtmd's marker is: mtmd_tokenize,
    mtmd_helper_eval_chunks from position 0, then `n` greedy tokens. `before` and `after`:
    the prompt's text tokens either side of the audio (mtmd's [BEGIN_AUDIO] in `before`),
    `rows` the audio's embeddings, `logits` the logits each greedy token was taken from,
    `tokens` the tokens."""
    return dict(_run_mtmd(text, mmproj, samples, work, prompt, n))


def _run_mtmd(
    text: Path, mmproj: Path, samples: np.ndarray, work: Path, prompt: str, n: int
) -> Any:
    work.mkdir(parents=True, exist_ok=True)
    np.save(work / "pcm.npy", samples)
    code = "import sys, tiny_alm; tiny_alm._mtmd_main(*sys.argv[1:])"
    args = [str(text), str(mmproj), str(work / "pcm.npy"), str(work / "out.npz"), prompt, str(n)]
    tests = Path(__file__).parent  # tiny_alm and support, and the repository root for llorch
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tests), str(tests.parent)])}
    done = subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, env=env
    )
    if done.returncode != 0:
        raise MtmdAborted(f"mtmd ended with {done.returncode}: {done.stderr[-2000:]}")
    return np.load(work / "out.npz")


def _mtmd_main(text: str, mmproj: str, samples: str, out: str, prompt: str, n: str) -> None:
    import ctypes

    import llama_cpp as ll
    from llama_cpp import mtmd_cpp as mt

    pcm_in = np.load(samples).astype(np.float32)
    model = ll.llama_model_load_from_file(text.encode(), ll.llama_model_default_params())
    assert model
    params = mt.mtmd_context_params_default()
    params.use_gpu, params.n_threads, params.print_timings = False, THREADS, False
    ctx = mt.mtmd_init_from_file(mmproj.encode(), model, params)
    assert ctx and mt.mtmd_support_audio(ctx)
    assert mt.mtmd_get_audio_sample_rate(ctx) == SAMPLE_RATE
    data = (ctypes.c_float * len(pcm_in)).from_buffer_copy(pcm_in.tobytes())
    bitmap = mt.mtmd_bitmap_init_from_audio(len(pcm_in), data)
    chunks = mt.mtmd_input_chunks_init()
    raw = prompt.encode() or mt.mtmd_default_marker()
    text_in = mt.mtmd_input_text(raw, len(raw), True, True)
    bitmaps = (mt.mtmd_bitmap_p_ctypes * 1)(bitmap)
    assert mt.mtmd_tokenize(ctx, chunks, ctypes.byref(text_in), bitmaps, 1) == 0
    n_embd = ll.llama_model_n_embd(model)
    rows, text_parts = [], [[], []]  # the text tokens before and after the audio
    for i in range(mt.mtmd_input_chunks_size(chunks)):
        chunk = mt.mtmd_input_chunks_get(chunks, i)
        if mt.mtmd_input_chunk_get_type(chunk) == mt.MTMD_INPUT_CHUNK_TYPE_TEXT:
            count = ctypes.c_size_t(0)
            ptr = mt.mtmd_input_chunk_get_tokens_text(chunk, ctypes.byref(count))
            text_parts[1 if rows else 0] += [ptr[k] for k in range(count.value)]
            continue
        n_rows = mt.mtmd_input_chunk_get_n_tokens(chunk)
        assert mt.mtmd_encode_chunk(ctx, chunk) == 0
        got = np.ctypeslib.as_array(mt.mtmd_get_output_embd(ctx), shape=(n_rows * n_embd,))
        rows.append(got.reshape(n_rows, n_embd).copy())
    logits, tokens = _greedy(ll, mt, model, ctx, chunks, int(n)) if int(n) else ([], [])
    np.savez(
        out,
        rows=np.concatenate(rows),
        before=np.array(text_parts[0]),
        after=np.array(text_parts[1]),
        logits=np.array(logits),
        tokens=np.array(tokens),
    )
    mt.mtmd_input_chunks_free(chunks)
    mt.mtmd_bitmap_free(bitmap)
    mt.mtmd_free(ctx)
    ll.llama_model_free(model)


def _greedy(ll: Any, mt: Any, model: Any, mctx: Any, chunks: Any, n: int) -> tuple[list, list]:
    """mtmd_helper_eval_chunks from position 0 (llama-server's and mtmd-cli's way), then `n`
    greedy tokens, each decoded at the position after the last; their logits and ids. The
    KV cache F32, as the parity tests' (F16 cells round the keys and values)."""
    import ctypes

    params = ll.llama_context_default_params()
    params.n_ctx = params.n_batch = 1024
    params.n_threads = params.n_threads_batch = THREADS
    params.type_k = params.type_v = ll.GGML_TYPE_F32  # F16 cells alone differ by 4e-3
    lctx = ll.llama_init_from_model(model, params)
    batch = ll.llama_batch_init(1, 0, 1)
    n_past = ll.llama_pos(0)
    rc = mt.mtmd_helper_eval_chunks(mctx, lctx, chunks, 0, 0, 1024, True, ctypes.byref(n_past))
    assert rc == 0
    n_vocab = ll.llama_vocab_n_tokens(ll.llama_model_get_vocab(model))
    logits, tokens, pos = [], [], n_past.value
    for _ in range(n):
        row = np.ctypeslib.as_array(ll.llama_get_logits_ith(lctx, -1), shape=(n_vocab,)).copy()
        logits.append(row)
        tokens.append(int(np.argmax(row)))
        batch.n_tokens = 1
        batch.token[0], batch.pos[0], batch.n_seq_id[0] = tokens[-1], pos, 1
        batch.seq_id[0][0], batch.logits[0] = 0, True
        assert ll.llama_decode(lctx, batch) == 0
        pos += 1
    ll.llama_batch_free(batch)
    ll.llama_free(lctx)
    return logits, tokens


# Qwen3-ASR as transformers' port saves it (Qwen3ASRForConditionalGeneration: the audio encoder,
# its projector, a Qwen3 language model): parity_cases' `qwen3-asr-multimodal-text-part`. mtmd
# puts <|audio_start|> and <|audio_end|> around an audio's rows; the processor's <|audio_pad|>
# is the audio token transformers replaces.
QWEN3ASR_TOKENS = ["<|audio_start|>", "<|audio_end|>", "<|audio_pad|>"]
QWEN3ASR_FRAMES = 100  # mel frames per chunk of the encoder (n_window 50 x 2): 13 rows each
QWEN3ASR_CHUNK_ROWS = 13


def build_qwen3asr_checkpoint(folder: Path, seed: int = 0) -> Path:
    """Qwen3ASRForConditionalGeneration with random weights, a byte-level BPE with its audio
    tokens, a ChatML template that leaves an audio's place to the caller (mtmd's marker), and
    Qwen3ASRFeatureExtractor's preprocessor_config.json with its defaults (as released)."""
    import torch
    import transformers
    from tiny_vlm import _bpe, _save

    from tests.convert.parity_cases import CASES

    folder.mkdir(parents=True, exist_ok=True)
    vocab = _bpe(folder, QWEN3ASR_TOKENS)
    template = (
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{% if m['content'] is string %}"
        "{{ m['content'] }}{% else %}{% for p in m['content'] %}{% if p['type'] == 'text' %}"
        "{{ p['text'] }}{% endif %}{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    tokenizer_config = {"eos_token": "<|im_end|>", "chat_template": template}
    (folder / "tokenizer_config.json").write_text(json.dumps(tokenizer_config))
    transformers.Qwen3ASRFeatureExtractor().save_pretrained(folder)
    case = CASES["qwen3-asr-multimodal-text-part"]
    text = {**case.config["text_config"], "vocab_size": vocab["vocab_size"]}
    config = transformers.Qwen3ASRConfig(
        text_config=text,
        audio_config=case.config["audio_config"],
        audio_token_id=vocab["<|audio_pad|>"],
        eos_token_id=vocab["<|im_end|>"],
        pad_token_id=0,  # <|endoftext|>
    )
    torch.manual_seed(seed)
    _save(transformers.Qwen3ASRForConditionalGeneration(config), folder)
    return folder


def qwen3asr_thinker_layout(folder: Path, dst: Path) -> Path:
    """The checkpoint in the original Qwen3-ASR release's layout, the one llama.cpp's converter
    reads: config.json's sections under `thinker_config`, the tensors under `thinker.`, the
    projector's linear maps inside the audio tower as `proj1`, `proj2`. The same weights."""
    import shutil

    from safetensors.torch import load_file, save_file

    shutil.copytree(folder, dst)
    config = json.loads((dst / "config.json").read_text())
    sections = {k: config.pop(k) for k in ("audio_config", "text_config", "audio_token_id")}
    (dst / "config.json").write_text(json.dumps({**config, "thinker_config": sections}))
    renames = (
        ("model.multi_modal_projector.linear_", "thinker.audio_tower.proj"),
        ("model.audio_tower.", "thinker.audio_tower."),
        ("model.language_model.", "thinker.model."),
    )
    tensors = load_file(dst / "model.safetensors")
    out = {}
    for name, value in tensors.items():
        for old, new in renames:
            if name.startswith(old):
                name = new + name.removeprefix(old)
                break
        out[name] = value
    save_file(out, dst / "model.safetensors", metadata={"format": "pt"})
    return dst


def _qwen3asr_built(base: Path) -> TinyAlm:
    text = base / "tiny-qwen3asr-f32.gguf"
    return TinyAlm(base / "hf", text, text.with_name(text.stem + "-mmproj-f32.gguf"))


def cached_qwen3asr(base: Path) -> TinyAlm:
    """The tiny random Qwen3-ASR, built and converted by llorch once under `base` (pytest's
    session folder, getbasetemp()): its folder, the text part (GGUF F32) and the projector
    beside it (clip `qwen3a`, `<text>-mmproj-f32.gguf`)."""
    from llorch.convert import convert

    folder = base / "tiny-alm-qwen3asr"
    built = _qwen3asr_built(folder)
    done = folder / "built"
    if not done.exists():
        build_qwen3asr_checkpoint(built.folder)
        report = convert(built.folder, built.text, outtype="f32")
        assert report.mmproj is not None and Path(report.mmproj["output"]) == built.mmproj
        done.touch()
    return built


def qwen3asr_features(folder: Path, samples: np.ndarray) -> tuple[Any, Any]:
    """Qwen3-ASR's input features for `samples` and their mask: its Qwen3ASRFeatureExtractor
    (from the folder's preprocessor_config.json) called as Qwen3ASRProcessor calls it (its
    audio_kwargs: padded to the longest clip, not to 30 s, the mask asked for): the clip's
    frames, but the last STFT frame, padded with zeros to whole chunks of 100."""
    import transformers

    extractor = transformers.Qwen3ASRFeatureExtractor.from_pretrained(folder)
    kwargs = {"padding": True, "truncation": False, "return_attention_mask": True}
    out = extractor(samples, sampling_rate=SAMPLE_RATE, return_tensors="pt", **kwargs)
    return out["input_features"], out["attention_mask"]


def qwen3asr_reference(folder: Path) -> Any:
    import torch
    import transformers

    return transformers.Qwen3ASRForConditionalGeneration.from_pretrained(
        folder, dtype=torch.float32
    ).eval()


def qwen3asr_embeddings(model: Any, features: Any, mask: Any) -> np.ndarray:
    """transformers' audio encoder + projector (get_audio_features) on `features`, one row per
    audio token the mask keeps."""
    import torch

    with torch.no_grad():
        out = model.get_audio_features(features, mask).pooler_output
    return np.asarray(out.float().numpy())


def float_wav(samples: np.ndarray, rate: int = SAMPLE_RATE) -> bytes:
    """A mono IEEE-float WAV (format tag 3), as miniaudio reads it without conversion: the
    worker's decoder then sees exactly `samples`."""
    import struct

    data = samples.astype("<f4").tobytes()
    fmt = struct.pack("<HHIIHH", 3, 1, rate, rate * 4, 4, 32)
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt
    body += b"data" + struct.pack("<I", len(data)) + data
    return b"RIFF" + struct.pack("<I", len(body)) + body


@dataclass(frozen=True)
class Served:
    """What a worker's /execute streamed for one clip: greedy tokens, their log-probabilities
    and the prompt's length."""

    tokens: list[int]
    logprobs: list[float]
    prompt_tokens: int


def execute(url: str, prompt: str, clip: bytes, n: int, job: str) -> Served:
    """/execute of `prompt` with `clip` for its marker, `n` greedy tokens."""
    import base64

    import httpx
    from support import sse_events

    body = {
        "job_id": job,
        "prompt": prompt,
        "audio": [base64.b64encode(clip).decode()],
        "max_tokens": n,
        "temperature": 0.0,
        "top_logprobs": 1,
    }
    tokens, logprobs, prompt_tokens = [], [], 0
    with httpx.stream("POST", f"{url}/execute", json=body, timeout=300) as r:
        assert r.status_code == 200, r.read()
        for event in sse_events(r):
            assert event["type"] != "error", event
            if event["type"] == "token":
                tokens.append(event["id"])
                logprobs.append(event["logprob"])
            elif event["type"] == "metrics":
                prompt_tokens = event["prompt_tokens"]
    return Served(tokens, logprobs, prompt_tokens)


def assert_answers_as(ours: Served, theirs: Any) -> None:
    """The worker's greedy tokens are llama.cpp's (mtmd_greedy's), and their log-probabilities
    those of the logits llama.cpp took each from, within 1e-3."""
    assert ours.tokens == theirs["tokens"].tolist()
    logits = theirs["logits"].astype(np.float64)
    peak = logits.max(axis=1, keepdims=True)
    log_softmax = logits - peak - np.log(np.exp(logits - peak).sum(axis=1, keepdims=True))
    expected = log_softmax[np.arange(len(ours.tokens)), ours.tokens]
    np.testing.assert_allclose(ours.logprobs, expected, atol=1e-3)
