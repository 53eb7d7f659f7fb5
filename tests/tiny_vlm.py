"""A tiny random Gemma 3 vision-language checkpoint, converted by llorch's converter to a text
GGUF and its projector beside it. llama.cpp's own converter (`convert_hf_to_gguf.py --mmproj`,
from the vendored llama.cpp source that llama-cpp-python's sdist carries) writes the projector
the anchor test compares llorch's with (tests/convert/test_gemma3_projector.py).

Gemma 3 is the smallest family the vendored mtmd runs whole: a SigLIP tower, an average pool
and one projection, one image chunk per image (no tiling), positions one per token (no M-RoPE).
The sizes below give 16 image tokens for a 64x64 image: 8x8 patches of 8 pixels pooled 2x2.

SmolVLM (Idefics3's graph: a SigLIP-like tower, a pixel shuffle by 2 and one projection) is
built the same way (`family="smolvlm"`, the configuration of parity_cases'
`smolvlm-multimodal-text-part`): 16 tokens for each 64x64 tile. mtmd cuts an image into tiles
and adds an overview (the whole image resized to one tile); the processor's longest edge is one
tile, so a 64x64 image is one tile and an overview that are both the image itself.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from support import THREADS

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


def build_checkpoint(
    folder: Path,
    seed: int = 0,
    vision: dict[str, int] | None = None,
    image_size: int = IMAGE_SIZE,
    image_tokens: int = IMAGE_TOKENS,
) -> Path:
    """A two-layer Gemma3ForConditionalGeneration with random weights, its tokenizer and the
    preprocessor config the projector's converter reads (image size, mean/std, tokens).
    `vision`: the tower's sizes instead of the tiny one's (bench/media.py's `--tower base`);
    `image_tokens` a square whose root divides the patches per side."""
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
        "image_seq_length": image_tokens,
        "size": {"height": image_size, "width": image_size},
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
    tower = vision or {
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "patch_size": 8,
    }
    config = transformers.Gemma3Config(
        text_config=text,
        vision_config={**tower, "image_size": image_size},
        mm_tokens_per_image=image_tokens,
        boi_token_index=5,
        eoi_token_index=6,
        image_token_index=3,
        eos_token_id=4,
    )
    _save(transformers.Gemma3ForConditionalGeneration(config), folder)
    _released_layout(folder / "model.safetensors")
    return folder


def _save(model: Any, folder: Path) -> None:
    import torch

    with torch.no_grad():  # larger weights than the default init: logits far from ties
        for p in model.parameters():
            if p.dim() >= 2:
                p.normal_(0.0, 0.08)
            else:
                p.add_(torch.randn_like(p) * 0.1)
    model.eval().save_pretrained(folder)


# SmolVLM's markup, as its processor and mtmd (tools/mtmd/mtmd.cpp) write an image's tiles
SMOLVLM_TOKENS = ["<fake_token_around_image>", "<image>", "<global-img>", "<end_of_utterance>"]
SMOLVLM_TOKENS += [f"<row_{r}_col_{c}>" for r in (1, 2) for c in (1, 2)]


def _bpe(folder: Path, specials: list[str] = SMOLVLM_TOKENS) -> dict[str, int]:
    """A byte-level BPE (SmolVLM's and Mistral 3's tokenizers are) whose merges include
    "\n\n", with the family's image tokens: mtmd looks those up by their text. The ids of
    `specials` and the BOS by text, and the vocabulary's size."""
    from tokenizers import Tokenizer, decoders, models, trainers
    from tokenizers import pre_tokenizers as pt

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pt.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pt.ByteLevel.alphabet(),
        show_progress=False,
    )
    lines = [
        "User: describe the image in one sentence please\n\nAssistant: a red square\n",
        "the quick brown fox jumps over the lazy dog 123 4567\n\n",
    ] * 40
    tok.train_from_iterator(lines, trainer)
    tok.add_special_tokens(specials)
    tok.save(str(folder / "tokenizer.json"))
    ids = {t: int(tok.token_to_id(t)) for t in [*specials, "<|im_start|>", "<|im_end|>"]}
    return {"vocab_size": int(tok.get_vocab_size()), **ids}


