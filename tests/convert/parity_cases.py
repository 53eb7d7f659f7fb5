"""The parity cases: one tiny checkpoint configuration per row of the architecture table (and
per quirk worth its own case), at the ratios of released models, scaled down.

Data only, read by tests/convert/test_parity.py (which builds, converts and compares each) and
by the tests that build the same checkpoints for their own checks; importable from the
repository root as `tests.convert.parity_cases` (pyproject's pytest `pythonpath` puts the root
first), so a benchmark can build them too.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

SMALL = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 256,
}


@dataclass(frozen=True)
class Case:
    model_cls: str
    config_cls: str
    config: dict[str, Any]
    tokenizer: str = "spm"
    dtype: str = "float32"
    shard_size: str | None = None
    outtypes: tuple[str, ...] = ("f32",)
    extra: dict[str, Any] = field(default_factory=dict)
    pooling: str | None = None  # encoders: the sentence-transformers pooling mode written


LLAMA3_ROPE = {
    "rope_type": "llama3",
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 16,
}
CASES: dict[str, Case] = {
    "llama2-spm": Case("LlamaForCausalLM", "LlamaConfig", SMALL, outtypes=("f32", "f16", "q8_0")),
    "llama3.1-bpe-rope-freqs": Case(
        "LlamaForCausalLM",
        "LlamaConfig",
        {**SMALL, "rope_scaling": LLAMA3_ROPE, "rope_theta": 500000.0},
        tokenizer="llama3",
    ),
    "llama3.2-tied": Case(
        "LlamaForCausalLM", "LlamaConfig", {**SMALL, "tie_word_embeddings": True}, "llama3"
    ),
    "llama-bf16": Case(
        "LlamaForCausalLM", "LlamaConfig", SMALL, dtype="bfloat16", outtypes=("f32", "bf16")
    ),
    "llama-biases": Case(
        "LlamaForCausalLM", "LlamaConfig", {**SMALL, "attention_bias": True, "mlp_bias": True}
    ),
    "llama-f16-source": Case("LlamaForCausalLM", "LlamaConfig", SMALL, dtype="float16"),
    "llama-sharded": Case("LlamaForCausalLM", "LlamaConfig", SMALL, shard_size="100KB"),
    "mistral": Case("MistralForCausalLM", "MistralConfig", SMALL),
    "qwen2-biases": Case(
        "Qwen2ForCausalLM", "Qwen2Config", SMALL, tokenizer="qwen2", outtypes=("f32", "q8_0")
    ),
    "qwen2-tied": Case(
        "Qwen2ForCausalLM", "Qwen2Config", {**SMALL, "tie_word_embeddings": True}, "qwen2"
    ),
    "qwen3-qk-norm": Case(
        "Qwen3ForCausalLM", "Qwen3Config", {**SMALL, "head_dim": 32}, tokenizer="qwen2"
    ),
    # Qwen3-Embedding: the bare decoder (no lm_head, tied), pooled by its last token
    "qwen3-embedding": Case(
        "Qwen3Model",
        "Qwen3Config",
        {**SMALL, "head_dim": 32, "tie_word_embeddings": True},
        tokenizer="qwen2",
        pooling="lasttoken",
    ),
    "gemma": Case(
        "GemmaForCausalLM", "GemmaConfig", {**SMALL, "head_dim": 16}, outtypes=("f32", "f16")
    ),
    "gemma2-softcap-swa": Case(
        "Gemma2ForCausalLM",
        "Gemma2Config",
        {**SMALL, "head_dim": 16, "query_pre_attn_scalar": 16, "sliding_window": 8},
    ),
    "gemma3-local-rope-swa": Case(
        "Gemma3ForCausalLM",
        "Gemma3TextConfig",
        {
            **SMALL,
            "head_dim": 16,
            "query_pre_attn_scalar": 16,
            "sliding_window": 8,
            "layer_types": ["sliding_attention", "full_attention"],
            "rope_parameters": {
                "full_attention": {"rope_theta": 1e6, "rope_type": "linear", "factor": 8.0},
                "sliding_attention": {"rope_theta": 10000.0, "rope_type": "default"},
            },
        },
        outtypes=("f32", "q8_0"),
    ),
    # EmbeddingGemma: Gemma 3's text model with bidirectional attention (its Dense modules
    # and prompts: test_embedding_gemma.py)
    "embedding-gemma-bidirectional": Case(
        "Gemma3TextModel",
        "Gemma3TextConfig",
        {
            **SMALL,
            "head_dim": 16,
            "query_pre_attn_scalar": 16,
            "sliding_window": 8,
            "layer_types": ["sliding_attention", "full_attention"],
            "use_bidirectional_attention": True,
        },
        pooling="mean_tokens",
    ),
    "phi3-fused": Case(
        "Phi3ForCausalLM",
        "Phi3Config",
        {**SMALL, "sliding_window": None, "pad_token_id": 0},
        tokenizer="llama3",
        outtypes=("f32", "q8_0"),
    ),
    "phi3.5-longrope-partial-rotary": Case(
        "Phi3ForCausalLM",
        "Phi3Config",
        {
            **SMALL,
            "sliding_window": None,
            "pad_token_id": 0,
            "partial_rotary_factor": 0.5,
            # llama.cpp pads the context to 256 and picks the long factors above the
            # original length; HF picks by sequence length. Keep both on the short ones.
            "max_position_embeddings": 4096,
            "original_max_position_embeddings": 512,
            "rope_scaling": {
                "type": "longrope",
                "long_factor": [1.0, 1.5, 2.0, 4.0],
                "short_factor": [1.0, 1.1, 1.2, 1.5],
            },
        },
    ),
    "phi2-partial-rotary": Case(
        "PhiForCausalLM",
        "PhiConfig",
        {**SMALL, "num_key_value_heads": 4, "partial_rotary_factor": 0.5},
        tokenizer="gpt2",
        outtypes=("f32", "q8_0"),
    ),
    "stablelm": Case(
        "StableLmForCausalLM",
        "StableLmConfig",
        {**SMALL, "partial_rotary_factor": 0.25, "use_qkv_bias": True},
        tokenizer="gpt2",
    ),
    "stablelm-parallel-residual": Case(
        "StableLmForCausalLM",
        "StableLmConfig",
        {**SMALL, "partial_rotary_factor": 0.5, "use_parallel_residual": True},
        tokenizer="gpt2",
    ),
    "starcoder2-tied": Case(
        "Starcoder2ForCausalLM",
        "Starcoder2Config",
        {**SMALL, "sliding_window": None},
        tokenizer="starcoder",
        outtypes=("f32", "q8_0"),
    ),
    "falcon-7b-multi-query": Case(
        "FalconForCausalLM",
        "FalconConfig",
        {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4},
        tokenizer="gpt2",
        outtypes=("f32", "q8_0"),
    ),
    "falcon-40b-grouped-qkv": Case(
        "FalconForCausalLM",
        "FalconConfig",
        {
            "hidden_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_kv_heads": 2,
            "new_decoder_architecture": True,
        },
        tokenizer="gpt2",
    ),
    "mixtral-moe": Case(
        "MixtralForCausalLM",
        "MixtralConfig",
        {**SMALL, "num_local_experts": 4, "num_experts_per_tok": 2},
        outtypes=("f32", "q8_0"),
    ),
    "gemma3-multimodal-text-part": Case(
        "Gemma3ForConditionalGeneration",
        "Gemma3Config",
        {
            "text_config": {
                **SMALL,
                "head_dim": 16,
                "query_pre_attn_scalar": 16,
                "sliding_window": 8,
                "layer_types": ["sliding_attention", "full_attention"],
            },
            "vision_config": {
                "hidden_size": 32,
                "intermediate_size": 64,
                "num_hidden_layers": 1,
                "num_attention_heads": 2,
                "image_size": 28,
                "patch_size": 14,
            },
            "mm_tokens_per_image": 4,
        },
    ),
    # SmolVLM-256M's ratios, scaled down: the tower's 8 x 8 patches shuffled by 2 (16 image
    # tokens a tile); tests/tiny_vlm.py builds the same checkpoint with its image tokens
    "smolvlm-multimodal-text-part": Case(
        "SmolVLMForConditionalGeneration",
        "SmolVLMConfig",
        {
            "text_config": {"model_type": "llama", **SMALL, "head_dim": 16},
            "vision_config": {
                "hidden_size": 32,
                "intermediate_size": 64,
                "num_hidden_layers": 1,
                "num_attention_heads": 2,
                "image_size": 64,
                "patch_size": 8,
            },
            "scale_factor": 2,
            "image_token_id": 3,
        },
        tokenizer="gpt2",
    ),
}
# Qwen2.5-VL (the 7B's ratios: head 128 with mrope_section [16, 24, 24] -> head 16 with
# [2, 3, 3]); the tower is Qwen2.5-VL's shape at patch 14 and windows of 112 pixels
# (tests/tiny_vlm.py builds the same checkpoint with its image tokens)
CASES["qwen2.5-vl-multimodal-text-part"] = Case(
    "Qwen2_5_VLForConditionalGeneration",
    "Qwen2_5_VLConfig",
    {
        "text_config": {
            **SMALL,
            "max_position_embeddings": 1024,
            "rms_norm_eps": 1e-6,
            "rope_parameters": {
                "rope_type": "default",
                "rope_theta": 1e6,
                "mrope_section": [2, 3, 3],
            },
        },
        "vision_config": {
            "depth": 4,
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_heads": 2,
            "out_hidden_size": 64,
            "patch_size": 14,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
            "window_size": 112,
            "fullatt_block_indexes": [1, 3],
        },
    },
    tokenizer="qwen2",
)
# Qwen2-VL: Qwen2.5-VL's language model (M-RoPE sections, arch qwen2vl); its tower (LayerNorm,
# quick-GELU MLP of mlp_ratio x embed_dim, no windows) is embed_dim wide, the vision config's
# hidden_size being the merger's output (tests/tiny_vlm.py builds the same checkpoint with its
# image tokens)
CASES["qwen2-vl-multimodal-text-part"] = Case(
    "Qwen2VLForConditionalGeneration",
    "Qwen2VLConfig",
    {
        "text_config": {
            **SMALL,
            "max_position_embeddings": 1024,
            "rms_norm_eps": 1e-6,
            "rope_parameters": {
                "rope_type": "default",
                "rope_theta": 1e6,
                "mrope_section": [2, 3, 3],
            },
        },
        "vision_config": {
            "depth": 3,  # llama.cpp's converter maps the merger's mlp.2 as block 2
            "embed_dim": 32,
            "hidden_size": 64,
            "mlp_ratio": 4,
            "num_heads": 2,
            "patch_size": 14,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
        },
    },
    tokenizer="qwen2",
)
# Qwen3-VL (the 4B's ratios: head 128 with interleaved mrope_section [24, 20, 20] -> head 16
# with [3, 3, 2]; deepstack from 3 of 24 tower layers into the first 3 of 36 text layers -> 2
# of 4 (not the first) into 2 of 3); the tower is
# Qwen3-VL's shape at patch 16 with a 4 x 4 position grid (tests/tiny_vlm.py builds the same
# checkpoint with its image tokens)
CASES["qwen3-vl-multimodal-text-part"] = Case(
    "Qwen3VLForConditionalGeneration",
    "Qwen3VLConfig",
    {
        "text_config": {
            **SMALL,
            "num_hidden_layers": 3,
            "head_dim": 16,
            "max_position_embeddings": 1024,
            "rms_norm_eps": 1e-6,
            "rope_parameters": {
                "rope_type": "default",
                "rope_theta": 5e6,
                "mrope_section": [3, 3, 2],
                "mrope_interleaved": True,
            },
        },
        "vision_config": {
            "depth": 4,
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_heads": 2,
            "out_hidden_size": 64,
            "patch_size": 16,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
            "num_position_embeddings": 16,
            "deepstack_visual_indexes": [1, 2],
        },
    },
    tokenizer="qwen2",
)
# Qwen3-VL-MoE (30B-A3B's ratios as Qwen3-VL's above; 128 experts, 8 used -> 4, 2): Qwen3-VL's
# decoder with experts in every layer; moe_intermediate_size neither the hidden size nor half
# of it, so the fused experts' layout (transformers' own, which it saves) shows in their
# shapes. tests/tiny_vlm.py builds the same checkpoint in the released layout
CASES["qwen3-vl-moe-multimodal-text-part"] = Case(
    "Qwen3VLMoeForConditionalGeneration",
    "Qwen3VLMoeConfig",
    {
        "text_config": {
            **CASES["qwen3-vl-multimodal-text-part"].config["text_config"],
            "num_experts": 4,
            "num_experts_per_tok": 2,
            "moe_intermediate_size": 48,
            "tie_word_embeddings": False,
        },
        "vision_config": CASES["qwen3-vl-multimodal-text-part"].config["vision_config"],
    },
    tokenizer="qwen2",
)
# Voxtral: its Llama language model (rope base 1e8 as released); the Whisper-style audio tower
# of the released shape's ratios (4 frames stacked: intermediate_size 4 x hidden_size) goes to
# the projector (tests/tiny_alm.py builds the checkpoint with its audio tokens)
CASES["voxtral-multimodal-text-part"] = Case(
    "VoxtralForConditionalGeneration",
    "VoxtralConfig",
    {
        "text_config": {
            **SMALL,
            "head_dim": 16,
            "rope_parameters": {"rope_type": "default", "rope_theta": 1e8},
        },
        "audio_config": {
            "hidden_size": 32,
            "intermediate_size": 128,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
        },
        "audio_token_id": 3,
    },
    tokenizer="gpt2",
)
# Qwen3-ASR as transformers' port saves it: its Qwen3 language model (tied embeddings, as
# released); the audio encoder (3 convolutions 8 channels wide over 128 mel bins, 4 layers 32
# wide: llama.cpp's converter maps conv2d3 as block 3, so only for 4 layers or more) goes to
# the projector (tests/tiny_alm.py builds the checkpoint with its audio tokens)
CASES["qwen3-asr-multimodal-text-part"] = Case(
    "Qwen3ASRForConditionalGeneration",
    "Qwen3ASRConfig",
    {
        # tied in both places, as Qwen3ASRConfig's default text_config (transformers ties by the
        # top-level flag; llorch reads the text_config's)
        "text_config": {**SMALL, "head_dim": 16, "tie_word_embeddings": True},
        "audio_config": {
            "d_model": 32,
            "encoder_ffn_dim": 64,
            "encoder_layers": 4,
            "encoder_attention_heads": 2,
            "downsample_hidden_size": 8,
            "output_dim": 64,
        },
        "audio_token_id": 3,
    },
    tokenizer="qwen2",
)
CASES["idefics3-multimodal-text-part"] = Case(
    "Idefics3ForConditionalGeneration",
    "Idefics3Config",
    CASES["smolvlm-multimodal-text-part"].config,
    tokenizer="gpt2",
)


# all-MiniLM-L6-v2 / bge-small ratios: head_dim 32, intermediate 4x, post-norm, type_vocab 2
BERT = {
    "hidden_size": 64,
    "intermediate_size": 256,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "max_position_embeddings": 64,
    "type_vocab_size": 2,
    "layer_norm_eps": 1e-12,
}
CASES.update(
    {
        "bert-mean-pooling": Case(
            "BertModel",
            "BertConfig",
            BERT,
            "wordpiece",
            pooling="mean_tokens",
            outtypes=("f32", "f16"),
        ),
        "bert-cls-pooling-cased": Case(
            "BertModel", "BertConfig", BERT, "wordpiece-cased", pooling="cls_token"
        ),
        # ms-marco-MiniLM-style cross-encoder: the encoder's hidden states, and its score
        # (BertPooler, then the one-logit classifier) through llama.cpp's rank pooling
        "bert-cross-encoder": Case(
            "BertForSequenceClassification",
            "BertConfig",
            {**BERT, "num_labels": 1},
            "wordpiece",
            pooling="rank",
        ),
    }
)
# nomic-embed-text-v1.5 ratios: head_dim 64, SwiGLU intermediate 4x, rotary base 1000, no
# biases, post-norm, type_vocab 2 (its config in nomic's own names: test_nomic_bert.py)
NOMIC_BERT = {
    "hidden_size": 128,
    "intermediate_size": 512,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "max_position_embeddings": 64,
    "type_vocab_size": 2,
    "layer_norm_eps": 1e-12,
}
CASES["nomic-bert-mean-pooling"] = Case(
    "NomicBertModel",
    "NomicBertConfig",
    NOMIC_BERT,
    "wordpiece",
    pooling="mean_tokens",
    outtypes=("f32", "f16"),
)
# bge-m3 / bge-reranker-v2-m3 ratios: BERT's with RoBERTa's position offset (pad id 1: two
# unused position rows), one token type, and a SentencePiece Unigram tokenizer
XLM_ROBERTA = {
    **BERT,
    "max_position_embeddings": 66,
    "type_vocab_size": 1,
    "pad_token_id": 1,
    "bos_token_id": 0,
    "eos_token_id": 2,
    "layer_norm_eps": 1e-5,
}
CASES["xlm-roberta-cls-pooling"] = Case(
    "XLMRobertaModel", "XLMRobertaConfig", XLM_ROBERTA, "unigram", pooling="cls_token"
)
# its cross-encoder head (dense, tanh, out_proj on <s>) through llama.cpp's rank pooling
CASES["xlm-roberta-cross-encoder"] = Case(
    "XLMRobertaForSequenceClassification",
    "XLMRobertaConfig",
    {**XLM_ROBERTA, "num_labels": 1},
    "unigram",
    pooling="rank",
)
# jina-embeddings-v3 ratios (XLM-R's, head_dim 64, rotary base 20000, qkv biases): its
# sentence-transformers pooling is the mean
CASES["jina-embeddings-v3-mean-pooling"] = Case(
    "JinaEmbeddingsV3Model",
    "JinaEmbeddingsV3Config",
    {**XLM_ROBERTA, "hidden_size": 128, "num_attention_heads": 2, "intermediate_size": 512},
    "unigram",
    pooling="mean_tokens",
    outtypes=("f32", "f16"),
)
# Released configs scaled down (ratios kept): Qwen3-30B-A3B (head_dim 2x hidden/heads, GQA 8:1,
# norm_topk_prob, untied), Qwen1.5-MoE-A2.7B (qkv biases, shared expert 4x an expert, its
# sigmoid gate), OLMoE-1B-7B (full-width q/k norms, no GQA, experts half the hidden width).
MOE_ATTN = {"hidden_size": 64, "num_hidden_layers": 2, "max_position_embeddings": 256}
LLAMA4 = {
    **MOE_ATTN,
    "num_hidden_layers": 4,
    "num_attention_heads": 10,
    "num_key_value_heads": 2,
    "head_dim": 16,
    "intermediate_size_mlp": 192,
    "num_experts_per_tok": 1,
    "rope_theta": 500000.0,
    # as released (low = high frequency factor); the original context 16 < 24 tokens
    "rope_scaling": {
        "rope_type": "llama3",
        "factor": 16.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 1.0,
        "original_max_position_embeddings": 16,
    },
    "pad_token_id": 2,
    "bos_token_id": 0,
    "eos_token_id": 1,
}
# Llama 4's tower scaled down (Scout: 34 layers 1408 wide, 336-pixel tiles of 14-pixel
# patches, pixel shuffle 0.5, the adapter 4096 wide): intermediate_size is the MLP's width and
# the adapter's input (width x 4 after the shuffle)
LLAMA4_VISION = {
    "hidden_size": 32,
    "intermediate_size": 128,
    "num_hidden_layers": 3,
    "num_attention_heads": 2,
    "image_size": 112,
    "patch_size": 14,
    "pixel_shuffle_ratio": 0.5,
    "projector_input_dim": 48,
    "projector_output_dim": 48,
    "vision_output_dim": 48,
}
CASES.update(
    {
        "qwen3moe": Case(
            "Qwen3MoeForCausalLM",
            "Qwen3MoeConfig",
            {
                **MOE_ATTN,
                "num_attention_heads": 8,
                "num_key_value_heads": 1,
                "head_dim": 16,
                "intermediate_size": 192,
                "moe_intermediate_size": 24,
                "num_experts": 8,
                "num_experts_per_tok": 2,
                "norm_topk_prob": True,
                "rope_theta": 1e6,
            },
            tokenizer="qwen2",
        ),
        "qwen2moe-shared-expert": Case(
            "Qwen2MoeForCausalLM",
            "Qwen2MoeConfig",
            {
                **MOE_ATTN,
                "num_attention_heads": 4,
                "num_key_value_heads": 4,
                "intermediate_size": 176,
                "moe_intermediate_size": 44,
                "shared_expert_intermediate_size": 176,
                "num_experts": 8,
                "num_experts_per_tok": 2,
            },
            tokenizer="qwen2",
        ),
        # DeepSeek-V3: q LoRA, latent KV (kv_lora 512, nope 128, rope 64, v 128), 256 experts
        # top-8 in 8 groups (top-4 groups), sigmoid router with correction bias, scaling 2.5,
        # 1 shared expert, 3 leading dense layers; scaled: 16 experts top-4 in 4 groups (top-2)
        "deepseek-v3-mla": Case(
            "DeepseekV3ForCausalLM",
            "DeepseekV3Config",
            {
                **MOE_ATTN,
                "num_hidden_layers": 3,
                "num_attention_heads": 4,
                "num_key_value_heads": 4,
                "intermediate_size": 144,
                "moe_intermediate_size": 16,
                "q_lora_rank": 24,
                "kv_lora_rank": 32,
                "qk_nope_head_dim": 16,
                "qk_rope_head_dim": 8,
                "v_head_dim": 16,
                "n_routed_experts": 16,
                "num_experts_per_tok": 4,
                "n_group": 4,
                "topk_group": 2,
                "n_shared_experts": 1,
                "first_k_dense_replace": 1,
                "routed_scaling_factor": 2.5,
                "norm_topk_prob": True,
                # as released: YaRN factor 40 from 4096 (mscale 1): scales every position's
                # low frequencies and the attention
                "max_position_embeddings": 163840,
                "rope_parameters": {
                    "rope_type": "yarn",
                    "rope_theta": 10000.0,
                    "factor": 40.0,
                    "original_max_position_embeddings": 4096,
                    "beta_fast": 32.0,
                    "beta_slow": 1.0,
                    "mscale": 1.0,
                    "mscale_all_dim": 1.0,
                },
            },
            tokenizer="llama3",
        ),
        # DeepSeek-V2-Lite: no q LoRA, softmax router, 64 experts top-6, 2 shared, 1 dense layer;
        # 27 layers as released (llama.cpp tells a query without LoRA by the layer count)
        "deepseek-v2-lite-mla": Case(
            "DeepseekV2ForCausalLM",
            "DeepseekV2Config",
            {
                **MOE_ATTN,
                "num_hidden_layers": 27,
                "num_attention_heads": 4,
                "num_key_value_heads": 4,
                "intermediate_size": 160,
                "moe_intermediate_size": 16,
                "q_lora_rank": None,
                "kv_lora_rank": 32,
                "qk_nope_head_dim": 16,
                "qk_rope_head_dim": 8,
                "v_head_dim": 16,
                "n_routed_experts": 12,
                "num_experts_per_tok": 3,
                "n_shared_experts": 2,
                "first_k_dense_replace": 1,
            },
            tokenizer="llama3",
        ),
        # GLM-4.5-Air: GQA 12:1 (96 heads / 8 kv, head_dim 128), half-rotary, biases, 128
        # experts top-8 (sigmoid + correction bias, scaling 1.0, norm_topk), 1 shared expert,
        # 1 leading dense layer; scaled: 16 experts top-4, 8 heads / 2 kv
        "glm4moe": Case(
            "Glm4MoeForCausalLM",
            "Glm4MoeConfig",
            {
                **MOE_ATTN,
                "num_hidden_layers": 3,
                "num_attention_heads": 8,
                "num_key_value_heads": 2,
                "head_dim": 16,
                "partial_rotary_factor": 0.5,
                "attention_bias": True,
                "intermediate_size": 160,
                "moe_intermediate_size": 24,
                "n_routed_experts": 16,
                "num_experts_per_tok": 4,
                "n_shared_experts": 1,
                "first_k_dense_replace": 1,
                "routed_scaling_factor": 1.0,
                "norm_topk_prob": True,
                "pad_token_id": 1,
                "eos_token_id": 2,
            },
            tokenizer="gpt2",
        ),
        # gpt-oss-20b: 8:1 GQA, head_dim 64 of hidden 2880, experts as wide as the hidden
        # size, 32 experts top-4, attention sinks, sliding window on even layers, YaRN 32x
        # from 4096; scaled: 8 experts. Here the dequantized layout (transformers' save) and
        # YaRN truncated as llama.cpp computes it; the released MXFP4 layout and truncate
        # false are in test_gpt_oss.py.
        "gpt-oss-dequantized": Case(
            "GptOssForCausalLM",
            "GptOssConfig",
            {
                **MOE_ATTN,
                "num_attention_heads": 8,
                "num_key_value_heads": 1,
                "head_dim": 16,
                "intermediate_size": 64,
                "num_local_experts": 8,
                "num_experts_per_tok": 4,
                "sliding_window": 8,
                "max_position_embeddings": 131072,
                "rope_parameters": {
                    "rope_type": "yarn",
                    "rope_theta": 150000.0,
                    "factor": 32.0,
                    "beta_fast": 32.0,
                    "beta_slow": 1.0,
                    "truncate": True,
                    "original_max_position_embeddings": 4096,
                },
                "pad_token_id": 2,
                "eos_token_id": 1,
            },
            tokenizer="llama3",
        ),
        # Llama 4 Scout: 40 heads / 8 kv of head_dim 128 (hidden 5120), 16 experts top-1 in
        # every layer with a shared expert 8192 wide (dense MLP 16384), no RoPE on every 4th
        # layer, q/k L2 norm, chunked attention (8192), llama3 RoPE scaling 16x from 8192
        "llama4-scout": Case(
            "Llama4ForCausalLM",
            "Llama4TextConfig",
            {**LLAMA4, "intermediate_size": 96, "num_local_experts": 16, "use_qk_norm": True},
            tokenizer="llama3",
        ),
        # Llama 4 Scout as released (Llama4ForConditionalGeneration: `language_model.*` beside
        # the vision part); the tower is 3 layers 32 wide over 8 x 8 patches of 14, shuffled
        # 2 x 2 (llama.cpp's converter maps the adapter's mlp.2 for a tower of 3 or more);
        # tests/tiny_vlm.py builds the same checkpoint with its image tokens
        "llama4-multimodal-text-part": Case(
            "Llama4ForConditionalGeneration",
            "Llama4Config",
            {
                "text_config": {
                    **LLAMA4,
                    "intermediate_size": 96,
                    "num_local_experts": 16,
                    "use_qk_norm": True,
                },
                "vision_config": LLAMA4_VISION,
            },
            tokenizer="llama3",
        ),
        # Llama 4 Maverick: 128 experts in every 2nd layer, dense MLPs between, no q/k norm
        "llama4-maverick-interleaved": Case(
            "Llama4ForCausalLM",
            "Llama4TextConfig",
            {
                **LLAMA4,
                "intermediate_size": 32,
                "num_local_experts": 128,
                "interleave_moe_layer_step": 2,
                "use_qk_norm": False,
            },
            tokenizer="llama3",
        ),
        "olmoe": Case(
            "OlmoeForCausalLM",
            "OlmoeConfig",
            {
                **MOE_ATTN,
                "num_attention_heads": 4,
                "num_key_value_heads": 4,
                "intermediate_size": 32,
                "num_experts": 16,
                "num_experts_per_tok": 2,
                "pad_token_id": 1,
                "eos_token_id": 2,
            },
            tokenizer="gpt2",
        ),
    }
)
# Dense rows of 2025, from the released configs scaled down: SmolLM3-3B (GQA 4:1, no RoPE on
# every 4th layer, so 4 layers; tied), OLMo-2 (post-norms, full-width q/k norms; GQA as in
# the 32B), Granite 3.1 2B (multipliers, attention_multiplier = 1/head_dim, tied), StarCoder 1
# (multi-query fused c_attn, learned positions).
CASES.update(
    {
        "smollm3-no-rope-every-4th": Case(
            "SmolLM3ForCausalLM",
            "SmolLM3Config",
            {
                **SMALL,
                "num_hidden_layers": 4,
                "num_key_value_heads": 1,
                "intermediate_size": 344,
                "tie_word_embeddings": True,
                "rope_theta": 5e6,
                "pad_token_id": 2,
                "bos_token_id": 0,
                "eos_token_id": 1,
            },
            tokenizer="llama3",
        ),
        "olmo2-post-norms": Case(
            "Olmo2ForCausalLM",
            "Olmo2Config",
            {**SMALL, "intermediate_size": 172, "rope_theta": 5e5, "pad_token_id": 1},
            tokenizer="gpt2",
        ),
        # OLMo 3 7B: sliding window on 3 of every 4 layers (window 8 < 24 tokens here)
        "olmo3-sliding-window": Case(
            "Olmo3ForCausalLM",
            "Olmo3Config",
            {
                **SMALL,
                "num_hidden_layers": 4,
                "num_key_value_heads": 4,
                "intermediate_size": 172,
                "sliding_window": 8,
                "rope_theta": 5e5,
                "pad_token_id": 1,
            },
            tokenizer="gpt2",
        ),
        "granite-multipliers": Case(
            "GraniteForCausalLM",
            "GraniteConfig",
            {
                **SMALL,
                "num_key_value_heads": 1,
                "intermediate_size": 256,
                "embedding_multiplier": 12.0,
                "residual_multiplier": 0.22,
                "attention_multiplier": 1 / 16,
                "logits_scaling": 8.0,
                "tie_word_embeddings": True,
                "rope_theta": 5e6,
            },
            tokenizer="gpt2",
        ),
        # GLM-4-9B-0414: GQA 16:1, head_dim 128 (hidden/heads), half-rotary, biases, untied
        "glm4-half-rotary-sandwich-norms": Case(
            "Glm4ForCausalLM",
            "Glm4Config",
            {
                **SMALL,
                "num_attention_heads": 4,
                "num_key_value_heads": 1,
                "head_dim": 16,
                "intermediate_size": 214,
                "partial_rotary_factor": 0.5,
                "attention_bias": True,
                "pad_token_id": 2,
                "eos_token_id": 1,
            },
            tokenizer="gpt2",
        ),
        # Granite 3.1 3B-A800M: 40 experts top-8 (scaled 8 / top-2), experts 512 wide of 1536
        "granitemoe": Case(
            "GraniteMoeForCausalLM",
            "GraniteMoeConfig",
            {
                **SMALL,
                "num_attention_heads": 4,
                "num_key_value_heads": 1,
                "intermediate_size": 24,
                "num_local_experts": 8,
                "num_experts_per_tok": 2,
                "embedding_multiplier": 12.0,
                "residual_multiplier": 0.22,
                "attention_multiplier": 1 / 16,
                "logits_scaling": 6.0,
                "tie_word_embeddings": True,
                "pad_token_id": 1,
            },
            tokenizer="gpt2",
        ),
        # Ministral 3 (3B/8B/14B): YaRN factor 16 from 16384, Llama 4 attention temperature 0.1;
        # here the original context is 8 so both act within the 24 test positions
        "ministral3-yarn-attn-temperature": Case(
            "Ministral3ForCausalLM",
            "Ministral3Config",
            {
                **SMALL,
                "num_attention_heads": 4,
                "num_key_value_heads": 1,
                "head_dim": 32,
                "intermediate_size": 192,
                "max_position_embeddings": 128,
                "rope_parameters": {
                    "rope_type": "yarn",
                    "rope_theta": 1e6,
                    "factor": 16.0,
                    "original_max_position_embeddings": 8,
                    "beta_fast": 32.0,
                    "beta_slow": 1.0,
                    "mscale": 1.0,
                    "mscale_all_dim": 1.0,
                    "llama_4_scaling_beta": 0.1,
                },
                "pad_token_id": 2,
                "bos_token_id": 0,
                "eos_token_id": 1,
            },
        ),
        "mistral3-multimodal-text-part": Case(
            "Mistral3ForConditionalGeneration",
            "Mistral3Config",
            {
                "text_config": {
                    "model_type": "ministral3",
                    **SMALL,
                    "num_attention_heads": 4,
                    "num_key_value_heads": 1,
                    "head_dim": 32,
                    "intermediate_size": 192,
                    "rope_parameters": {
                        "rope_type": "yarn",
                        "rope_theta": 1e6,
                        "factor": 16.0,
                        "original_max_position_embeddings": 8,
                        "beta_fast": 32.0,
                        "beta_slow": 1.0,
                        "mscale": 1.0,
                        "mscale_all_dim": 1.0,
                        "llama_4_scaling_beta": 0.1,
                    },
                    "pad_token_id": 2,
                },
                "vision_config": {
                    "hidden_size": 32,
                    "intermediate_size": 64,
                    "num_hidden_layers": 1,
                    "num_attention_heads": 2,
                    "image_size": 28,
                    "patch_size": 14,
                    "head_dim": 16,
                },
                "image_token_index": 3,
                "tie_word_embeddings": False,  # as released: lm_head stored
            },
            tokenizer="pixtral",  # [IMG_BREAK]: its projector's row of the token embeddings
        ),
        "starcoder1-multi-query": Case(
            "GPTBigCodeForCausalLM",
            "GPTBigCodeConfig",
            {"n_embd": 64, "n_head": 4, "n_layer": 2, "n_positions": 256, "multi_query": True},
            tokenizer="starcoder",
            outtypes=("f32", "q8_0"),
        ),
    }
)
# mamba2-130m scaled down (expand 2, head_dim 64 -> 16, state 128 -> 16, conv 4, tied); the
# decode steps after a prompt are in test_recurrent.py
CASES["mamba2"] = Case(
    "Mamba2ForCausalLM",
    "Mamba2Config",
    {
        "hidden_size": 64,
        "num_hidden_layers": 2,
        "num_heads": 8,
        "head_dim": 16,
        "expand": 2,
        "state_size": 16,
        "conv_kernel": 4,
        "chunk_size": 8,
        "n_groups": 1,
        "pad_token_id": 2,
        "bos_token_id": 0,
        "eos_token_id": 1,
    },
    tokenizer="gpt2",
)
# Qwen3.5, transformers' Qwen3_5TextConfig defaults (the 9B) scaled down: hidden 4096 -> 128,
# MLP 3x, 16 heads / 4 kv of head_dim 256 (q as wide as hidden), DeltaNet 16 key / 32 value
# heads of 128 (keys half the hidden width, values all of it), conv 4, full attention every 4th
# layer, rotary 0.25 of head_dim in interleaved MRoPE sections summing to the rotary pairs
# ([11, 11, 10] of 32), untied; the multimodal wrapper as released, tied as the small sizes.
QWEN35_ROPE = {
    "rope_type": "default",
    "rope_theta": 1e7,
    "partial_rotary_factor": 0.25,
    "mrope_section": [2, 1, 1],
    "mrope_interleaved": True,
}
QWEN35 = {
    "hidden_size": 128,
    "intermediate_size": 384,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "num_key_value_heads": 1,
    "head_dim": 32,
    "linear_num_key_heads": 4,
    "linear_num_value_heads": 8,
    "linear_key_head_dim": 16,
    "linear_value_head_dim": 16,
    "linear_conv_kernel_dim": 4,
    "max_position_embeddings": 256,
    "rope_parameters": QWEN35_ROPE,
    "pad_token_id": 2,
    "bos_token_id": 0,
    "eos_token_id": 1,
}
# Qwen3.5-35B-A3B (Qwen3_5MoeTextConfig defaults): hidden 2048, 16 heads / 2 kv of 256 (q twice
# the hidden width), DeltaNet 16 key / 32 value heads of 128, experts a quarter of the hidden
# width, 256 top-8 (here 32 top-4), a shared expert as wide as one expert
QWEN35_MOE = {
    **QWEN35,
    "num_attention_heads": 8,
    "linear_num_key_heads": 8,
    "linear_num_value_heads": 16,
    "moe_intermediate_size": 32,
    "shared_expert_intermediate_size": 32,
    "num_experts": 32,
    "num_experts_per_tok": 4,
}
del QWEN35_MOE["intermediate_size"]
QWEN35_VISION = {
    "depth": 1,
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_heads": 2,
    "out_hidden_size": 128,
    "patch_size": 14,
    "num_position_embeddings": 16,
}
CASES.update(
    {
        "qwen35-hybrid": Case(
            "Qwen3_5ForCausalLM",
            "Qwen3_5TextConfig",
            QWEN35,
            tokenizer="qwen2",
            outtypes=("f32", "f16"),
        ),
        "qwen35-multimodal-text-part-tied": Case(
            "Qwen3_5ForConditionalGeneration",
            "Qwen3_5Config",
            {
                "text_config": {**QWEN35, "tie_word_embeddings": True},
                "vision_config": QWEN35_VISION,
                "tie_word_embeddings": True,
            },
            tokenizer="qwen2",
        ),
        "qwen35-moe-hybrid": Case(
            "Qwen3_5MoeForCausalLM", "Qwen3_5MoeTextConfig", QWEN35_MOE, tokenizer="qwen2"
        ),
        "qwen35-moe-multimodal-text-part": Case(
            "Qwen3_5MoeForConditionalGeneration",
            "Qwen3_5MoeConfig",
            {"text_config": QWEN35_MOE, "vision_config": QWEN35_VISION},
            tokenizer="qwen2",
        ),
    }
)
# Gemma 4, released configs scaled down. Every one: final logit soft-capping 30, tied, GELU,
# sliding window (here 8 < 24 tokens) with default RoPE (10k) on sliding layers, and on
# full-attention layers a head twice as wide with proportional RoPE (1M, a quarter of the
# frequencies). E2B: 8 heads / 1 kv, per-layer embeddings, the last 20 of 35 layers reuse
# earlier KV (sliding and full) with double-wide MLPs. 26B-A4B: 16 heads / 8 kv, full layers
# 2 kv heads with V = K, 128 experts top-8 beside a dense MLP. 31B: 32 heads / 16 kv, full
# layers 4 kv with V = K, released as Gemma4ForConditionalGeneration (vision left out).
# 3-4 layers rather than the released 5 sliding : 1 full: with q/k-normed, unscaled attention
# these random models amplify llama.cpp's CPU GELU (an F16 lookup table) past the F32 bound
# at 6 layers (rel 1.5e-3 to 1.8e-3; 1.6e-4 to 4e-4 against a reference with that GELU).
GEMMA4_ROPE = {
    "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
    "full_attention": {
        "rope_type": "proportional",
        "partial_rotary_factor": 0.25,
        "rope_theta": 1e6,
    },
}
GEMMA4 = {
    "hidden_size": 64,
    "max_position_embeddings": 256,
    "sliding_window": 8,
    "final_logit_softcapping": 30.0,
    "rope_parameters": GEMMA4_ROPE,
    "tie_word_embeddings": True,
    "pad_token_id": 0,
    "eos_token_id": 1,
    "bos_token_id": 2,
}
GEMMA4_31B_TEXT = {
    **GEMMA4,
    "num_hidden_layers": 3,
    "layer_types": ["sliding_attention", "sliding_attention", "full_attention"],
    "num_attention_heads": 8,
    "num_key_value_heads": 4,
    "head_dim": 16,
    "global_head_dim": 32,
    "num_global_key_value_heads": 1,
    "attention_k_eq_v": True,
    "intermediate_size": 256,
    "hidden_size_per_layer_input": 0,
}
CASES.update(
    {
        "gemma4-e2b-per-layer-embd-shared-kv": Case(
            "Gemma4ForCausalLM",
            "Gemma4TextConfig",
            {
                **GEMMA4,
                "num_hidden_layers": 4,
                "num_attention_heads": 8,
                "num_key_value_heads": 1,
                "head_dim": 8,
                "global_head_dim": 16,
                "intermediate_size": 256,
                "layer_types": ["sliding_attention", "full_attention"] * 2,
                "hidden_size_per_layer_input": 16,
                "vocab_size_per_layer_input": 400,  # the tokenizer's 400 (both 262144 released)
                "num_kv_shared_layers": 2,
                "use_double_wide_mlp": True,
            },
            tokenizer="spm-no-prefix",
        ),
        "gemma4-26b-a4b-moe": Case(
            "Gemma4ForCausalLM",
            "Gemma4TextConfig",
            {
                **GEMMA4,
                "num_hidden_layers": 3,
                "layer_types": ["sliding_attention", "sliding_attention", "full_attention"],
                "num_attention_heads": 8,
                "num_key_value_heads": 4,
                "head_dim": 16,
                "global_head_dim": 32,
                "num_global_key_value_heads": 1,
                "attention_k_eq_v": True,
                "intermediate_size": 48,
                "enable_moe_block": True,
                "num_experts": 16,
                "top_k_experts": 2,
                "moe_intermediate_size": 16,
                "hidden_size_per_layer_input": 0,
            },
            tokenizer="spm-no-prefix",
        ),
        "gemma4-31b-multimodal-text-part": Case(
            "Gemma4ForConditionalGeneration",
            "Gemma4Config",
            {
                "text_config": GEMMA4_31B_TEXT,
                "vision_config": {
                    "hidden_size": 32,
                    "intermediate_size": 64,
                    "num_hidden_layers": 1,
                    "num_attention_heads": 2,
                    "num_key_value_heads": 2,
                    "head_dim": 16,
                    "patch_size": 4,
                    "position_embedding_size": 64,
                },
                "audio_config": None,
            },
            tokenizer="spm-no-prefix",
        ),
    }
)
# Falcon-H1-0.5B scaled down by 8 in width: attention 8 heads -> 4 (GQA 4:1, heads x head_dim
# = hidden / 2), mixer 24 heads x 64 -> 12 x 16 (d_ssm = 1.5 x hidden), state 128 -> 16, conv
# 4, one group, no mixer norm, untied, rope_theta 1e11, and its released multipliers.
FALCON_H1 = {
    "hidden_size": 128,
    "intermediate_size": 256,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 1,
    "head_dim": 16,
    "max_position_embeddings": 256,
    "rope_parameters": {"rope_type": "default", "rope_theta": 1e11},
    "mamba_d_ssm": 192,
    "mamba_n_heads": 12,
    "mamba_d_head": 16,
    "mamba_n_groups": 1,
    "mamba_d_state": 16,
    "mamba_d_conv": 4,
    "mamba_chunk_size": 8,
    "mamba_rms_norm": False,
    "mamba_norm_before_gate": False,
    "tie_word_embeddings": False,
    "embedding_multiplier": 5.656854249492381,
    "lm_head_multiplier": 0.0390625,
    "attention_in_multiplier": 1.0,
    "attention_out_multiplier": 0.9375,
    "key_multiplier": 0.390625,
    "ssm_in_multiplier": 1.25,
    "ssm_out_multiplier": 0.23570226039551587,
    "ssm_multipliers": [0.3535533905932738, 0.25, 0.3535533905932738, 0.5, 0.3535533905932738],
    "mlp_multipliers": [0.8838834764831844, 0.5859375],
    "pad_token_id": 2,
    "bos_token_id": 0,
    "eos_token_id": 1,
}
CASES["falcon-h1-0.5b"] = Case(
    "FalconH1ForCausalLM", "FalconH1Config", FALCON_H1, tokenizer="gpt2", outtypes=("f32", "q8_0")
)
# The switches the 0.5B leaves off: the mixer's grouped gated RMS norm (2 groups), tied
# embeddings (lm_head_multiplier then needs its own output tensor), no conv bias; 3 layers, 6:2 GQA.
CASES["falcon-h1-mixer-norm-groups-tied"] = Case(
    "FalconH1ForCausalLM",
    "FalconH1Config",
    {
        **FALCON_H1,
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 3,
        "num_attention_heads": 6,
        "num_key_value_heads": 2,
        "head_dim": 8,
        "mamba_d_ssm": 96,
        "mamba_n_heads": 12,
        "mamba_d_head": 8,
        "mamba_n_groups": 2,
        "mamba_rms_norm": True,
        "mamba_conv_bias": False,
        "tie_word_embeddings": True,
    },
    tokenizer="gpt2",
)
# ModernBERT-base / modernbert-embed-base / gte-modernbert-base ratios: head_dim 64, GeGLU
# intermediate 1.5x, global every 3 layers (0 and 3 here), window 128, RoPE 160000 global /
# 10000 local, no biases. The 24 sample tokens sit inside a 128 window, so a second case
# narrows it to 8 to put the sliding mask to work (the 128 window over 200 tokens is in
# test_modern_bert.py), with SiLU (SwiGLU, as Granite Embedding R2) and CLS pooling.
MODERN_BERT = {
    "hidden_size": 128,
    "intermediate_size": 192,
    "num_hidden_layers": 4,
    "num_attention_heads": 2,
    "global_attn_every_n_layers": 3,
    "local_attention": 128,
    "global_rope_theta": 160000.0,
    "local_rope_theta": 10000.0,
    "max_position_embeddings": 512,
    "norm_eps": 1e-5,
    # the conftest "modernbert" tokenizer's specials
    "bos_token_id": 1,
    "cls_token_id": 1,
    "eos_token_id": 2,
    "sep_token_id": 2,
    "pad_token_id": 3,
}
CASES.update(
    {
        "modern-bert-mean-pooling": Case(
            "ModernBertModel",
            "ModernBertConfig",
            MODERN_BERT,
            "modernbert",
            pooling="mean_tokens",
            outtypes=("f32", "f16"),
        ),
        # gte-reranker-modernbert-style cross-encoder: mean pooling before its head
        "modern-bert-cross-encoder-mean": Case(
            "ModernBertForSequenceClassification",
            "ModernBertConfig",
            {**MODERN_BERT, "num_labels": 1, "classifier_pooling": "mean"},
            "modernbert",
            pooling="rank",
        ),
        "modern-bert-window8-silu-cls": Case(
            "ModernBertModel",
            "ModernBertConfig",
            {**MODERN_BERT, "local_attention": 8, "hidden_activation": "silu"},
            "modernbert",
            pooling="cls_token",
        ),
    }
)
