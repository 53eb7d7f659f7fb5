"""A tiny random Gemma 3 vision-language checkpoint, converted by llorch's converter to a text
GGUF and its projector beside it. llama.cpp's own converter (`convert_hf_to_gguf.py --mmproj`,
from the vendored llama.cpp source that llama-cpp-python's sdist carries) writes the projector
the anchor test compares llorch's with (tests/convert/test_gemma3_projector.py).

Gemma 3 is the smallest family the vendored mtmd runs whole: a SigLIP tower, an average pool
and one projection, one image chunk per image (no tiling), positions one per token (no M-RoPE).
The sizes below give 16 image tokens for a 64x64 image: 8x8 patches of 8 pixels pooled 2x2.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

IMAGE_SIZE = 64
IMAGE_TOKENS = 16  # mm_tokens_per_image: (64 / 8 / 2) ** 2
VLM_SRC_ENV = "LLORCH_LLAMA_CPP_SRC"


@dataclass(frozen=True)
class TinyVlm:
    folder: Path  # the Hugging Face checkpoint
    text: Path  # the text part, GGUF F32
    mmproj: Path  # the projector llorch wrote beside it, GGUF F32


def vendored_llama_cpp() -> Path | None:
    """The llama.cpp source inside the llama-cpp-python sdist (the one the wheel was built
    from), or None when it is not on this machine."""
    from importlib.metadata import version

    explicit = os.environ.get(VLM_SRC_ENV)
    if explicit:
        return Path(explicit)
    base = (
        Path.home()
        / ".cache"
        / "llorch"
        / "src"
        / f"llama_cpp_python-{version('llama_cpp_python')}"
    )
    source = base / "vendor" / "llama.cpp"
    return source if (source / "convert_hf_to_gguf.py").is_file() else None


def _spm(folder: Path) -> int:
    import sentencepiece as spm

    corpus = folder / "corpus.txt"
    lines = [
        "describe the image in one sentence please",
        "the quick brown fox jumps over the lazy dog 123 4567",
        "a red square on a white background, a blue circle, green lines",
    ] * 40
    corpus.write_text("\n".join(lines), encoding="utf-8")
    spm.SentencePieceTrainer.train(
        input=str(corpus),
        model_prefix=str(folder / "tokenizer"),
        vocab_size=300,
        model_type="bpe",
        byte_fallback=True,
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        add_dummy_prefix=False,
        user_defined_symbols=[
            "<start_of_turn>",
            "<end_of_turn>",
            "<start_of_image>",
            "<end_of_image>",
        ],
        minloglevel=2,
        hard_vocab_limit=False,
    )
    corpus.unlink()
    (folder / "tokenizer.vocab").unlink()
    return int(spm.SentencePieceProcessor(model_file=str(folder / "tokenizer.model")).vocab_size())


def build_checkpoint(folder: Path, seed: int = 0) -> Path:
    """A two-layer Gemma3ForConditionalGeneration with random weights, its tokenizer and the
    preprocessor config the projector's converter reads (image size, mean/std, tokens)."""
    import torch
    import transformers

    folder.mkdir(parents=True, exist_ok=True)
    n_vocab = _spm(folder)
    template = (
        "{{ bos_token }}{% for m in messages %}<start_of_turn>{{ 'model' if m['role'] == "
        "'assistant' else m['role'] }}\n{% if m['content'] is string %}{{ m['content'] }}"
        "{% else %}{% for p in m['content'] %}{% if p['type'] == 'image' %}<start_of_image>"
        "{% elif p['type'] == 'text' %}{{ p['text'] }}{% endif %}{% endfor %}{% endif %}"
        "<end_of_turn>\n{% endfor %}{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
    )
    tokenizer_config = {
        "bos_token": "<s>",
        "eos_token": "<end_of_turn>",
        "unk_token": "<unk>",
        "chat_template": template,
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(tokenizer_config))
    preprocessor = {
        "image_processor_type": "Gemma3ImageProcessor",
        "image_mean": [0.5, 0.5, 0.5],
        "image_std": [0.5, 0.5, 0.5],
        "image_seq_length": IMAGE_TOKENS,
        "size": {"height": IMAGE_SIZE, "width": IMAGE_SIZE},
        "do_resize": True,
        "do_normalize": True,
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "resample": 2,
    }
    (folder / "preprocessor_config.json").write_text(json.dumps(preprocessor))
    torch.manual_seed(seed)
    text = {
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 1024,
        "head_dim": 16,
        "query_pre_attn_scalar": 16,
        "sliding_window": 512,
        "layer_types": ["sliding_attention", "full_attention"],
        "vocab_size": n_vocab,
    }
    vision = {
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "image_size": IMAGE_SIZE,
        "patch_size": 8,
    }
    config = transformers.Gemma3Config(
        text_config=text,
        vision_config=vision,
        mm_tokens_per_image=IMAGE_TOKENS,
        boi_token_index=5,
        eoi_token_index=6,
        image_token_index=3,
        eos_token_id=4,
    )
    model = transformers.Gemma3ForConditionalGeneration(config).eval()
    with torch.no_grad():  # larger weights than the default init: logits far from ties
        for p in model.parameters():
            if p.dim() >= 2:
                p.normal_(0.0, 0.08)
            else:
                p.add_(torch.randn_like(p) * 0.1)
    model.save_pretrained(folder)
    _released_layout(folder / "model.safetensors")
    return folder