def build_smolvlm_checkpoint(folder: Path, seed: int = 0) -> Path:
    """SmolVLMForConditionalGeneration with random weights (parity_cases'
    `smolvlm-multimodal-text-part`), its tokenizer with the image tokens, and its processor's
    config: tiles of 64 pixels, the longest edge one tile."""
    import torch
    import transformers

    from tests.convert.parity_cases import CASES

    folder.mkdir(parents=True, exist_ok=True)
    vocab = _bpe(folder)
    template = (
        "<|im_start|>{% for m in messages %}{{ m['role'] | capitalize }}: {% if m['content'] "
        "is string %}{{ m['content'] }}{% else %}{% for p in m['content'] %}{% if p['type'] == "
        "'image' %}<image>{% elif p['type'] == 'text' %}{{ p['text'] }}{% endif %}{% endfor %}"
        "{% endif %}<end_of_utterance>\n{% endfor %}{% if add_generation_prompt %}Assistant:"
        "{% endif %}"
    )
    tokenizer_config = {
        "bos_token": "<|im_start|>",
        "eos_token": "<end_of_utterance>",
        "pad_token": "<|im_end|>",
        "unk_token": "<|endoftext|>",
        "chat_template": template,
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(tokenizer_config))
    preprocessor = {
        "image_processor_type": "Idefics3ImageProcessor",
        "image_mean": [0.5, 0.5, 0.5],
        "image_std": [0.5, 0.5, 0.5],
        "size": {"longest_edge": IMAGE_SIZE},
        "max_image_size": {"longest_edge": IMAGE_SIZE},
        "do_image_splitting": True,
        "do_resize": True,
        "do_normalize": True,
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "resample": 1,
    }
    (folder / "preprocessor_config.json").write_text(json.dumps(preprocessor))
    case = CASES["smolvlm-multimodal-text-part"]
    text = {**case.config["text_config"], "vocab_size": vocab["vocab_size"]}
    ids = {
        "image_token_id": vocab["<image>"],
        "bos_token_id": vocab["<|im_start|>"],
        "eos_token_id": vocab["<end_of_utterance>"],
    }
    config = getattr(transformers, case.config_cls)(**{**case.config, "text_config": text, **ids})
    torch.manual_seed(seed)
    _save(getattr(transformers, case.model_cls)(config), folder)
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


# Mistral 3's image tokens (Pixtral's processor: [IMG] per patch, [IMG_BREAK] after each row
# but the last, [IMG_END] last)
MISTRAL3_TOKENS = ["[IMG]", "[IMG_BREAK]", "[IMG_END]"]


def build_mistral3_checkpoint(folder: Path, seed: int = 0) -> Path:
    """Mistral3ForConditionalGeneration with random weights: parity_cases'
    `mistral3-multimodal-text-part` text model, a Pixtral tower of 8-pixel patches merged 2 x 2
    (16 tokens for a 64 x 64 image), three layers (llama.cpp's converter maps the projector's
    linear_2 only for a tower of more than two), SiLU as released."""
    import torch
    import transformers

    from tests.convert.parity_cases import CASES

    folder.mkdir(parents=True, exist_ok=True)
    vocab = _bpe(folder, MISTRAL3_TOKENS)
    template = (
        "{{ bos_token }}{% for m in messages %}[INST]{% if m['content'] is string %}"
        "{{ m['content'] }}{% endif %}[/INST]{% endfor %}"
    )
    tokenizer_config = {
        "bos_token": "<|im_start|>",
        "eos_token": "<|endoftext|>",
        "chat_template": template,
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(tokenizer_config))
    preprocessor = {
        "image_processor_type": "PixtralImageProcessor",
        "image_mean": [0.48145466, 0.4578275, 0.40821073],
        "image_std": [0.26862954, 0.26130258, 0.27577711],
        "patch_size": 8,
        "size": {"longest_edge": 1024},
        "rescale_factor": 1 / 255,
    }
    (folder / "preprocessor_config.json").write_text(json.dumps(preprocessor))
    case = CASES["mistral3-multimodal-text-part"]
    text = {**case.config["text_config"], "vocab_size": vocab["vocab_size"]}
    vision = {
        **case.config["vision_config"],
        "num_hidden_layers": 3,
        "image_size": 1024,
        "patch_size": 8,
        "hidden_act": "silu",
    }
    config = transformers.Mistral3Config(
        **{
            **case.config,
            "text_config": text,
            "vision_config": vision,
            "image_token_index": vocab["[IMG]"],
            "spatial_merge_size": 2,
        }
    )
    torch.manual_seed(seed)
    _save(transformers.Mistral3ForConditionalGeneration(config), folder)
    return folder


# Qwen2.5-VL's image tokens: mtmd wraps an image in <|vision_start|> ... <|vision_end|>
QWEN_VL_TOKENS = ["<|vision_start|>", "<|vision_end|>", "<|image_pad|>"]
QWEN_VL_IMAGE_SIZE = 224  # 16 x 16 patches of 14: 8 x 8 merged tokens in 2 x 2 windows
QWEN_VL_IMAGE_TOKENS = 64
QWEN3_VL_IMAGE_SIZE = 128  # 8 x 8 patches of 16: 4 x 4 merged tokens, the position grid resampled
QWEN3_VL_IMAGE_TOKENS = 16
QWEN35_IMAGE_SIZE = 112  # 8 x 8 patches of 14: 4 x 4 merged tokens
CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]


def build_qwen2vl_checkpoint(folder: Path, seed: int = 0) -> Path:
    """Qwen2VLForConditionalGeneration with random weights (parity_cases'
    `qwen2-vl-multimodal-text-part`): a three-layer tower 32 wide (an MLP of 128), no windows,
    the tokenizer and template as Qwen2.5-VL's."""
    return _build_qwen_vl(folder, "qwen2-vl-multimodal-text-part", 14, CLIP_MEAN, CLIP_STD, seed)


def build_qwen25vl_checkpoint(folder: Path, seed: int = 0) -> Path:
    """Qwen2_5_VLForConditionalGeneration with random weights (parity_cases'
    `qwen2.5-vl-multimodal-text-part`): a four-layer tower with windows in layers 0 and 2,
    its tokenizer with the vision tokens, a ChatML template that leaves the image's place to
    mtmd's markup."""
    return _build_qwen_vl(folder, "qwen2.5-vl-multimodal-text-part", 14, CLIP_MEAN, CLIP_STD, seed)


