"""The per-family parsers of :mod:`memplan.specs.hf`, one per ``model_type``, and the
transformers 5.23 config-class defaults each family reads."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from memplan.errors import ConfigError
from memplan.specs.hf_config import (
    _common,
    _Config,
    _head_dim,
    _partial_rotary,
    _rope_theta,
)
from memplan.specs.hf_families_2025 import gpt_oss, llama4_text, qwen3_next
from memplan.specs.hf_multimodal import multimodal
from memplan.specs.model import (
    AttentionType,
    MlaSpec,
    MlpKind,
    MoeSpec,
    NormKind,
    PositionKind,
    QkNorm,
)


# Family parsers ------------------------------------------------------------------------------
def _llama(cfg: _Config) -> dict[str, Any]:
    """LlamaAttention/LlamaMLP: attention_bias on q, k, v and o; mlp_bias on all three MLP mats."""
    out = _common(cfg)
    bias = cfg.bool_("attention_bias")
    out.update(
        head_dim=_head_dim(cfg, out["hidden_size"], out["n_heads"]),
        qkv_bias=bias,
        o_bias=bias,
        mlp_bias=cfg.bool_("mlp_bias", default=False),
    )
    return out


def _mistral(cfg: _Config) -> dict[str, Any]:
    """Mistral: no biases; a sliding window over every layer when ``sliding_window`` is set."""
    out = _common(cfg)
    out["head_dim"] = _head_dim(cfg, out["hidden_size"], out["n_heads"])
    out["sliding_window"] = cfg.int_("sliding_window", default=None)
    return out


def _mixtral(cfg: _Config) -> dict[str, Any]:
    """Mixtral: every layer a sparse MoE of ``num_local_experts`` SwiGLU experts."""
    out = _mistral(cfg)
    out["moe"] = MoeSpec(
        n_experts=cfg.int_("num_local_experts", "num_experts"),
        top_k=cfg.int_("num_experts_per_tok"),
        expert_intermediate_size=out["intermediate_size"],
    )
    return out


def _qwen2(cfg: _Config) -> dict[str, Any]:
    """Qwen2Attention: q, k, v with bias, o_proj without."""
    out = _common(cfg)
    out.update(head_dim=_head_dim(cfg, out["hidden_size"], out["n_heads"]), qkv_bias=True)
    if cfg.bool_("use_sliding_window", default=False):
        out["sliding_window"] = cfg.int_("sliding_window", default=None)
        first = cfg.int_("max_window_layers", default=28)
        if out["sliding_window"] and not out["layer_types"]:
            out["layer_types"] = tuple(
                AttentionType.SLIDING if i >= first else AttentionType.FULL
                for i in range(out["n_layers"])
            )
    return out


def _qwen_moe(cfg: _Config, out: dict[str, Any], *, shared: bool) -> dict[str, Any]:
    """Qwen2/3-MoE: MoE in layers (i + 1) % decoder_sparse_step == 0 not in mlp_only_layers."""
    n_experts = cfg.int_("num_experts", "num_local_experts")
    if not n_experts:
        return out
    shared_size = cfg.int_("shared_expert_intermediate_size") if shared else 0
    out["moe"] = MoeSpec(
        n_experts=n_experts,
        top_k=cfg.int_("num_experts_per_tok"),
        expert_intermediate_size=cfg.int_("moe_intermediate_size"),
        n_shared_experts=1 if shared else 0,
        shared_intermediate_size=shared_size,
        shared_expert_gate=shared,
        layer_freq=cfg.int_("decoder_sparse_step", default=1),
        dense_layers=_layer_indices(cfg, "mlp_only_layers"),
    )
    return out


def _layer_indices(cfg: _Config, key: str) -> tuple[int, ...]:
    """A list of layer indices (Qwen ``mlp_only_layers``); empty where absent or null."""
    value = cfg.get(key, default=None) or []
    if not isinstance(value, list) or not all(
        isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in value
    ):
        raise ConfigError(f"{cfg.name}: {key} must be a list of layer indices, got {value!r}")
    return tuple(value)


def _qwen2_moe(cfg: _Config) -> dict[str, Any]:
    """Qwen2-MoE: with ``use_sliding_window``, the odd-numbered layers (counting from 1) below
    ``max_window_layers`` slide (``configuration_qwen2_moe.py``; Qwen2 slides the layers from
    ``max_window_layers`` on)."""
    out = _common(cfg)
    out.update(
        head_dim=_head_dim(cfg, out["hidden_size"], out["n_heads"]),
        qkv_bias=cfg.bool_("qkv_bias"),
    )
    if cfg.bool_("use_sliding_window", default=False):
        out["sliding_window"] = cfg.int_("sliding_window", default=None)
        below = cfg.int_("max_window_layers", default=28)
        if out["sliding_window"] and not out["layer_types"]:
            out["layer_types"] = tuple(
                AttentionType.SLIDING if (i + 1) % 2 and i < below else AttentionType.FULL
                for i in range(out["n_layers"])
            )
    return _qwen_moe(cfg, out, shared=True)


def _qwen3(cfg: _Config) -> dict[str, Any]:
    """Qwen3: attention_bias on q, k, v, o; RMSNorm(head_dim) on q and k (Qwen3Attention)."""
    out = _common(cfg)
    bias = cfg.bool_("attention_bias")
    out.update(
        head_dim=_head_dim(cfg, out["hidden_size"], out["n_heads"]),
        qkv_bias=bias,
        o_bias=bias,
        qk_norm=QkNorm.PER_HEAD,
    )
    return out


def _qwen3_moe(cfg: _Config) -> dict[str, Any]:
    return _qwen_moe(cfg, _qwen3(cfg), shared=False)


def _gemma(cfg: _Config, n_norms: int = 2) -> dict[str, Any]:
    """Gemma: head_dim defaults to 256, embeddings scaled by sqrt(hidden), tied lm_head."""
    out = _llama(cfg)
    if out["activation"] == "gelu":
        # configuration_gemma.py: the legacy "gelu" of the official configs means the tanh
        # approximation, and transformers runs that
        out["activation"] = "gelu_pytorch_tanh"
    out["head_dim"] = _head_dim(
        cfg, out["hidden_size"], out["n_heads"], explicit=cfg.get("head_dim")
    )
    out["embedding_multiplier"] = float(out["hidden_size"]) ** 0.5
    out["norm_one_plus_weight"] = True
    out["n_layer_norms"] = n_norms
    out["mlp_bias"] = False
    return out


def _gemma2(cfg: _Config) -> dict[str, Any]:
    """Gemma 2: four norms per layer (pre/post attention, pre/post feed-forward)."""
    out = _gemma(cfg, n_norms=4)
    out["sliding_window"] = cfg.int_("sliding_window", default=None)
    out["attn_logit_softcapping"] = cfg.number("attn_logit_softcapping", default=None)
    out["final_logit_softcapping"] = cfg.number("final_logit_softcapping", default=None)
    if not out["layer_types"]:
        pattern = (AttentionType.SLIDING, AttentionType.FULL)
        out["layer_types"] = tuple(pattern[i % 2] for i in range(out["n_layers"]))
    return out


def _gemma3_text(cfg: _Config) -> dict[str, Any]:
    """Gemma 3 text: Gemma 2's four norms plus RMSNorm(head_dim) on q and k."""
    out = _gemma2(cfg)
    out["qk_norm"] = QkNorm.PER_HEAD
    out["rotary_per_layer_type"] = True
    if not isinstance(cfg.raw.get("layer_types"), list):
        period = int(cfg.raw.get("sliding_window_pattern") or 6)
        out["layer_types"] = tuple(
            AttentionType.SLIDING if (i + 1) % period else AttentionType.FULL
            for i in range(out["n_layers"])
        )
    return out


