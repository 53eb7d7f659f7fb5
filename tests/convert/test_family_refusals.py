"""Configurations llama.cpp's graph would compute differently are refused, naming the setting.

Each case builds a valid tiny checkpoint, changes one config.json value to what llama.cpp's
graph for that architecture does not compute, and expects a ConfigError naming it (and no
output file).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from llorch.convert import convert
from llorch.convert.errors import ConfigError

TINY = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "num_key_value_heads": 2,
}
MOE = {**TINY, "num_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 16}

DEEPSEEK = {
    **MOE,
    "n_routed_experts": 4,
    "n_shared_experts": 1,
    "kv_lora_rank": 16,
    "qk_nope_head_dim": 8,
    "qk_rope_head_dim": 8,
    "v_head_dim": 8,
    "first_k_dense_replace": 1,
}

# ModernBERT (head_dim 16 here); special ids inside the tiny gpt2 tokenizer's vocabulary
MB = {
    "hidden_size": 32,
    "intermediate_size": 48,
    "num_hidden_layers": 3,
    "num_attention_heads": 2,
    "max_position_embeddings": 64,
    **{f"{name}_token_id": 0 for name in ("bos", "eos", "cls", "sep", "pad")},
}
# Falcon-H1 with a 4-head x 16 mixer
FALCON_H1 = {
    **TINY,
    "num_hidden_layers": 1,
    "mamba_d_ssm": 64,
    "mamba_n_heads": 4,
    "mamba_d_head": 16,
    "mamba_d_state": 16,
}

# Qwen3.5: 3 DeltaNet layers and 1 full-attention layer, rotary pairs in sections [1, 1, 0]
QWEN35 = {
    **TINY,
    "num_hidden_layers": 4,
    "head_dim": 16,
    "linear_num_key_heads": 2,
    "linear_num_value_heads": 4,
    "linear_key_head_dim": 8,
    "linear_value_head_dim": 8,
    "rope_parameters": {
        "rope_type": "default",
        "rope_theta": 1e7,
        "partial_rotary_factor": 0.25,
        "mrope_section": [1, 1, 0],
    },
}
JINA_V3 = {**TINY, "max_position_embeddings": 66, "type_vocab_size": 1}

CASES = {
    "qwen2moe-renormalised-top-k": (
        "Qwen2MoeForCausalLM",
        "Qwen2MoeConfig",
        {**MOE, "shared_expert_intermediate_size": 32},
        {"norm_topk_prob": True},
        "norm_topk_prob",
    ),
    "qwen3moe-dense-layers": (
        "Qwen3MoeForCausalLM",
        "Qwen3MoeConfig",
        {**MOE, "norm_topk_prob": True},
        {"mlp_only_layers": [1]},
        "mlp_only_layers",
    ),
    "olmoe-grouped-query": (
        "OlmoeForCausalLM",
        "OlmoeConfig",
        {**MOE, "num_key_value_heads": 1},
        {},
        "num_key_value_heads",
    ),
    "smollm3-other-no-rope-pattern": (
        "SmolLM3ForCausalLM",
        "SmolLM3Config",
        {**TINY, "pad_token_id": 0},
        {"no_rope_layers": [0, 1]},
        "no_rope_layers",
    ),
    "starcoder1-without-multi-query": (
        "GPTBigCodeForCausalLM",
        "GPTBigCodeConfig",
        {"n_embd": 32, "n_head": 2, "n_layer": 1},
        {"multi_query": False},
        "multi_query",
    ),
    "deepseek-v2-no-q-lora-at-another-depth": (
        "DeepseekV2ForCausalLM",
        "DeepseekV2Config",
        {**DEEPSEEK, "q_lora_rank": None},
        {},
        "q_lora_rank",
    ),
    "deepseek-v2-group-limited-greedy": (
        "DeepseekV2ForCausalLM",
        "DeepseekV2Config",
        {**DEEPSEEK, "q_lora_rank": 16},
        {"topk_method": "group_limited_greedy", "n_group": 2, "topk_group": 1},
        "group_limited_greedy",
    ),
    "gpt-oss-other-swiglu-limit": (
        "GptOssForCausalLM",
        "GptOssConfig",
        {**TINY, "head_dim": 16, "num_local_experts": 4, "num_experts_per_tok": 2},
        {"swiglu_limit": 10.0},
        "swiglu_limit",
    ),
    "llama4-qk-norm-with-128-experts": (
        "Llama4ForCausalLM",
        "Llama4TextConfig",
        {**TINY, "head_dim": 16, "num_local_experts": 128, "intermediate_size_mlp": 64},
        {"use_qk_norm": True},
        "use_qk_norm",
    ),
    "llama4-other-no-rope-pattern": (
        "Llama4ForCausalLM",
        "Llama4TextConfig",
        {**TINY, "head_dim": 16, "num_local_experts": 4, "intermediate_size_mlp": 64},
        {"no_rope_layers": [0, 1]},
        "no_rope_layers",
    ),
    "mamba2-projection-biases": (
        "Mamba2ForCausalLM",
        "Mamba2Config",
        {"hidden_size": 32, "num_hidden_layers": 1, "num_heads": 4, "head_dim": 16},
        {"use_bias": True},
        "use_bias",
    ),
    "qwen35-key-and-value-heads-of-different-sizes": (
        "Qwen3_5ForCausalLM",
        "Qwen3_5TextConfig",
        QWEN35,
        {"linear_value_head_dim": 16},
        "linear_value_head_dim",
    ),
    "qwen35-layer-types-without-an-interval": (
        "Qwen3_5ForCausalLM",
        "Qwen3_5TextConfig",
        QWEN35,
        {"layer_types": ["linear_attention", "full_attention"] + ["linear_attention"] * 2},
        "layer_types",
    ),
    "qwen35-mrope-sections-wider-than-the-head": (
        "Qwen3_5ForCausalLM",
        "Qwen3_5TextConfig",
        QWEN35,
        {"rope_parameters": {"rope_type": "default", "rope_theta": 1e7}},
        "mrope_section",
    ),
    # Falcon-H1: llama.cpp gates before the mixer's norm, and its graph has no o_proj bias
    "falcon-h1-norm-before-gate": (
        "FalconH1ForCausalLM",
        "FalconH1Config",
        {**FALCON_H1, "mamba_rms_norm": True, "mamba_norm_before_gate": False},
        {"mamba_norm_before_gate": True},
        "mamba_norm_before_gate",
    ),
    "falcon-h1-o-proj-bias": (
        "FalconH1ForCausalLM",
        "FalconH1Config",
        FALCON_H1,
        {"attention_bias": True},
        "attention_bias",
    ),
    "falcon-h1-mixer-out-bias": (
        "FalconH1ForCausalLM",
        "FalconH1Config",
        FALCON_H1,
        {"projectors_bias": True},
        "projectors_bias",
    ),
    "bert-relative-positions": (
        "BertModel",
        "BertConfig",
        {**TINY, "max_position_embeddings": 32},
        {"position_embedding_type": "relative_key"},
        "position_embedding_type",
    ),
    # Gemma 4: text attention is causal in llama.cpp
    "gemma4-bidirectional": (
        "Gemma4ForCausalLM",
        "Gemma4TextConfig",
        {**TINY, "head_dim": 16, "global_head_dim": 16, "hidden_size_per_layer_input": 0},
        {"use_bidirectional_attention": "all"},
        "use_bidirectional_attention",
    ),
    # llama.cpp's rope_freqs apply to full-attention layers only
    "gemma4-scaled-sliding-rope": (
        "Gemma4ForCausalLM",
        "Gemma4TextConfig",
        {**TINY, "head_dim": 16, "global_head_dim": 16, "hidden_size_per_layer_input": 0},
        {
            "rope_parameters": {
                "sliding_attention": {"rope_type": "linear", "factor": 2.0, "rope_theta": 1e4},
                "full_attention": {"rope_type": "default", "rope_theta": 1e6},
            }
        },
        "sliding_attention",
    ),
    # a shared full layer would read a sliding layer's KV in llama.cpp (it takes the two layers
    # before the shared ones; transformers the last earlier layer of the same type)
    "gemma4-kv-shared-after-sliding": (
        "Gemma4ForCausalLM",
        "Gemma4TextConfig",
        {
            **TINY,
            "num_hidden_layers": 4,
            "layer_types": ["sliding_attention", "full_attention"] * 2,
            "head_dim": 16,
            "global_head_dim": 16,
            "hidden_size_per_layer_input": 0,
        },
        {"num_kv_shared_layers": 1},
        "num_kv_shared_layers",
    ),
    "modern-bert-biases": (
        "ModernBertModel",
        "ModernBertConfig",
        MB,
        {"mlp_bias": True},
        "mlp_bias",
    ),
    "modern-bert-ungated-relu": (
        "ModernBertModel",
        "ModernBertConfig",
        MB,
        {"hidden_activation": "relu"},
        "hidden_activation",
    ),
    "modern-bert-scaled-rope": (
        "ModernBertModel",
        "ModernBertConfig",
        MB,
        {"rope_scaling": {"rope_type": "linear", "factor": 2.0}, "rope_parameters": None},
        "rope_type 'linear'",
    ),
    # jina-embeddings-v3 as jinaai released it (XLMRobertaLoRA): its task adapters
    "jina-v3-task-adapters": (
        "JinaEmbeddingsV3Model",
        "JinaEmbeddingsV3Config",
        JINA_V3,
        {"lora_adaptations": ["retrieval.query", "retrieval.passage"]},
        "lora_adaptations",
    ),
    "jina-v3-scaled-rope": (
        "JinaEmbeddingsV3Model",
        "JinaEmbeddingsV3Config",
        JINA_V3,
        {"rope_parameters": {"rope_type": "linear", "factor": 2.0, "rope_theta": 20000.0}},
        "rope_type 'linear'",
    ),
}


@pytest.mark.parametrize("case_id", list(CASES))
def test_refused(case_id: str, checkpoint: Any, tmp_path: Path) -> None:
    model_cls, config_cls, config, change, match = CASES[case_id]
    tokenizer = "wordpiece" if model_cls == "BertModel" else "gpt2"
    built = checkpoint(model_cls, config_cls, config, tokenizer=tokenizer)
    path = built.folder / "config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **change}))
    out = tmp_path / "o.gguf"
    with pytest.raises(ConfigError, match=match):
        convert(built.folder, out, outtype="f32")
    assert not out.exists()