def build_qwen3vl_checkpoint(folder: Path, seed: int = 0) -> Path:
    """Qwen3VLForConditionalGeneration with random weights (parity_cases'
    `qwen3-vl-multimodal-text-part`): a four-layer tower of 16-pixel patches over a 4 x 4
    position grid, deepstack from layers 1 and 2, the tokenizer and template as Qwen2.5-VL's."""
    half = [0.5, 0.5, 0.5]  # Qwen3-VL's preprocessor_config.json
    return _build_qwen_vl(folder, "qwen3-vl-multimodal-text-part", 16, half, half, seed)


def build_qwen3vlmoe_checkpoint(folder: Path, seed: int = 0) -> Path:
    """Qwen3VLMoeForConditionalGeneration with random weights (parity_cases'
    `qwen3-vl-moe-multimodal-text-part`: Qwen3-VL's tower and decoder, 4 experts of 48 in every
    layer, 2 used), its experts stored as released ([E, D, 2F], [E, F, D]: transformers saves
    its own layout, and transposes the released one when it loads)."""
    half = [0.5, 0.5, 0.5]
    _build_qwen_vl(folder, "qwen3-vl-moe-multimodal-text-part", 16, half, half, seed)
    _released_experts(folder / "model.safetensors")
    return folder


def _released_experts(path: Path) -> None:
    from safetensors.torch import load_file, save_file

    tensors = load_file(path)
    fused = (".mlp.experts.gate_up_proj", ".mlp.experts.down_proj")
    released = {k: v.transpose(1, 2).contiguous() if k.endswith(fused) else v
                for k, v in tensors.items()}  # fmt: skip
    save_file(released, path, metadata={"format": "pt"})


def build_qwen35_checkpoint(folder: Path, seed: int = 0) -> Path:
    """Qwen3_5ForConditionalGeneration with random weights (parity_cases'
    `qwen35-multimodal-text-part-tied`: the hybrid DeltaNet language model, a one-layer tower
    of 14-pixel patches over a 4 x 4 position grid, no deepstack), the tokenizer and template
    as Qwen2.5-VL's."""
    half = [0.5, 0.5, 0.5]
    return _build_qwen_vl(folder, "qwen35-multimodal-text-part-tied", 14, half, half, seed)


def _build_qwen_vl(
    folder: Path,
    case_id: str,
    patch: int,
    mean: Sequence[float],
    std: Sequence[float],
    seed: int,
) -> Path:
    import torch
    import transformers

    from tests.convert.parity_cases import CASES

    folder.mkdir(parents=True, exist_ok=True)
    vocab = _bpe(folder, QWEN_VL_TOKENS)
    template = (
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{% if m['content'] is string %}"
        "{{ m['content'] }}{% else %}{% for p in m['content'] %}{% if p['type'] == 'text' %}"
        "{{ p['text'] }}{% endif %}{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    tokenizer_config = {
        "eos_token": "<|im_end|>",
        "pad_token": "<|endoftext|>",
        "chat_template": template,
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(tokenizer_config))
    preprocessor = {
        "image_processor_type": "Qwen2VLImageProcessor",
        "image_mean": list(mean),
        "image_std": list(std),
        "patch_size": patch,
        "merge_size": 2,
        "temporal_patch_size": 2,
        "min_pixels": 3136,
        "max_pixels": 12845056,
        "rescale_factor": 1 / 255,
    }
    (folder / "preprocessor_config.json").write_text(json.dumps(preprocessor))
    case = CASES[case_id]
    text = {
        **case.config["text_config"],
        "vocab_size": vocab["vocab_size"],
        "eos_token_id": vocab["<|im_end|>"],
    }
    ids = {
        "image_token_id": vocab["<|image_pad|>"],
        "vision_start_token_id": vocab["<|vision_start|>"],
        "vision_end_token_id": vocab["<|vision_end|>"],
    }
    config = getattr(transformers, case.config_cls)(**{**case.config, "text_config": text, **ids})
    torch.manual_seed(seed)
    _save(getattr(transformers, case.model_cls)(config), folder)
    return folder


# Gemma 4: mtmd wraps an image in <|image> ... <image|> and takes 70 to 1120 tokens an image,
# its sides multiples of patch x pooling: 108 pixels are 27 x 27 patches of 4, pooled 3 x 3
# to 9 x 9 tokens, which both mtmd and Gemma4ImageProcessor keep as they are
GEMMA4_TOKENS = ["<|image>", "<image|>", "<|image|>", "<|audio>", "<audio|>", "<|audio|>"]
GEMMA4_IMAGE_SIZE = 108
GEMMA4_IMAGE_TOKENS = 81
GEMMA4_MEAN, GEMMA4_STD = [0.0, 0.0, 0.0], [1.0, 1.0, 1.0]  # rescaled only, as released


