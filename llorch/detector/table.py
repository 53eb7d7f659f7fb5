"""The architecture support table: HF `architectures` name -> llama.cpp arch, family module.

Alias rows are explicit: a name that reuses another row's converter has its own row with
`alias_of` set, so the accepted names are exactly the rows listed here. A multimodal
wrapper's row says where its language model lies (`text_part`): the families convert that
part under the text model's names, whichever wrapper it came in.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import gguf

from llorch.detector.errors import UnsupportedArchitectureError


@dataclass(frozen=True)
class TextPart:
    """Where a multimodal wrapper's checkpoint keeps its language model: prefixes renamed to
    the names the text model's own checkpoints use, and the prefixes of the parts left out
    (vision and audio towers, projectors: llama.cpp reads them from an mmproj file, which
    llorch writes where the row has a `vision` or `audio` part)."""

    renamed: tuple[tuple[str, str], ...]  # (wrapper prefix, text model prefix), first match
    left_out: tuple[str, ...]

    def tensor_name(self, name: str) -> str | None:
        """A checkpoint tensor's name in the text model; None for a part left out."""
        if name.startswith(self.left_out):
            return None
        for prefix, text_prefix in self.renamed:
            if name.startswith(prefix):
                return text_prefix + name.removeprefix(prefix)
        return name


# LLaVA-style wrappers (Gemma 3, Mistral 3): transformers 4 saved `language_model.model.` and
# `language_model.lm_head.`, transformers 5 saves `model.language_model.`
LLAVA_TEXT = TextPart(
    renamed=(
        ("language_model.model.", "model."),
        ("model.language_model.", "model."),
        ("language_model.lm_head.", "lm_head."),
    ),
    left_out=("vision_tower.", "multi_modal_projector."),
)
GEMMA4_TEXT = TextPart(
    renamed=(("model.language_model.", "model."),),
    left_out=tuple(
        f"model.{part}." for part in ("vision_tower", "embed_vision", "audio_tower", "embed_audio")
    ),
)
# Idefics3 / SmolVLM: a Llama language model beside the SigLIP-like tower and its connector
IDEFICS3_TEXT = TextPart(
    renamed=(("model.text_model.", "model."),),
    left_out=("model.vision_model.", "model.connector."),
)
# Qwen2.5-VL: released as `model.layers.*` beside `visual.*`; transformers 5 models (and
# Qwen3-VL as released) name the language model `model.language_model.*` and the tower
# `model.visual.*`
QWEN_VL_TEXT = TextPart(
    renamed=(("model.language_model.", "model."),), left_out=("visual.", "model.visual.")
)
QWEN35_TEXT = TextPart(renamed=(("model.language_model.", "model."),), left_out=("model.visual.",))


# Llama 4 (Scout, Maverick): `language_model.*` beside `vision_model.*` and its projector
LLAMA4_TEXT = TextPart(
    renamed=LLAVA_TEXT.renamed, left_out=("vision_model.", "multi_modal_projector.")
)


# Voxtral: a Llama language model saved as `language_model.*` beside the Whisper-style audio
# tower and its projector (transformers 5 saves it in this layout too)
VOXTRAL_TEXT = TextPart(
    renamed=LLAVA_TEXT.renamed, left_out=("audio_tower.", "multi_modal_projector.")
)
# Qwen3-ASR as transformers' port saves it (Qwen/Qwen3-ASR-*-hf): a Qwen3 language model beside
# the audio tower and its projector
QWEN3ASR_TEXT = TextPart(
    renamed=(("model.language_model.", "model."),),
    left_out=("model.audio_tower.", "model.multi_modal_projector."),
)


@dataclass(frozen=True)
class TowerPart:
    """A multimodal wrapper's encoder tower (vision or audio) and its projector, written into
    llama.cpp's mtmd projector file (clip arch, `<text>-mmproj-<type>.gguf`) beside the
    text part; `config_key` names the tower's section of config.json."""

    projector_type: str  # llama.cpp's clip projector type (gguf.VisionProjectorType)
    family: str  # the module under convert.families that writes it
    config_key: ClassVar[str]
    modality: ClassVar[str]


@dataclass(frozen=True)
class VisionPart(TowerPart):
    config_key = "vision_config"
    modality = "vision"


@dataclass(frozen=True)
class AudioPart(TowerPart):
    config_key = "audio_config"
    modality = "audio"


# llama.cpp's converter reads Gemma 4's tokenizer.json only (an SPM-style BPE written as the
# "gemma4" tokenizer model), even where a tokenizer.model lies beside it
GEMMA4_TOKENIZER = "gemma4"