def _phi3(cfg: _Config) -> dict[str, Any]:
    """Phi-3 / Phi-4: fused qkv_proj and gate_up_proj, no biases."""
    out = _common(cfg)
    out.update(
        head_dim=_head_dim(cfg, out["hidden_size"], out["n_heads"]),
        fused_qkv=True,
        fused_gate_up=True,
        rotary_concat=True,
        sliding_window=cfg.int_("sliding_window", default=None),
        hidden_dropout=cfg.number("resid_pdrop", default=0.0) or 0.0,
        embedding_dropout=cfg.number("embd_pdrop", default=0.0) or 0.0,
    )
    partial = _partial_rotary(cfg, "partial_rotary_factor", default=1.0)
    if partial != 1.0:
        out["rotary_dim"] = int(out["head_dim"] * partial)
    return out


def _gpt2(cfg: _Config) -> dict[str, Any]:
    """GPT-2: Conv1D layers with biases everywhere, LayerNorm with bias, learned positions."""
    hidden = cfg.int_("n_embd", "hidden_size")
    heads = cfg.int_("n_head", "num_attention_heads")
    inner = cfg.int_("n_inner", default=None) or 4 * hidden
    return {
        "vocab_size": cfg.int_("vocab_size"),
        "hidden_size": hidden,
        "n_layers": cfg.int_("n_layer", "num_hidden_layers"),
        "n_heads": heads,
        "n_kv_heads": heads,
        "head_dim": _div(cfg, hidden, heads),
        "intermediate_size": inner,
        "mlp_kind": MlpKind.PLAIN,
        "activation": str(cfg.get("activation_function")),
        "norm_kind": NormKind.LAYERNORM,
        "norm_bias": True,
        "qkv_bias": True,
        "o_bias": True,
        "mlp_bias": True,
        "fused_qkv": True,
        "tie_word_embeddings": cfg.bool_("tie_word_embeddings"),
        "position": PositionKind.LEARNED,
        "max_position_embeddings": cfg.int_("n_positions", "max_position_embeddings"),
        "attention_dropout": cfg.number("attn_pdrop", default=0.1) or 0.0,
        "hidden_dropout": cfg.number("resid_pdrop", default=0.1) or 0.0,
        "embedding_dropout": cfg.number("embd_pdrop", default=0.1) or 0.0,
        "softmax_in_input_dtype": True,
        "conv1d_names": True,
    }