def build_gemma4_checkpoint(folder: Path, seed: int = 0, audio: bool = False) -> Path:
    """Gemma4ForConditionalGeneration with random weights: parity_cases'
    `gemma4-31b-multimodal-text-part` language model, a two-layer tower of 4-pixel patches
    pooled 3 x 3 with clipped linears (finite bounds, some of them reached) and standardized
    soft tokens, its Gemma 4 tokenizer.json with the image and audio tokens; with `audio`, a
    one-layer audio tower beside it (as E2B / E4B) of width 32 reading 128 mel bins, its
    clippable linears bounded as the vision tower's, its per-dimension query scales random.
    transformers' subsampler flattens (first channels / 4) x second channels features, which
    is the 32 frequencies x second channels it computes only when the first channels equal
    the mel bins (as released: 128, 32): hence 128, 4 here."""
    import torch
    import transformers
    from tokenizers import AddedToken, Tokenizer

    from tests.convert.conftest import make_gemma4_bpe
    from tests.convert.parity_cases import CASES

    folder.mkdir(parents=True, exist_ok=True)
    make_gemma4_bpe(folder)
    tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in GEMMA4_TOKENS])
    tok.save(str(folder / "tokenizer.json"))
    ids = {t: int(tok.token_to_id(t)) for t in GEMMA4_TOKENS}
    template = (
        "{{ bos_token }}{% for m in messages %}<|turn>{{ 'model' if m['role'] == 'assistant' "
        "else m['role'] }}\n{% if m['content'] is string %}{{ m['content'] }}{% else %}"
        "{% for p in m['content'] %}{% if p['type'] == 'text' %}{{ p['text'] }}{% endif %}"
        "{% endfor %}{% endif %}<turn|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|turn>model\n{% endif %}"
    )
    tokenizer_config = json.loads((folder / "tokenizer_config.json").read_text())
    tokenizer_config |= {"eos_token": "<turn|>", "chat_template": template}
    (folder / "tokenizer_config.json").write_text(json.dumps(tokenizer_config))
    preprocessor = {
        "image_processor_type": "Gemma4ImageProcessor",
        "image_mean": GEMMA4_MEAN,
        "image_std": GEMMA4_STD,
        "do_normalize": False,
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "patch_size": 4,
        "pooling_kernel_size": 3,
        "max_soft_tokens": 280,
        "resample": 3,
    }
    (folder / "preprocessor_config.json").write_text(json.dumps(preprocessor))
    case = CASES["gemma4-31b-multimodal-text-part"]
    text = {**case.config["text_config"], "vocab_size": int(tok.get_vocab_size())}
    text["eos_token_id"] = int(tok.token_to_id("<turn|>"))
    vision = {
        **case.config["vision_config"],
        "num_hidden_layers": 2,
        "use_clipped_linears": True,
        "standardize": True,
    }
    audio_config = (
        {
            "hidden_size": 32,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "subsampling_conv_channels": [128, 4],
            "output_proj_dims": 32,
        }
        if audio
        else None
    )
    config = transformers.Gemma4Config(
        text_config=text,
        vision_config=vision,
        audio_config=audio_config,
        boi_token_id=ids["<|image>"],
        eoi_token_id=ids["<image|>"],
        image_token_id=ids["<|image|>"],
        video_token_id=ids["<|image|>"],
        boa_token_id=ids["<|audio>"],
        eoa_token_index=ids["<audio|>"],
        audio_token_id=ids["<|audio|>"],
    )
    torch.manual_seed(seed)
    model = transformers.Gemma4ForConditionalGeneration(config)
    with torch.no_grad():
        tower = model.model.vision_tower
        tower.std_bias.copy_(torch.randn_like(tower.std_bias) * 0.5)
        tower.std_scale.copy_(1.0 + torch.randn_like(tower.std_scale) * 0.2)
        towers = [tower]
        if audio:
            towers.append(model.model.audio_tower)
            for layer in model.model.audio_tower.layers:
                scale = layer.self_attn.per_dim_scale
                scale.copy_(torch.randn_like(scale))
        # finite bounds: inputs are RMS-normed (about N(0, 1)), outputs smaller
        for part in towers:
            for name, buffer in part.named_buffers():
                bound = {"input": 1.5, "output": 0.5}.get(name.rsplit(".", 1)[-1].split("_")[0])
                if bound is not None:
                    sign = -1.0 if name.endswith("_min") else 1.0
                    buffer.fill_(sign * bound * (1.0 + float(torch.rand(())) * 0.5))
    _save(model, folder)
    return folder


# Llama 4's image markup, as its processor and mtmd write it (an image of one tile: start,
# its tokens, end)
LLAMA4_TOKENS = ["<|image_start|>", "<|image_end|>", "<|image|>", "<|patch|>", "<|eot|>"]
LLAMA4_IMAGE_SIZE = 112  # 8 x 8 patches of 14, pixel-shuffled 2 x 2: 4 x 4 tokens
LLAMA4_IMAGE_TOKENS = 16