@dataclass(frozen=True)
class ArchRow:
    """One accepted HF architecture name and how it converts."""

    hf_name: str
    arch: gguf.MODEL_ARCH
    family: str  # module under convert.families
    model_type: str  # config.json `model_type`, used when `architectures` is absent
    alias_of: str | None = None  # the canonical row this one reuses, if any
    text_part: TextPart | None = None  # multimodal wrappers: the part that converts
    # the llama.cpp tokenizer model the vocabulary is written as whatever tokenizer files lie
    # in the folder; None: the files decide (convert/tokenizer/)
    tokenizer: str | None = None
    # multimodal wrappers whose projector llorch writes: the vision tower, the audio tower
    vision: VisionPart | None = None
    audio: AudioPart | None = None
    # config.json keys that mark a layout of the same architecture name llorch does not read,
    # and what to convert instead: refused by name rather than by the first key missing
    unread_layouts: tuple[tuple[str, str], ...] = ()

    @property
    def llama_arch(self) -> str:
        return gguf.MODEL_ARCH_NAMES[self.arch]

    @property
    def towers(self) -> tuple[TowerPart, ...]:
        """The encoder towers whose projector llorch writes, vision first."""
        return tuple(part for part in (self.vision, self.audio) if part is not None)


_A = gguf.MODEL_ARCH
SUPPORTED: tuple[ArchRow, ...] = (
    ArchRow("LlamaForCausalLM", _A.LLAMA, "llama", "llama"),
    # Mistral 7B is the Llama graph. v0.1's 4096-token sliding window is not applied by
    # llama.cpp's llama arch (v0.2 and later have none).
    ArchRow("MistralForCausalLM", _A.LLAMA, "llama", "mistral", alias_of="LlamaForCausalLM"),
    # Mixtral runs as llama.cpp `llama` with experts (stacked by convert/families/moe.py).
    ArchRow("MixtralForCausalLM", _A.LLAMA, "llama", "mixtral", alias_of="LlamaForCausalLM"),
    ArchRow("Qwen2ForCausalLM", _A.QWEN2, "qwen", "qwen2"),
    # Qwen3 dense, and Qwen3-Reranker (recognised by its name: convert/families/qwen3.py)
    ArchRow("Qwen3ForCausalLM", _A.QWEN3, "qwen3", "qwen3"),
    # Qwen3-Embedding: the bare decoder, pooled by its last token (convert/families/qwen.py)
    ArchRow("Qwen3Model", _A.QWEN3, "qwen3", "qwen3", alias_of="Qwen3ForCausalLM"),
    ArchRow("GemmaForCausalLM", _A.GEMMA, "gemma", "gemma"),
    ArchRow("Gemma2ForCausalLM", _A.GEMMA2, "gemma", "gemma2"),
    ArchRow("Gemma3ForCausalLM", _A.GEMMA3, "gemma", "gemma3_text"),
    # EmbeddingGemma: Gemma 3's text model, bidirectional, with its Dense projections
    ArchRow("Gemma3TextModel", _A.GEMMA_EMBEDDING, "gemma_embedding", "gemma3_text"),
    # Gemma 3 4B/12B/27B: the multimodal wrapper; its language model converts as Gemma 3
    # text, its SigLIP tower and projector as llama.cpp's clip `gemma3` projector.
    ArchRow(
        "Gemma3ForConditionalGeneration",
        _A.GEMMA3,
        "gemma",
        "gemma3",
        alias_of="Gemma3ForCausalLM",
        text_part=LLAVA_TEXT,
        vision=VisionPart(gguf.VisionProjectorType.GEMMA3, "gemma3_vision"),
    ),
    # Idefics3 and SmolVLM (v1, v2): the language model converts as Llama, the vision tower
    # and connector (pixel shuffle, one projection) as llama.cpp's clip `idefics3` projector.
    ArchRow(
        "Idefics3ForConditionalGeneration",
        _A.LLAMA,
        "llama",
        "idefics3",
        alias_of="LlamaForCausalLM",
        text_part=IDEFICS3_TEXT,
        vision=VisionPart(gguf.VisionProjectorType.IDEFICS3, "idefics3_vision"),
    ),
    ArchRow(
        "SmolVLMForConditionalGeneration",
        _A.LLAMA,
        "llama",
        "smolvlm",
        alias_of="LlamaForCausalLM",
        text_part=IDEFICS3_TEXT,
        vision=VisionPart(gguf.VisionProjectorType.IDEFICS3, "idefics3_vision"),
    ),
    ArchRow("Phi3ForCausalLM", _A.PHI3, "phi3", "phi3"),
    ArchRow("PhiForCausalLM", _A.PHI2, "phi2", "phi"),
    ArchRow("StableLmForCausalLM", _A.STABLELM, "stablelm", "stablelm"),
    ArchRow("Starcoder2ForCausalLM", _A.STARCODER2, "starcoder2", "starcoder2"),
    ArchRow("FalconForCausalLM", _A.FALCON, "falcon", "falcon"),
    # Mixture of experts: every layer sparse (convert/families/sparse.py); experts stacked by
    # convert/families/moe.py.
    ArchRow("Qwen3MoeForCausalLM", _A.QWEN3MOE, "qwen_moe", "qwen3_moe"),
    ArchRow("Qwen2MoeForCausalLM", _A.QWEN2MOE, "qwen_moe", "qwen2_moe"),
    ArchRow("OlmoeForCausalLM", _A.OLMOE, "olmoe", "olmoe"),
    # gpt-oss: llama.cpp's openai-moe graph; MXFP4 experts kept as MXFP4
    ArchRow("GptOssForCausalLM", _A.GPT_OSS, "gpt_oss", "gpt_oss"),
    ArchRow("DeepseekV3ForCausalLM", _A.DEEPSEEK2, "deepseek", "deepseek_v3"),
    ArchRow("DeepseekV2ForCausalLM", _A.DEEPSEEK2, "deepseek", "deepseek_v2"),
    # Llama 4 text: chunked attention, no-RoPE layers, MoE with a shared expert
    ArchRow("Llama4ForCausalLM", _A.LLAMA4, "llama4", "llama4_text"),
    # Llama 4 as released: the language model converts as Llama 4 text, the vision tower, its
    # pixel-shuffle adapter and the projector as llama.cpp's clip `llama4` projector.
    ArchRow(
        "Llama4ForConditionalGeneration",
        _A.LLAMA4,
        "llama4",
        "llama4",
        alias_of="Llama4ForCausalLM",
        text_part=LLAMA4_TEXT,
        vision=VisionPart(gguf.VisionProjectorType.LLAMA4, "llama4_vision"),
    ),
    ArchRow("SmolLM3ForCausalLM", _A.SMOLLM3, "smollm3", "smollm3"),
    ArchRow("Olmo2ForCausalLM", _A.OLMO2, "olmo2", "olmo2"),
    # OLMo 3: the OLMo 2 graph plus sliding-window layers (convert/families/olmo2.py)
    ArchRow("Olmo3ForCausalLM", _A.OLMO2, "olmo2", "olmo3", alias_of="Olmo2ForCausalLM"),
    ArchRow("GraniteForCausalLM", _A.GRANITE, "granite", "granite"),
    ArchRow("GraniteMoeForCausalLM", _A.GRANITE_MOE, "granite", "granitemoe"),
    ArchRow("GPTBigCodeForCausalLM", _A.STARCODER, "starcoder", "gpt_bigcode"),
    ArchRow("Glm4ForCausalLM", _A.GLM4, "glm4", "glm4"),
    ArchRow("Glm4MoeForCausalLM", _A.GLM4_MOE, "glm4moe", "glm4_moe"),
    ArchRow("Ministral3ForCausalLM", _A.MISTRAL3, "ministral3", "ministral3"),
    # Ministral 3 / Mistral Small 3.x with vision: the language model converts as Ministral 3,
    # the Pixtral tower and Mistral 3's projector as llama.cpp's clip `pixtral` projector.
    ArchRow(
        "Mistral3ForConditionalGeneration",
        _A.MISTRAL3,
        "ministral3",
        "mistral3",
        alias_of="Ministral3ForCausalLM",
        text_part=LLAVA_TEXT,
        vision=VisionPart(gguf.VisionProjectorType.PIXTRAL, "pixtral_vision"),
    ),
    # Qwen2-VL: Qwen2.5-VL's language model (llama.cpp `qwen2vl`); its ViT (LayerNorm, quick-GELU
    # MLP, no windows) and patch merger as llama.cpp's clip `qwen2vl_merger` projector.
    ArchRow(
        "Qwen2VLForConditionalGeneration",
        _A.QWEN2VL,
        "qwen2vl",
        "qwen2_vl",
        text_part=QWEN_VL_TEXT,
        vision=VisionPart(gguf.VisionProjectorType.QWEN2VL, "qwen2vl_vision"),
    ),
    # Qwen2.5-VL: Qwen2's decoder with M-RoPE sections (llama.cpp `qwen2vl`), its ViT and
    # patch merger as llama.cpp's clip `qwen2.5vl_merger` projector.
    ArchRow(
        "Qwen2_5_VLForConditionalGeneration",
        _A.QWEN2VL,
        "qwen2vl",
        "qwen2_5_vl",
        text_part=QWEN_VL_TEXT,
        vision=VisionPart(gguf.VisionProjectorType.QWEN25VL, "qwen25vl_vision"),
    ),
    # Qwen3-VL (dense): Qwen3's decoder with interleaved M-RoPE sections and deepstack inputs
    # (llama.cpp `qwen3vl`), its ViT, patch merger and deepstack mergers as llama.cpp's clip
    # `qwen3vl_merger` projector.
    ArchRow(
        "Qwen3VLForConditionalGeneration",
        _A.QWEN3VL,
        "qwen3vl",
        "qwen3_vl",
        text_part=QWEN_VL_TEXT,
        vision=VisionPart(gguf.VisionProjectorType.QWEN3VL, "qwen3vl_vision"),
    ),
    # Qwen3-VL-MoE (30B-A3B, 235B-A22B): Qwen3-VL's decoder with a sparse MLP in every layer
    # (llama.cpp `qwen3vlmoe`), its tower as Qwen3-VL's: clip `qwen3vl_merger`.
    ArchRow(
        "Qwen3VLMoeForConditionalGeneration",
        _A.QWEN3VLMOE,
        "qwen3vlmoe",
        "qwen3_vl_moe",
        text_part=QWEN_VL_TEXT,
        vision=VisionPart(gguf.VisionProjectorType.QWEN3VL, "qwen3vl_vision"),
    ),
    # Voxtral (Mini 3B, Small 24B): the language model converts as Llama, the Whisper-style
    # audio encoder and its projector (4 frames stacked, two linear maps) as llama.cpp's clip
    # `voxtral` projector.
    ArchRow(
        "VoxtralForConditionalGeneration",
        _A.LLAMA,
        "llama",
        "voxtral",
        alias_of="LlamaForCausalLM",
        text_part=VOXTRAL_TEXT,
        audio=AudioPart(gguf.VisionProjectorType.VOXTRAL, "voxtral_audio"),
    ),
    # Qwen3-ASR (0.6B, 1.7B) in transformers' layout: the language model converts as Qwen3, the
    # audio encoder (convolutions over 100-frame chunks, windowed layers) and its projector as
    # llama.cpp's clip `qwen3a` projector.
    ArchRow(
        "Qwen3ASRForConditionalGeneration",
        _A.QWEN3,
        "qwen3",
        "qwen3_asr",
        alias_of="Qwen3ForCausalLM",
        text_part=QWEN3ASR_TEXT,
        audio=AudioPart(gguf.VisionProjectorType.QWEN3A, "qwen3asr_audio"),
        unread_layouts=(
            (
                "thinker_config",
                "the original Qwen3-ASR release's layout (thinker_config, thinker.* tensors) "
                "is not read; convert the transformers-layout repository (Qwen/Qwen3-ASR-*-hf)",
            ),
        ),
    ),
    # State-space models: a recurrent state per sequence instead of a KV cache
    ArchRow("Mamba2ForCausalLM", _A.MAMBA2, "mamba2", "mamba2"),
    # Encoder for embeddings (sentence-transformers checkpoints): pooled, not generated from.
    ArchRow("BertModel", _A.BERT, "bert", "bert"),
    # Cross-encoder rerankers (ms-marco-MiniLM): rank pooling over BertPooler and a one-logit
    # classifier
    ArchRow("BertForSequenceClassification", _A.BERT, "bert", "bert", alias_of="BertModel"),
    # XLM-RoBERTa encoders (bge-m3, multilingual-e5) and cross-encoders (bge-reranker-v2-m3):
    # BERT's graph with RoBERTa's position offset and a SentencePiece Unigram tokenizer
    ArchRow("XLMRobertaModel", _A.BERT, "xlm_roberta", "xlm-roberta"),
    ArchRow(
        "XLMRobertaForSequenceClassification",
        _A.BERT,
        "xlm_roberta",
        "xlm-roberta",
        alias_of="XLMRobertaModel",
    ),
    # Qwen3.5: Gated DeltaNet (linear attention) layers with a full-attention layer every 4th;
    # released checkpoints are the multimodal wrappers, whose language model converts, and
    # whose tower (Qwen3-VL's without deepstack) is llama.cpp's clip `qwen3vl_merger` projector.
    ArchRow("Qwen3_5ForCausalLM", _A.QWEN35, "qwen35", "qwen3_5_text"),
    ArchRow(
        "Qwen3_5ForConditionalGeneration",
        _A.QWEN35,
        "qwen35",
        "qwen3_5",
        alias_of="Qwen3_5ForCausalLM",
        text_part=QWEN35_TEXT,
        vision=VisionPart(gguf.VisionProjectorType.QWEN3VL, "qwen3vl_vision"),
    ),
    ArchRow("Qwen3_5MoeForCausalLM", _A.QWEN35MOE, "qwen35", "qwen3_5_moe_text"),
    ArchRow(
        "Qwen3_5MoeForConditionalGeneration",
        _A.QWEN35MOE,
        "qwen35",
        "qwen3_5_moe",
        alias_of="Qwen3_5MoeForCausalLM",
        text_part=QWEN35_TEXT,
        vision=VisionPart(gguf.VisionProjectorType.QWEN3VL, "qwen3vl_vision"),
    ),
    # Gemma 4 text: per-type head sizes, proportional RoPE, per-layer embeddings, shared KV,
    # MoE beside a dense MLP (convert/families/gemma4.py)
    ArchRow("Gemma4ForCausalLM", _A.GEMMA4, "gemma4", "gemma4_text", tokenizer=GEMMA4_TOKENIZER),
    # Gemma 4 as released (E2B/E4B/26B-A4B/31B): the language model converts as Gemma 4 text,
    # the vision tower and embedder as llama.cpp's clip `gemma4v` projector, E2B/E4B's audio
    # tower and embedder as `gemma4a`, both in one projector file.
    ArchRow(
        "Gemma4ForConditionalGeneration",
        _A.GEMMA4,
        "gemma4",
        "gemma4",
        alias_of="Gemma4ForCausalLM",
        text_part=GEMMA4_TEXT,
        tokenizer=GEMMA4_TOKENIZER,
        vision=VisionPart(gguf.VisionProjectorType.GEMMA4V, "gemma4_vision"),
        audio=AudioPart(gguf.VisionProjectorType.GEMMA4A, "gemma4_audio"),
    ),
    # Falcon-H1: attention and a Mamba-2 mixer in parallel in every layer (a KV cache and a
    # recurrent state per sequence); the muP multipliers are folded into the weights
    ArchRow("FalconH1ForCausalLM", _A.FALCON_H1, "falcon_h1", "falcon_h1"),
    # NomicBERT encoder (nomic-embed-text v1 / v1.5): rotary, SwiGLU, post-norm
    ArchRow("NomicBertModel", _A.NOMIC_BERT, "nomic_bert", "nomic_bert"),
    # Jina Embeddings v3 (transformers' port, without its task LoRA adapters): XLM-R with
    # rotary positions and a fused QKV
    ArchRow("JinaEmbeddingsV3Model", _A.JINA_BERT_V3, "jina_embeddings_v3", "jina_embeddings_v3"),
    # ModernBERT encoder (embeddings): alternating global / sliding-window layers
    ArchRow("ModernBertModel", _A.MODERN_BERT, "modern_bert", "modernbert"),
    # ModernBERT cross-encoders (gte-reranker-modernbert): rank pooling over its head
    ArchRow(
        "ModernBertForSequenceClassification",
        _A.MODERN_BERT,
        "modern_bert",
        "modernbert",
        alias_of="ModernBertModel",
    ),
)
_BY_NAME: Mapping[str, ArchRow] = {row.hf_name: row for row in SUPPORTED}
# A model_type names its first row: "bert" is BertModel, not the cross-encoder after it
BY_MODEL_TYPE: Mapping[str, ArchRow] = {row.model_type: row for row in reversed(SUPPORTED)}


def supported_names() -> list[str]:
    return [row.hf_name for row in SUPPORTED]


def row_for_config(config: Mapping[str, Any]) -> ArchRow | None:
    """The row config.json names: its first `architectures` entry or, in older configs that
    carry only that, its `model_type`; None when the table has no such row."""
    archs = config.get("architectures")
    if isinstance(archs, list) and archs:
        return _BY_NAME.get(archs[0]) if isinstance(archs[0], str) else None
    model_type = config.get("model_type")
    return BY_MODEL_TYPE.get(model_type) if isinstance(model_type, str) else None


def lookup(hf_name: str) -> ArchRow:
    """The table row for an HF architecture name, or an error listing every accepted name."""
    row = _BY_NAME.get(hf_name)
    if row is None:
        raise UnsupportedArchitectureError(
            f"unsupported architecture {hf_name!r}; supported: {', '.join(supported_names())}"
        )
    return row