def _released_layout(path: Path) -> None:
    """transformers 5 saves the vision tower as `vision_tower.*`; the released Gemma 3
    checkpoints (and llama.cpp's tensor map) name it `vision_tower.vision_model.*`, which
    transformers still loads."""
    from safetensors.torch import load_file, save_file

    tensors = load_file(path)
    renamed = {
        "vision_tower.vision_model." + k.removeprefix("vision_tower.")
        if k.startswith("vision_tower.")
        else k: v
        for k, v in tensors.items()
    }
    save_file(renamed, path, metadata={"format": "pt"})


def convert_projector(folder: Path, out: Path, source: Path, outtype: str = "f32") -> Path:
    """llama.cpp's converter, run with this Python (its torch and transformers), writing the
    projector only."""
    cmd = [
        sys.executable,
        str(source / "convert_hf_to_gguf.py"),
        str(folder),
        "--mmproj",
        "--outtype",
        outtype,
        "--outfile",
        str(out),
    ]
    # its own gguf-py (beside it in the source), which knows the projector's keys
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    env.pop("NO_LOCAL_GGUF", None)
    subprocess.run(cmd, check=True, env=env, capture_output=True, text=True)
    return out


def build(base: Path) -> TinyVlm:
    from llorch.convert import convert

    folder = build_checkpoint(base / "hf")
    text = base / "tiny-gemma3-vlm-f32.gguf"
    report = convert(folder, text, outtype="f32")
    assert report.mmproj is not None
    return TinyVlm(folder, text, Path(report.mmproj["output"]))


def cached(base: Path) -> TinyVlm:
    """The model built once under `base` (pytest's session folder, getbasetemp()): the test
    modules that serve it share one build."""
    folder = base / "tiny-vlm"
    done = folder / "built"
    if not done.exists():
        built = build(folder)
        done.touch()
        return built
    return TinyVlm(
        folder / "hf",
        folder / "tiny-gemma3-vlm-f32.gguf",
        folder / "tiny-gemma3-vlm-f32-mmproj-f32.gguf",
    )


# The parity harness: the same pixels for mtmd and for the reference.


def image(seed: int) -> tuple[Any, np.ndarray]:
    """A random image at the model's own size (no resampling to differ), as the worker's
    DecodedImage and as the reference's pixel values."""
    from llorch.worker.backend.protocol import DecodedImage

    size = IMAGE_SIZE
    pixels = np.random.default_rng(seed).integers(0, 255, (size, size, 3), dtype=np.uint8)
    rgb = pixels.tobytes()
    decoded = DecodedImage(rgb, size, size, hashlib.sha256(rgb).digest())
    # Gemma 3's processor: rescale to 0..1, normalise with mean = std = 0.5, channels first
    values = (pixels.astype(np.float32) / 255.0 - 0.5) / 0.5
    return decoded, values.transpose(2, 0, 1)[None]


def reference(folder: Path) -> Any:
    import torch
    import transformers

    model = transformers.Gemma3ForConditionalGeneration.from_pretrained(folder, dtype=torch.float32)
    return model.eval()


def reference_embeddings(model: Any, pixel_values: np.ndarray, n_embd: int) -> np.ndarray:
    """The reference's vision tower + projector: one row per image token."""
    import torch

    with torch.no_grad():
        features = model.model.get_image_features(pixel_values=torch.from_numpy(pixel_values))
    out = getattr(features, "pooler_output", features)
    return np.asarray(out.reshape(-1, n_embd).float().numpy())


def cosines(got: np.ndarray, ref: np.ndarray) -> np.ndarray:
    dot = (got * ref).sum(axis=-1)
    return np.asarray(dot / (np.linalg.norm(got, axis=-1) * np.linalg.norm(ref, axis=-1)))


def check_embeddings(text: Path, mmproj: Path, reference_model: Any, cos_min: float) -> None:
    """mtmd's image embeddings from `mmproj` beside `text` against `reference_model`'s vision
    tower + projector, for two images at the model's size: every row's cosine >= cos_min."""
    import llama_cpp as ll

    from llorch.worker.backend.mtmd import Projector

    model = ll.llama_model_load_from_file(str(text).encode(), ll.llama_model_default_params())
    assert model
    projector = Projector(mmproj, model, threads=2, use_gpu=False)
    try:
        n_embd = ll.llama_model_n_embd(model)
        for seed in (0, 1):
            picture, pixel_values = image(seed)
            (got,) = projector.embeddings(picture, n_embd)
            ref = reference_embeddings(reference_model, pixel_values, n_embd)
            assert got.shape == ref.shape == (IMAGE_TOKENS, n_embd)
            assert cosines(got, ref).min() >= cos_min
    finally:
        projector.close()
        ll.llama_model_free(model)