def build_llama4_checkpoint(folder: Path, seed: int = 0) -> Path:
    """Llama4ForConditionalGeneration with random weights (parity_cases'
    `llama4-multimodal-text-part`: Scout's text model scaled down, a three-layer tower 32 wide
    over 112-pixel tiles of 14-pixel patches, shuffled 2 x 2), its tokenizer with the image
    tokens, Llama4ImageProcessor's normalisation (0.5)."""
    import torch
    import transformers

    from tests.convert.parity_cases import CASES

    folder.mkdir(parents=True, exist_ok=True)
    vocab = _bpe(folder, LLAMA4_TOKENS)
    template = (
        "{{ bos_token }}{% for m in messages %}<|im_start|>{{ m['role'] }}\n{% if m['content'] "
        "is string %}{{ m['content'] }}{% endif %}<|eot|>{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    tokenizer_config = {
        "bos_token": "<|im_start|>",
        "eos_token": "<|eot|>",
        "pad_token": "<|endoftext|>",
        "chat_template": template,
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(tokenizer_config))
    preprocessor = {
        "image_processor_type": "Llama4ImageProcessorFast",
        "image_mean": [0.5, 0.5, 0.5],
        "image_std": [0.5, 0.5, 0.5],
        "size": {"height": LLAMA4_IMAGE_SIZE, "width": LLAMA4_IMAGE_SIZE},
        "max_patches": 16,
        "resize_to_max_canvas": False,
        "rescale_factor": 1 / 255,
    }
    (folder / "preprocessor_config.json").write_text(json.dumps(preprocessor))
    case = CASES["llama4-multimodal-text-part"]
    text = {
        **case.config["text_config"],
        "vocab_size": vocab["vocab_size"],
        "bos_token_id": vocab["<|im_start|>"],
        "eos_token_id": vocab["<|eot|>"],
        "pad_token_id": vocab["<|im_end|>"],
    }
    ids = {
        "image_token_index": vocab["<|patch|>"],
        "boi_token_index": vocab["<|image_start|>"],
        "eoi_token_index": vocab["<|image_end|>"],
    }
    config = transformers.Llama4Config(**{**case.config, "text_config": text, **ids})
    torch.manual_seed(seed)
    _save(transformers.Llama4ForConditionalGeneration(config), folder)
    return folder


BUILDERS = {
    "gemma3": build_checkpoint,
    "gemma4": build_gemma4_checkpoint,
    "gemma4-audio": partial(build_gemma4_checkpoint, audio=True),
    "smolvlm": build_smolvlm_checkpoint,
    "mistral3": build_mistral3_checkpoint,
    "qwen2-vl": build_qwen2vl_checkpoint,
    "qwen2.5-vl": build_qwen25vl_checkpoint,
    "qwen3-vl": build_qwen3vl_checkpoint,
    "qwen3-vl-moe": build_qwen3vlmoe_checkpoint,
    "qwen3.5": build_qwen35_checkpoint,
    "llama4": build_llama4_checkpoint,
}
TEXT_NAMES = {
    "gemma3": "tiny-gemma3-vlm-f32.gguf",
    "gemma4": "tiny-gemma4-f32.gguf",
    "gemma4-audio": "tiny-gemma4-audio-f32.gguf",
    "smolvlm": "tiny-smolvlm-f32.gguf",
    "mistral3": "tiny-mistral3-f32.gguf",
    "qwen2-vl": "tiny-qwen2vl-f32.gguf",
    "qwen2.5-vl": "tiny-qwen25vl-f32.gguf",
    "qwen3-vl": "tiny-qwen3vl-f32.gguf",
    "qwen3-vl-moe": "tiny-qwen3vlmoe-f32.gguf",
    "qwen3.5": "tiny-qwen35-f32.gguf",
    "llama4": "tiny-llama4-f32.gguf",
}


def _built(base: Path, family: str) -> TinyVlm:
    text = base / TEXT_NAMES[family]
    return TinyVlm(base / "hf", text, text.with_name(text.stem + "-mmproj-f32.gguf"))


def bf16_copy(folder: Path, dst: Path) -> Path:
    """The checkpoint stored in BF16, as the released checkpoints are."""
    import shutil

    import torch
    from safetensors.torch import load_file, save_file

    shutil.copytree(folder, dst)
    tensors = load_file(dst / "model.safetensors")
    cast = {k: v.to(torch.bfloat16) for k, v in tensors.items()}
    save_file(cast, dst / "model.safetensors", metadata={"format": "pt"})
    return dst


def header_fields(reader: Any) -> dict[str, object]:
    """A GGUFReader's keys and values, without the GGUF.* header fields."""
    return {k: f.contents() for k, f in reader.fields.items() if not k.startswith("GGUF.")}