def _div(cfg: _Config, hidden: int, heads: int) -> int:
    if hidden % heads:
        raise ConfigError(
            f"{cfg.name}: hidden size {hidden} is not divisible by the number of heads {heads}"
        )
    return hidden // heads


def _gpt_bigcode(cfg: _Config) -> dict[str, Any]:
    """GPT-BigCode (SantaCoder/StarCoder 1): GPT-2 with multi-query attention (one KV head)."""
    out = _gpt2(cfg)
    # its eager softmax runs in fp32 (attention_softmax_in_fp32); its modules are named like
    # Llama's in memplan's tensor list; it registers a (P, P) causal mask
    out.update(softmax_in_input_dtype=False, conv1d_names=False, causal_mask_buffer=True)
    if cfg.bool_("multi_query"):
        out["n_kv_heads"] = 1
    return out


def _gpt_neox(cfg: _Config) -> dict[str, Any]:
    """GPT-NeoX / Pythia: fused query_key_value, attention_bias, MLP with biases, LayerNorm."""
    out = _common(cfg)
    out["n_kv_heads"] = out["n_heads"]
    out["head_dim"] = _div(cfg, out["hidden_size"], out["n_heads"])
    out["rotary_concat"] = True
    bias = cfg.bool_("attention_bias")
    partial = _partial_rotary(cfg, "rotary_pct", default=0.25)
    out.update(
        mlp_kind=MlpKind.PLAIN,
        activation=str(cfg.get("hidden_act")),
        norm_kind=NormKind.LAYERNORM,
        norm_bias=True,
        qkv_bias=bias,
        o_bias=bias,
        mlp_bias=True,
        fused_qkv=True,
        parallel_residual=cfg.bool_("use_parallel_residual"),
        rotary_dim=int(out["head_dim"] * partial),
        hidden_dropout=cfg.number("hidden_dropout", default=0.0) or 0.0,
    )
    return out


