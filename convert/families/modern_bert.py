"""ModernBERT encoders for embeddings (`ModernBertModel`, llama.cpp arch `modern-bert`).

Facts from transformers' modeling_modernbert / configuration_modernbert and llama.cpp's
src/models/modern-bert.cpp, src/llama-hparams.h and its converter (ModernBertModel):
- Pre-norm encoder: token embeddings -> LayerNorm; per layer attn_norm -> fused Wqkv ->
  RoPE (rotate-half: NEOX in llama.cpp, no Q/K permutation) -> Wo -> add, mlp_norm -> Wi ->
  GLU -> Wo -> add; a final LayerNorm. Layer 0 has no attn_norm (transformers' Identity);
  llama.cpp skips the norm when blk.0.attn_norm is absent.
- Wqkv stays fused (attn_qkv): its rows are q, k, v one after the other, as llama.cpp's
  build_qkv views them. Wi stays fused (ffn_up, 2 x intermediate_size rows): transformers
  activates the first half and multiplies it by the second (`chunk(2)`), which is what
  ggml's single-tensor GeGLU/SwiGLU do. gelu gives GeGLU (llama.cpp's default for this arch),
  silu/swish SwiGLU (the `hidden_activation` key llama.cpp reads). Other activations are
  refused: llama.cpp's relu is not gated. ggml's GeGLU is the tanh approximation (through
  an F16 table on CPU), about 4e-4 relative from transformers' exact GELU.
- No biases: llama.cpp's graph reads none, so attention_bias, mlp_bias or norm_bias are
  refused rather than dropped.
- Attention is bidirectional. Sliding layers (`layer_types`, or in released configs every
  layer but each `global_attn_every_n_layers`-th, layer 0 global) see tokens at distance
  <= local_attention // 2: llama.cpp's symmetric window with n_swa = local_attention. The
  per-layer pattern is written as a bool array, which llama.cpp reads before the integer.
- RoPE bases: global layers `global_rope_theta` (transformers 5:
  rope_parameters.full_attention), sliding layers `local_rope_theta`
  (rope_parameters.sliding_attention) -> rope.freq_base_swa. llama.cpp's converter writes
  no RoPE scaling for this arch and its graph would scale the sliding layers by a factor it
  never reads from GGUF, so a scaled config is refused.
- Pooling from the sentence-transformers config, as for BERT (convert/families/bert.py).
"""

from __future__ import annotations

from typing import Any

import gguf

from llorch.convert.errors import ConfigError
from llorch.convert.families import bert
from llorch.convert.families.base import ModelInput, PlannedTensor, cfg_float, cfg_int, map_tensors
from llorch.convert.sentence_transformers import write_sentence_transformers

_T = gguf.MODEL_TENSOR
# transformers' ModernBertConfig defaults, which released configs rely on
GLOBAL_THETA, LOCAL_THETA, EVERY_N, WINDOW = 160_000.0, 10_000.0, 3, 128
# hidden_activation -> the name llama.cpp's modern-bert graph maps to its gated op
ACTIVATIONS = {
    "gelu": "gelu",
    "gelu_new": "gelu",
    "gelu_pytorch_tanh": "gelu",
    "gelu_fast": "gelu",
    "silu": "silu",
    "swish": "silu",
}
# gguf 0.19.0 (the pinned gguf-py) predates llama.cpp's LLM_KV_HIDDEN_ACT
# (src/llama-arch.cpp); use gguf's constant once it has it.
HIDDEN_ACT_KEY: str = getattr(gguf.Keys.LLM, "HIDDEN_ACT", "{arch}.hidden_activation")
# ... and its LLM_KV_CLASSIFIER_POOLING_TYPE: how a cross-encoder pools before its head
CLASSIFIER_POOLING_KEY: str = "{arch}.classifier.pooling_type"
CLASSIFIER_POOLING = {"cls": gguf.PoolingType.CLS, "mean": gguf.PoolingType.MEAN}


def _where(model: ModelInput) -> str:
    return str(model.folder / "config.json")


def _check(model: ModelInput) -> None:
    cfg = model.config
    for key in ("attention_bias", "mlp_bias", "norm_bias"):
        if cfg.get(key):
            raise ConfigError(
                f"{_where(model)}: {key}=true is not supported (llama.cpp's modern-bert graph "
                "has no biases)"
            )
    act = cfg.get("hidden_activation", "gelu")
    if act not in ACTIVATIONS:
        raise ConfigError(
            f"{_where(model)}: hidden_activation {act!r} is not supported (llama.cpp gates "
            f"ModernBERT's MLP with one of {', '.join(ACTIVATIONS)})"
        )
    for kind, params in _rope(model).items():
        rope_type = params.get("rope_type", params.get("type", "default"))
        if rope_type != "default":
            raise ConfigError(
                f"{_where(model)}: rope_type {rope_type!r} ({kind}) is not supported for "
                f"{model.hf_architecture} (llama.cpp's modern-bert graph has no RoPE scaling "
                "for its sliding layers; supported: default)"
            )


def _rope(model: ModelInput) -> dict[str, dict[str, Any]]:
    """RoPE parameters per layer type, from transformers 5's `rope_parameters` or the
    released configs' global_rope_theta / local_rope_theta (+ rope_scaling for both)."""
    cfg = model.config
    given = cfg.get("rope_parameters") or {}
    scaling = dict(cfg.get("rope_scaling") or {})
    out = {}
    for kind, key, default in (
        ("full_attention", "global_rope_theta", GLOBAL_THETA),
        ("sliding_attention", "local_rope_theta", LOCAL_THETA),
    ):
        params = dict(given.get(kind) or scaling)
        if "rope_theta" not in params:
            theta = cfg.get(key)
            params["rope_theta"] = float(theta) if theta is not None else default
        out[kind] = params
    return out