def assert_same_projector(
    ours: Path,
    theirs: Path,
    only_ours: frozenset[str] = frozenset(),
    ours_keys: Mapping[str, object] | None = None,
    theirs_only: Callable[[str], bool] | None = None,
    one_ulp: Callable[[str], bool] | None = None,
) -> tuple[dict[str, object], dict[str, Any]]:
    """`ours` holds what `theirs` (llama.cpp's converter's) holds: every key but the name
    (llama.cpp's is the folder's, title-cased: "Hf"; ours the text part's), every tensor's
    name, type, shape and bytes; `only_ours` names the tensors it has and theirs lacks,
    `ours_keys` the keys (and values) it has and theirs lacks; `theirs_only` is true of the
    keys and tensors of theirs that ours leaves out (a tower llorch does not write);
    `one_ulp` of the F32 tensors whose values may differ by one unit in the last place (a
    function llorch computes in float64 and rounds, torch in float32). Our keys and tensors
    by name."""
    import gguf

    a, b = gguf.GGUFReader(ours), gguf.GGUFReader(theirs)
    fa, fb = header_fields(a), header_fields(b)
    assert fa.pop("general.name") == "hf"
    fb.pop("general.name")
    mine = dict(ours_keys or {})
    assert {k: fa.pop(k) for k in mine} == mine
    skip = theirs_only or (lambda _: False)
    assert fa == {k: v for k, v in fb.items() if not skip(k)}
    ta = {t.name: t for t in a.tensors}
    tb = {t.name: t for t in b.tensors if not skip(t.name)}
    assert sorted(ta) == sorted([*tb, *only_ours])
    for name, theirs_t in tb.items():
        ours_t = ta[name]
        assert ours_t.tensor_type == theirs_t.tensor_type, name
        assert list(ours_t.shape) == list(theirs_t.shape), name
        if one_ulp is not None and one_ulp(name):
            bits = [np.asarray(t.data, dtype=np.float32).view(np.int32) for t in (ours_t, theirs_t)]
            assert np.abs(bits[0].astype(np.int64) - bits[1]).max() <= 1, name
            continue
        assert np.asarray(ours_t.data).tobytes() == np.asarray(theirs_t.data).tobytes(), name
    return fa, ta


def build(base: Path, family: str = "gemma3") -> TinyVlm:
    from llorch.convert import convert

    built = _built(base, family)
    BUILDERS[family](built.folder)
    report = convert(built.folder, built.text, outtype="f32")
    assert report.mmproj is not None and Path(report.mmproj["output"]) == built.mmproj
    return built


def cached(base: Path, family: str = "gemma3") -> TinyVlm:
    """The model built once under `base` (pytest's session folder, getbasetemp()): the test
    modules that serve it share one build."""
    folder = base / ("tiny-vlm" if family == "gemma3" else f"tiny-vlm-{family}")
    done = folder / "built"
    if not done.exists():
        built = build(folder, family)
        done.touch()
        return built
    return _built(folder, family)


# The parity harness: the same pixels for mtmd and for the reference.


def image(
    seed: int,
    mean: Sequence[float] = (0.5,) * 3,
    std: Sequence[float] = (0.5,) * 3,
    size: int = IMAGE_SIZE,
) -> tuple[Any, np.ndarray]:
    """A random image at the model's own size (no resampling to differ), as the worker's
    DecodedImage and as the reference's pixel values: as the processors make them, rescaled
    to 0..1, normalised with the model's mean and std (Gemma 3's, SmolVLM's: 0.5), channels
    first."""
    from llorch.worker.backend.protocol import DecodedImage

    pixels = np.random.default_rng(seed).integers(0, 255, (size, size, 3), dtype=np.uint8)
    rgb = pixels.tobytes()
    decoded = DecodedImage(rgb, size, size, hashlib.sha256(rgb).digest())
    values = (pixels.astype(np.float32) / 255.0 - np.float32(mean)) / np.float32(std)
    return decoded, values.astype(np.float32).transpose(2, 0, 1)[None]


def reference(folder: Path) -> Any:
    import torch
    import transformers

    config = json.loads((folder / "config.json").read_text())
    cls = getattr(transformers, config["architectures"][0])
    return cls.from_pretrained(folder, dtype=torch.float32).eval()


def reference_embeddings(model: Any, pixel_values: np.ndarray, n_embd: int) -> np.ndarray:
    """The reference's vision tower + projector: one row per image token."""
    import torch

    pixels = torch.from_numpy(pixel_values)
    kind = model.config.model_type
    kwargs = {}
    if kind in ("idefics3", "smolvlm"):
        pixels = pixels[None]  # (batch, images, channels, height, width)
    elif kind == "mistral3":
        kwargs["image_sizes"] = torch.tensor([pixel_values.shape[2:]])
    elif kind in QWEN_VL_TYPES:
        pixels, grid = _qwen_patches(pixel_values, model.config.vision_config)
        kwargs["image_grid_thw"] = torch.tensor([grid])
    elif kind == "gemma4":
        pixels, kwargs["image_position_ids"] = _gemma4_patches(pixel_values, model.config)
    elif kind == "llama4":  # the tower and adapter, then the projector (its forward's steps)
        with torch.no_grad():
            tower = model.vision_model(pixels).last_hidden_state
            rows = model.multi_modal_projector(tower.reshape(-1, tower.shape[-1]))
        return np.asarray(rows.float().numpy())
    with torch.no_grad():
        features = model.model.get_image_features(pixel_values=pixels, **kwargs)
    out = getattr(features, "pooler_output", features)
    if isinstance(out, (list, tuple)):  # Idefics3, Mistral 3, Qwen3-VL: one tensor per image
        out = torch.cat(list(out))
    # Qwen3-VL: each deepstack merger's rows after the merged ones, as mtmd concatenates them
    # (the text model's input rows: llama.cpp's n_embd_inp)
    deepstack = getattr(features, "deepstack_features", None) or []
    out = torch.cat([out, *[torch.cat(list(f)) for f in deepstack]], dim=-1)
    rows = np.asarray(out.reshape(-1, n_embd).float().numpy())
    if kind != "mistral3":
        return rows
    # Pixtral's prompt: the text embedding of [IMG_BREAK] after each row of merged patches but
    # the last, where mtmd puts the projector's copy of it
    side = int(len(rows) ** 0.5)
    tokenizer = json.loads((Path(model.config._name_or_path) / "tokenizer.json").read_text())
    (index,) = [t["id"] for t in tokenizer["added_tokens"] if t["content"] == "[IMG_BREAK]"]
    brk = model.get_input_embeddings().weight[index].detach().float().numpy()[None]
    parts = [rows[i * side : (i + 1) * side] for i in range(side)]
    return np.concatenate([x for part in parts[:-1] for x in (part, brk)] + [parts[-1]])