def _falcon(cfg: _Config) -> dict[str, Any]:
    """Falcon: fused QKV (MQA, GQA in the new decoder architecture), 1 or 2 LayerNorms."""
    hidden = cfg.int_("hidden_size", "n_embed")
    heads = cfg.int_("num_attention_heads")
    new_arch = cfg.bool_("new_decoder_architecture")
    parallel = cfg.bool_("parallel_attn")
    if new_arch:
        kv = cfg.int_("num_kv_heads", default=None) or heads
    elif cfg.bool_("multi_query"):
        kv = 1
    else:
        kv = heads
    n_ln = cfg.int_("num_ln_in_parallel_attn", default=None) or (2 if new_arch else 1)
    bias = cfg.bool_("bias")
    alibi = cfg.bool_("alibi")
    return {
        "vocab_size": cfg.int_("vocab_size"),
        "hidden_size": hidden,
        "n_layers": cfg.int_("num_hidden_layers"),
        "n_heads": heads,
        "n_kv_heads": kv,
        "head_dim": _div(cfg, hidden, heads),
        "intermediate_size": cfg.int_("ffn_hidden_size", default=None) or 4 * hidden,
        "mlp_kind": MlpKind.PLAIN,
        "activation": str(cfg.get("activation")),
        "norm_kind": NormKind.LAYERNORM,
        "norm_bias": True,
        "n_layer_norms": 2 if (not parallel or n_ln == 2) else 1,
        "qkv_bias": bias,
        "o_bias": bias,
        "mlp_bias": bias,
        "fused_qkv": True,
        "parallel_residual": parallel or new_arch,
        "tie_word_embeddings": cfg.bool_("tie_word_embeddings"),
        "position": PositionKind.ALIBI if alibi else PositionKind.ROTARY,
        "max_position_embeddings": cfg.int_("max_position_embeddings"),
        "rope_theta": _rope_theta(cfg),
        "hidden_dropout": cfg.number("hidden_dropout", default=0.0) or 0.0,
        "attention_dropout": cfg.number("attention_dropout", default=0.0) or 0.0,
        "sdpa_own_call": not new_arch,
    }


def _olmo(cfg: _Config) -> dict[str, Any]:
    """OLMo (v1): LayerNorm without weight or bias, so norms hold no parameters."""
    out = _llama(cfg)
    out.update(norm_kind=NormKind.LAYERNORM_NO_AFFINE, mlp_bias=False, o_bias=out["qkv_bias"])
    return out


def _olmo2(cfg: _Config) -> dict[str, Any]:
    """OLMo 2: post-attention and post-feed-forward RMSNorms; RMSNorm over all q and all k."""
    out = _llama(cfg)
    out.update(qk_norm=QkNorm.FULL, mlp_bias=False, norm_weight_fp32=True)
    return out


def _starcoder2(cfg: _Config) -> dict[str, Any]:
    """StarCoder2: use_bias on every Linear, LayerNorm with bias, 2-matrix GELU MLP."""
    out = _common(cfg)
    bias = cfg.bool_("use_bias")
    out.update(
        head_dim=_head_dim(cfg, out["hidden_size"], out["n_heads"]),
        mlp_kind=MlpKind.PLAIN,
        norm_kind=NormKind.LAYERNORM,
        norm_bias=True,
        qkv_bias=bias,
        o_bias=bias,
        mlp_bias=bias,
        sliding_window=cfg.int_("sliding_window", default=None),
        hidden_dropout=cfg.number("residual_dropout", default=0.0) or 0.0,
        embedding_dropout=cfg.number("embedding_dropout", default=0.0) or 0.0,
    )
    return out


def _deepseek(cfg: _Config, *, v3: bool) -> dict[str, Any]:
    """DeepSeek-V2/V3: MLA attention; MoE from layer first_k_dense_replace on (V2 paper 2.1)."""
    out = _common(cfg)
    mla = MlaSpec(
        q_lora_rank=cfg.int_("q_lora_rank", default=None),
        kv_lora_rank=cfg.int_("kv_lora_rank"),
        qk_nope_head_dim=cfg.int_("qk_nope_head_dim"),
        qk_rope_head_dim=cfg.int_("qk_rope_head_dim"),
        v_head_dim=cfg.int_("v_head_dim"),
    )
    bias = cfg.bool_("attention_bias")
    n_experts = cfg.int_("n_routed_experts", "num_experts", "num_local_experts")
    n_shared = cfg.int_("n_shared_experts", default=0) or 0
    expert_size = cfg.int_("moe_intermediate_size")
    top_k = cfg.int_("num_experts_per_tok", default=None) or 1
    out.update(
        n_kv_heads=out["n_heads"],
        head_dim=mla.qk_head_dim,
        qkv_bias=bias,
        o_bias=bias,
        mlp_bias=False if v3 else cfg.bool_("mlp_bias"),
        mla=mla,
        moe=MoeSpec(
            n_experts=n_experts,
            top_k=top_k,
            expert_intermediate_size=expert_size,
            n_shared_experts=n_shared,
            shared_intermediate_size=n_shared * expert_size,
            router_bias=v3,
            first_dense_layers=cfg.int_("first_k_dense_replace", default=0) or 0,
        ),
    )
    return out