def layer_types(model: ModelInput) -> list[str]:
    n_layer = cfg_int(model, "num_hidden_layers")
    types = model.config.get("layer_types")
    if types is None:
        every = cfg_int(model, "global_attn_every_n_layers", default=EVERY_N)
        types = ["sliding_attention" if i % every else "full_attention" for i in range(n_layer)]
    if not isinstance(types, list) or len(types) != n_layer:
        raise ConfigError(f"{_where(model)}: layer_types must list one type per layer")
    unknown = set(types) - {"full_attention", "sliding_attention"}
    if unknown:
        raise ConfigError(f"{_where(model)}: unknown layer_types {sorted(unknown)}")
    return types


def _dims(model: ModelInput) -> tuple[int, int, int]:
    n_embd, n_head = cfg_int(model, "hidden_size"), cfg_int(model, "num_attention_heads")
    if n_embd % n_head:
        raise ConfigError(f"{_where(model)}: hidden_size {n_embd} is not a multiple of {n_head}")
    return n_embd, n_head, cfg_int(model, "intermediate_size")


def write_hparams(model: ModelInput, w: gguf.GGUFWriter) -> None:
    _check(model)
    n_embd, n_head, n_ff = _dims(model)
    head_dim = n_embd // n_head  # transformers ignores a config head_dim here
    w.add_context_length(cfg_int(model, "max_position_embeddings", default=8192))
    w.add_embedding_length(n_embd)
    w.add_block_count(cfg_int(model, "num_hidden_layers"))
    w.add_feed_forward_length(n_ff)
    w.add_head_count(n_head)
    w.add_head_count_kv(n_head)
    w.add_key_length(head_dim)
    w.add_value_length(head_dim)
    w.add_vocab_size(model.n_vocab)
    w.add_layer_norm_eps(cfg_float(model, "norm_eps", "layer_norm_eps", default=1e-5))
    w.add_causal_attention(False)
    rope = _rope(model)
    w.add_rope_freq_base(float(rope["full_attention"]["rope_theta"]))
    w.add_rope_scaling_type(gguf.RopeScalingType.NONE)
    types = layer_types(model)
    if "sliding_attention" in types:
        w.add_sliding_window(cfg_int(model, "local_attention", default=WINDOW))
        w.add_sliding_window_pattern([t == "sliding_attention" for t in types])
        w.add_rope_freq_base_swa(float(rope["sliding_attention"]["rope_theta"]))
    arch = gguf.MODEL_ARCH_NAMES[model.arch]
    w.add_string(
        HIDDEN_ACT_KEY.format(arch=arch), ACTIVATIONS[model.config.get("hidden_activation", "gelu")]
    )
    if bert.is_cross_encoder(model):
        _write_cross_encoder(model, w)
    else:
        write_sentence_transformers(model.folder, w)


def _write_cross_encoder(model: ModelInput, w: gguf.GGUFWriter) -> None:
    """ModernBertForSequenceClassification (gte-reranker-modernbert): pooled (CLS or mean,
    `classifier_pooling`), then head.dense -> GELU -> head.norm -> classifier, which is
    llama.cpp's rank pooling for modern-bert (cls, GELU, cls.norm without a bias, cls.output)."""
    bert.check_one_label(model)
    pooling = model.config.get("classifier_pooling", "cls")
    if pooling not in CLASSIFIER_POOLING:
        raise ConfigError(
            f"{_where(model)}: classifier_pooling {pooling!r} is not supported; llama.cpp pools "
            f"by one of {', '.join(CLASSIFIER_POOLING)}"
        )
    act = model.config.get("classifier_activation", "gelu")
    if ACTIVATIONS.get(act) != "gelu":
        raise ConfigError(f"{_where(model)}: classifier_activation {act!r}: llama.cpp uses GELU")
    if model.config.get("norm_bias"):
        raise ConfigError(f"{_where(model)}: norm_bias: llama.cpp's head norm has no bias")
    w.add_pooling_type(gguf.PoolingType.RANK)
    arch = gguf.MODEL_ARCH_NAMES[model.arch]
    w.add_uint32(CLASSIFIER_POOLING_KEY.format(arch=arch), int(CLASSIFIER_POOLING[pooling]))


def _rename(name: str) -> str:
    # a ModernBertModel saved inside a task wrapper keeps the wrapper's `model.` prefix;
    # a cross-encoder's classifier is gguf's classifier.out_proj (cls.output)
    if name.startswith("classifier."):
        return "classifier.out_proj." + name.removeprefix("classifier.")
    return name[len("model.") :] if name.startswith("model.") else name


def plan(model: ModelInput) -> list[PlannedTensor]:
    _check(model)
    n_embd, _, n_ff = _dims(model)
    expected = {
        _T.TOKEN_EMBD: (model.n_vocab, n_embd),
        _T.TOKEN_EMBD_NORM: (n_embd,),
        _T.ATTN_NORM: (n_embd,),
        _T.ATTN_QKV: (3 * n_embd, n_embd),
        _T.ATTN_OUT: (n_embd, n_embd),
        _T.FFN_NORM: (n_embd,),
        _T.FFN_UP: (2 * n_ff, n_embd),
        _T.FFN_DOWN: (n_embd, n_ff),
        _T.OUTPUT_NORM: (n_embd,),
    }
    if bert.is_cross_encoder(model):
        bert.check_one_label(model)
        expected |= {_T.CLS: (n_embd, n_embd), _T.CLS_NORM: (n_embd,), _T.CLS_OUT: (1, n_embd)}
    return map_tensors(model, expected=expected, rename=_rename)