QWEN_VL_TYPES = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl", "qwen3_vl_moe", "qwen3_5", "qwen3_5_moe")


def _qwen_patches(pixel_values: np.ndarray, vision: Any) -> tuple[Any, list[int]]:
    """One image as Qwen2VLImageProcessor flattens it: the image as both frames, patches in
    2 x 2 merge groups, row-major; the patches and the (t, h, w) grid."""
    import torch

    frames, patch, merge = vision.temporal_patch_size, vision.patch_size, vision.spatial_merge_size
    _, channels, height, width = pixel_values.shape
    stacked = np.repeat(pixel_values, frames, axis=0)
    gh, gw = height // patch, width // patch
    grid = stacked.reshape(
        1, frames, channels, gh // merge, merge, patch, gw // merge, merge, patch
    )
    flat = grid.transpose(0, 3, 6, 4, 7, 2, 1, 5, 8).reshape(gh * gw, -1)
    return torch.from_numpy(np.ascontiguousarray(flat)), [1, gh, gw]


def _gemma4_patches(pixel_values: np.ndarray, config: Any) -> tuple[Any, Any]:
    """One image as Gemma4ImageProcessor patchifies it (no padding: the image fills its
    budget): patches row-major, each (row, column, channel), and their (x, y) positions."""
    import torch

    patch = config.vision_config.patch_size
    _, channels, height, width = pixel_values.shape
    gh, gw = height // patch, width // patch
    grid = pixel_values[0].reshape(channels, gh, patch, gw, patch).transpose(1, 3, 2, 4, 0)
    flat = np.ascontiguousarray(grid.reshape(1, gh * gw, -1))
    ys, xs = np.divmod(np.arange(gh * gw), gw)
    positions = torch.from_numpy(np.stack([xs, ys], axis=-1)[None])
    return torch.from_numpy(flat), positions


def cosines(got: np.ndarray, ref: np.ndarray) -> np.ndarray:
    dot = (got * ref).sum(axis=-1)
    return np.asarray(dot / (np.linalg.norm(got, axis=-1) * np.linalg.norm(ref, axis=-1)))


def check_embeddings(
    text: Path,
    mmproj: Path,
    reference_model: Any,
    cos_min: float,
    chunks: int = 1,
    rows: int = IMAGE_TOKENS,
    size: int = IMAGE_SIZE,
    order: Callable[[np.ndarray], np.ndarray] | None = None,
) -> float:
    """mtmd's image embeddings from `mmproj` beside `text` against `reference_model`'s vision
    tower + projector, for two images at the model's size: mtmd makes `chunks` chunks of each
    (SmolVLM: its one tile and the overview, both the image itself), and every row of every
    chunk (`rows` of them: Mistral 3's with its [IMG_BREAK] rows) has a cosine >= cos_min.
    A row is the text model's input row (llama.cpp's n_embd_inp): for Qwen3-VL the merged
    embedding and the deepstack features after it, each of which is checked on its own too.
    `order` puts the reference's rows in the order mtmd gives them, where its graph orders
    them otherwise (Llama 4: `transposed`). The smallest cosine measured."""
    import llama_cpp as ll

    from llorch.worker.backend.mtmd import Projector

    model = ll.llama_model_load_from_file(str(text).encode(), ll.llama_model_default_params())
    assert model
    projector = Projector(mmproj, model, threads=THREADS, use_gpu=False)
    folder = Path(reference_model.config._name_or_path)
    processor = json.loads((folder / "preprocessor_config.json").read_text())
    normalisation = (processor["image_mean"], processor["image_std"])
    lowest = 1.0
    try:
        n_embd, width = ll.llama_model_n_embd(model), ll.llama_model_n_embd_inp(model)
        for seed in (0, 1):
            picture, pixel_values = image(seed, *normalisation, size=size)
            got = projector.embeddings(picture, width)
            ref = reference_embeddings(reference_model, pixel_values, width)
            ref = ref if order is None else order(ref)
            assert len(got) == chunks
            for tile in got:
                assert tile.shape == ref.shape == (rows, width)
                lowest = min(lowest, float(cosines(tile, ref).min()))
                for part in range(0, width if width > n_embd else 0, n_embd):
                    cut = np.s_[:, part : part + n_embd]
                    lowest = min(lowest, float(cosines(tile[cut], ref[cut]).min()))
        assert lowest >= cos_min, lowest
        return lowest
    finally:
        projector.close()
        ll.llama_model_free(model)