_PARSERS: dict[str, Callable[[_Config], dict[str, Any]]] = {
    "llama": _llama,
    "mistral": _mistral,
    "mixtral": _mixtral,
    "qwen2": _qwen2,
    "qwen2_moe": _qwen2_moe,
    "qwen3": _qwen3,
    "qwen3_moe": _qwen3_moe,
    "gemma": _gemma,
    "gemma2": _gemma2,
    "gemma3_text": _gemma3_text,
    "phi3": _phi3,
    "gpt2": _gpt2,
    "gpt_neox": _gpt_neox,
    "gpt_bigcode": _gpt_bigcode,
    "falcon": _falcon,
    "olmo": _olmo,
    "olmo2": _olmo2,
    "starcoder2": _starcoder2,
    "deepseek_v2": lambda cfg: _deepseek(cfg, v3=False),
    "deepseek_v3": lambda cfg: _deepseek(cfg, v3=True),
    "gpt_oss": gpt_oss,
    "llama4_text": llama4_text,
    "qwen3_next": qwen3_next,
    "gemma3": lambda cfg: multimodal(cfg, _PARSERS, _DEFAULTS),
    "llama4": lambda cfg: multimodal(cfg, _PARSERS, _DEFAULTS),
    "mistral3": lambda cfg: multimodal(cfg, _PARSERS, _DEFAULTS),
}

SUPPORTED_MODEL_TYPES: tuple[str, ...] = tuple(_PARSERS)