def transposed(rows: np.ndarray) -> np.ndarray:
    """A square grid of rows (row-major) in column-major order: mtmd's Llama 4 pixel shuffle
    leaves out transformers' last permute (tools/mtmd/models/llama4.cpp, commented out), so
    its image tokens come column by column."""
    side = round(len(rows) ** 0.5)
    assert side * side == len(rows)
    grid = rows.reshape(side, side, -1).transpose(1, 0, 2)
    return np.ascontiguousarray(grid.reshape(len(rows), -1))


def mtmd_greedy(
    text: Path, mmproj: Path, prompt: str, picture: Any, n: int, n_ctx: int = 512
) -> tuple[list[int], list[int]]:
    """llama.cpp's own path for a prompt with one image (`prompt` holds mtmd's default marker
    where it goes): mtmd_tokenize, mtmd_helper_eval_chunks from position 0, then `n` greedy
    tokens, each decoded at the position after the last (llama-server's and mtmd-cli's way,
    M-RoPE positions included). The prompt's text tokens (the image's left out), and the
    tokens generated."""
    import ctypes

    import llama_cpp as ll
    from llama_cpp import mtmd_cpp as mt

    model = ll.llama_model_load_from_file(str(text).encode(), ll.llama_model_default_params())
    assert model
    params = ll.llama_context_default_params()
    params.n_ctx, params.n_batch, params.n_threads, params.n_threads_batch = (
        n_ctx,
        n_ctx,
        THREADS,
        THREADS,
    )
    lctx = ll.llama_init_from_model(model, params)
    mparams = mt.mtmd_context_params_default()
    mparams.use_gpu, mparams.n_threads, mparams.print_timings = False, THREADS, False
    mctx = mt.mtmd_init_from_file(str(mmproj).encode(), model, mparams)
    assert mctx
    data = (ctypes.c_uint8 * len(picture.rgb)).from_buffer_copy(picture.rgb)
    bitmap = mt.mtmd_bitmap_init(picture.width, picture.height, data)
    chunks = mt.mtmd_input_chunks_init()
    batch = ll.llama_batch_init(1, 0, 1)
    try:
        raw = prompt.encode()
        text_in = mt.mtmd_input_text(raw, len(raw), True, True)
        bitmaps = (mt.mtmd_bitmap_p_ctypes * 1)(bitmap)
        assert mt.mtmd_tokenize(mctx, chunks, ctypes.byref(text_in), bitmaps, 1) == 0
        prompt_tokens: list[int] = []
        for i in range(mt.mtmd_input_chunks_size(chunks)):
            chunk = mt.mtmd_input_chunks_get(chunks, i)
            if mt.mtmd_input_chunk_get_type(chunk) == mt.MTMD_INPUT_CHUNK_TYPE_TEXT:
                count = ctypes.c_size_t(0)
                ptr = mt.mtmd_input_chunk_get_tokens_text(chunk, ctypes.byref(count))
                prompt_tokens += [ptr[k] for k in range(count.value)]
        n_past = ll.llama_pos(0)
        rc = mt.mtmd_helper_eval_chunks(mctx, lctx, chunks, 0, 0, n_ctx, True, ctypes.byref(n_past))
        assert rc == 0
        n_vocab = ll.llama_vocab_n_tokens(ll.llama_model_get_vocab(model))
        out: list[int] = []
        pos = n_past.value
        for _ in range(n):
            logits = np.ctypeslib.as_array(ll.llama_get_logits_ith(lctx, -1), shape=(n_vocab,))
            token = int(np.argmax(logits))
            out.append(token)
            batch.n_tokens = 1
            batch.token[0], batch.pos[0], batch.n_seq_id[0] = token, pos, 1
            batch.seq_id[0][0], batch.logits[0] = 0, True
            assert ll.llama_decode(lctx, batch) == 0
            pos += 1
        return prompt_tokens, out
    finally:
        ll.llama_batch_free(batch)
        mt.mtmd_input_chunks_free(chunks)
        mt.mtmd_bitmap_free(bitmap)
        mt.mtmd_free(mctx)
        ll.llama_free(lctx)
        ll.llama_model_free(model)


def media_prompt(backend: Any, head: str, picture: object, tail: str) -> tuple:
    """`head`, one image and `tail` as a loaded LlamaCppBackend reads them: the prompt's
    tokens (-1 where the image goes, then its placeholder positions) and its media spans."""
    first = backend.tokenize(head, True, True)
    after = backend.tokenize(tail, False, True)
    return backend.media_prompt([*first, -1, *after], [picture], -1)


def greedy_with_media(backend: Any, tokens: Sequence[int], spans: tuple, n: int) -> tuple:
    """`n` greedy tokens after a media prompt through the backend's batch decoder, and the
    request's finish event."""
    from llorch.worker.backend.protocol import (
        FinishEvent,
        GenerationRequest,
        SamplingParams,
        TokenEvent,
    )
    from llorch.worker.backend.single import generate

    request = GenerationRequest(tuple(tokens), n, SamplingParams(temperature=0.0), media=spans)
    events = list(generate(backend.decoder(), request))
    end = events[-1]
    assert isinstance(end, FinishEvent), end
    return [e.token_id for e in events if isinstance(e, TokenEvent)], end