# Defaults of the transformers 5.23 config classes for the keys the parsers read
# (``configuration_<type>.py``); a config.json that leaves a key out gets these, as in
# transformers.
_DEFAULTS: dict[str, dict[str, Any]] = {
    "llama": {"tie_word_embeddings": False, "attention_bias": False, "mlp_bias": False,
              "hidden_act": "silu", "max_position_embeddings": 2048},
    "mistral": {"num_key_value_heads": 8, "tie_word_embeddings": False, "hidden_act": "silu",
                "max_position_embeddings": 131072, "sliding_window": 4096},
    "mixtral": {"num_key_value_heads": 8, "tie_word_embeddings": False, "hidden_act": "silu",
                "max_position_embeddings": 131072, "num_local_experts": 8,
                "num_experts_per_tok": 2, "rope_theta": 1e6},
    "qwen2": {"num_key_value_heads": 32, "tie_word_embeddings": False, "hidden_act": "silu",
              "max_position_embeddings": 32768, "sliding_window": 4096},
    "qwen2_moe": {"num_key_value_heads": 16, "tie_word_embeddings": False, "qkv_bias": True,
                  "hidden_act": "silu", "max_position_embeddings": 32768, "num_experts": 60,
                  "num_experts_per_tok": 4, "moe_intermediate_size": 1408,
                  "shared_expert_intermediate_size": 5632, "decoder_sparse_step": 1,
                  "sliding_window": 4096},
    "qwen3": {"num_key_value_heads": 32, "head_dim": 128, "tie_word_embeddings": False,
              "attention_bias": False, "hidden_act": "silu", "max_position_embeddings": 32768,
              "sliding_window": 4096},
    "qwen3_moe": {"num_key_value_heads": 4, "tie_word_embeddings": False,
                  "attention_bias": False, "hidden_act": "silu",
                  "max_position_embeddings": 32768, "num_experts": 128,
                  "num_experts_per_tok": 8, "moe_intermediate_size": 768,
                  "decoder_sparse_step": 1, "sliding_window": 4096},
    "gemma": {"num_key_value_heads": 16, "head_dim": 256, "tie_word_embeddings": True,
              "attention_bias": False, "hidden_act": "gelu_pytorch_tanh",
              "max_position_embeddings": 8192},
    "gemma2": {"num_key_value_heads": 4, "head_dim": 256, "tie_word_embeddings": True,
               "attention_bias": False, "hidden_activation": "gelu_pytorch_tanh",
               "max_position_embeddings": 8192, "sliding_window": 4096,
               "final_logit_softcapping": 30.0, "attn_logit_softcapping": 50.0},
    "gemma3_text": {"vocab_size": 262208, "num_attention_heads": 8,
                    "num_key_value_heads": 4, "head_dim": 256, "tie_word_embeddings": True,
                    "attention_bias": False, "hidden_activation": "gelu_pytorch_tanh",
                    "max_position_embeddings": 131072, "sliding_window": 4096,
                    "rope_theta": 1e6},
    "phi3": {"tie_word_embeddings": False, "hidden_act": "silu",
             "max_position_embeddings": 4096},
    "gpt2": {"tie_word_embeddings": True, "activation_function": "gelu_new",
             "n_positions": 1024},
    "gpt_neox": {"tie_word_embeddings": False, "attention_bias": True, "hidden_act": "gelu",
                 "max_position_embeddings": 2048, "use_parallel_residual": True},
    "gpt_bigcode": {"tie_word_embeddings": True, "activation_function": "gelu_pytorch_tanh",
                    "n_positions": 1024, "multi_query": True},
    "falcon": {"tie_word_embeddings": True, "bias": False, "activation": "gelu",
               "max_position_embeddings": 2048, "new_decoder_architecture": False,
               "multi_query": True, "parallel_attn": True, "alibi": False},
    "olmo": {"tie_word_embeddings": False, "attention_bias": False, "hidden_act": "silu",
             "max_position_embeddings": 2048},
    "olmo2": {"tie_word_embeddings": False, "attention_bias": False, "hidden_act": "silu",
              "max_position_embeddings": 2048},
    "starcoder2": {"num_key_value_heads": 2, "tie_word_embeddings": True, "use_bias": True,
                   "hidden_act": "gelu_pytorch_tanh", "max_position_embeddings": 4096},
    "deepseek_v2": {"tie_word_embeddings": False, "attention_bias": False, "mlp_bias": False,
                    "hidden_act": "silu", "max_position_embeddings": 2048,
                    "n_routed_experts": 64, "moe_intermediate_size": 1407,
                    "n_shared_experts": 2, "first_k_dense_replace": 0, "q_lora_rank": 1536,
                    "kv_lora_rank": 512, "qk_nope_head_dim": 128, "qk_rope_head_dim": 64,
                    "v_head_dim": 128},
    "deepseek_v3": {"num_key_value_heads": 128, "tie_word_embeddings": False,
                    "attention_bias": False, "hidden_act": "silu",
                    "max_position_embeddings": 4096, "n_routed_experts": 256,
                    "num_experts_per_tok": 8, "moe_intermediate_size": 2048,
                    "n_shared_experts": 1, "first_k_dense_replace": 3, "q_lora_rank": 1536,
                    "kv_lora_rank": 512, "qk_nope_head_dim": 128, "qk_rope_head_dim": 64,
                    "v_head_dim": 128},
    "gpt_oss": {"num_key_value_heads": 8, "head_dim": 64, "tie_word_embeddings": False,
                "attention_bias": True, "hidden_act": "silu", "max_position_embeddings": 131072,
                "sliding_window": 128, "num_local_experts": 128, "num_experts_per_tok": 4,
                "rope_theta": 150000.0},
    "llama4_text": {"num_key_value_heads": 8, "head_dim": 128, "tie_word_embeddings": False,
                    "attention_bias": False, "hidden_act": "silu",
                    "max_position_embeddings": 131072, "intermediate_size_mlp": 16384,
                    "num_local_experts": 16, "num_experts_per_tok": 1,
                    "interleave_moe_layer_step": 1, "use_qk_norm": True,
                    "no_rope_layer_interval": 4, "attention_chunk_size": 8192,
                    "attn_temperature_tuning": True, "rope_theta": 500000.0},
    "qwen3_next": {"num_key_value_heads": 2, "head_dim": 256, "tie_word_embeddings": False,
                   "attention_bias": False, "hidden_act": "silu",
                   "max_position_embeddings": 32768, "linear_conv_kernel_dim": 4,
                   "linear_key_head_dim": 128, "linear_value_head_dim": 128,
                   "linear_num_key_heads": 16, "linear_num_value_heads": 32,
                   "decoder_sparse_step": 1, "moe_intermediate_size": 512,
                   "shared_expert_intermediate_size": 512, "num_experts_per_tok": 10,
                   "num_experts": 512},
    # multimodal configs: the parsers read text_config and vision_config with their own
    # classes' defaults (hf_multimodal.py), and no top-level key of their own here
    "gemma3": {},
    "llama4": {},
    "mistral3": {},
}  # fmt: skip
