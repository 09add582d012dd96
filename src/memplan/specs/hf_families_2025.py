"""Parsers of the 2025 families: gpt-oss, Llama 4 (text) and Qwen3-Next.

Each follows what transformers 5.23 builds (``models/<type>/modeling_<type>.py``) and the
config classes' defaults (``configuration_<type>.py``); the defaults tables are in
:mod:`memplan.specs.hf_families`, beside the other families'.
"""

from __future__ import annotations

from typing import Any

from memplan.errors import ConfigError
from memplan.specs.hf_config import _common, _Config, _head_dim, _partial_rotary
from memplan.specs.model import AttentionType, LinearAttentionSpec, MoeSpec, QkNorm

__all__ = ["gpt_oss", "llama4_text", "qwen3_next"]


def gpt_oss(cfg: _Config) -> dict[str, Any]:
    """gpt-oss (``GptOssForCausalLM``): q/k/v/o with ``attention_bias``, a sink logit per head,
    sliding and full layers alternating (odd layers full), and every layer a MoE of
    ``num_local_experts`` experts with biases, behind a router with a bias
    (OpenAI gpt-oss model card, section 2.1)."""
    out = _common(cfg)
    bias = cfg.bool_("attention_bias")
    n = out["n_layers"]
    out.update(
        head_dim=_head_dim(cfg, out["hidden_size"], out["n_heads"], explicit=cfg.get("head_dim")),
        qkv_bias=bias,
        o_bias=bias,
        attention_sinks=True,
        sliding_window=cfg.int_("sliding_window", default=None),
        sdpa_unsupported=True,
        rotary_table_halved=True,
        # GptOssRMSNorm: (weight * x).to(input_dtype), the fp32 product first
        norm_weight_fp32=True,
    )
    if not out["layer_types"]:
        pattern = (AttentionType.SLIDING, AttentionType.FULL)
        out["layer_types"] = tuple(pattern[i % 2] for i in range(n))
    out["moe"] = MoeSpec(
        n_experts=cfg.int_("num_local_experts", "num_experts"),
        top_k=cfg.int_("num_experts_per_tok", "experts_per_token"),
        expert_intermediate_size=out["intermediate_size"],
        router_bias_param=True,
        expert_bias=True,
    )
    return out


def _llama4_layer_flags(cfg: _Config, n: int) -> list[int]:
    """``no_rope_layers``: 1 for a rotary layer, 0 for a NoPE layer; an absent or empty list
    means a NoPE layer every ``no_rope_layer_interval`` layers (configuration_llama4.py)."""
    given = cfg.raw.get("no_rope_layers")
    if given:
        if not isinstance(given, list) or len(given) < n or any(v not in (0, 1) for v in given):
            raise ConfigError(
                f"{cfg.name}: no_rope_layers must list 1 (rotary) or 0 (NoPE) for each of the "
                f"{n} layers, got {str(given)[:60]}"
            )
        return [int(v) for v in given[:n]]
    interval = cfg.int_("no_rope_layer_interval")
    return [int((i + 1) % interval != 0) for i in range(n)]


def _llama4_moe_layers(cfg: _Config, n: int) -> tuple[int, ...]:
    """``moe_layers``, else every ``interleave_moe_layer_step``-th layer from step - 1."""
    given = cfg.raw.get("moe_layers")
    if given is not None:
        if not isinstance(given, list) or not all(
            isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in given
        ):
            raise ConfigError(f"{cfg.name}: moe_layers must be a list of layer indices")
        return tuple(given)
    step = cfg.int_("interleave_moe_layer_step")
    return tuple(range(step - 1, n, step))


def llama4_text(cfg: _Config) -> dict[str, Any]:
    """Llama 4 text (``Llama4ForCausalLM``, Meta's Llama 4 release notes: "iRoPE"): rotary
    layers with chunked attention and an L2 QK-norm, NoPE layers (every fourth) with full
    attention and query temperature tuning; MoE layers of ``num_local_experts`` experts of
    width ``intermediate_size`` plus one shared expert of the same width; dense layers of
    width ``intermediate_size_mlp``."""
    out = _common(cfg)
    n, bias = out["n_layers"], cfg.bool_("attention_bias")
    rope = _llama4_layer_flags(cfg, n)
    moe_layers = _llama4_moe_layers(cfg, n)
    width = cfg.int_("intermediate_size")
    out.update(
        head_dim=_head_dim(cfg, out["hidden_size"], out["n_heads"], explicit=cfg.get("head_dim")),
        qkv_bias=bias,
        o_bias=bias,
        intermediate_size=cfg.int_("intermediate_size_mlp"),
        qk_norm=QkNorm.L2 if cfg.bool_("use_qk_norm") else QkNorm.NONE,
        nope_layers=tuple(i for i in range(n) if not rope[i]),
        attn_temperature_tuning=cfg.bool_("attn_temperature_tuning"),
        attention_chunk_size=cfg.int_("attention_chunk_size", default=None),
        rotary_complex=True,
    )
    if not out["layer_types"]:
        out["layer_types"] = tuple(
            AttentionType.CHUNKED if rope[i] else AttentionType.FULL for i in range(n)
        )
    if moe_layers:
        out["moe"] = MoeSpec(
            n_experts=cfg.int_("num_local_experts"),
            top_k=cfg.int_("num_experts_per_tok"),
            expert_intermediate_size=width,
            n_shared_experts=1,
            shared_intermediate_size=width,
            dense_layers=tuple(i for i in range(n) if i not in moe_layers),
            all_experts_per_token=True,
        )
    return out


def qwen3_next(cfg: _Config) -> dict[str, Any]:
    """Qwen3-Next (``Qwen3NextForCausalLM``): three Gated DeltaNet layers for each gated
    full-attention layer (``full_attention_interval``); the attention's q_proj also makes an
    output gate, q and k are RMS-normed per head (1 + weight); MoE with a gated shared
    expert in layers (i + 1) % decoder_sparse_step == 0 not in ``mlp_only_layers``."""
    out = _common(cfg)
    n, bias = out["n_layers"], cfg.bool_("attention_bias")
    head_dim = _head_dim(cfg, out["hidden_size"], out["n_heads"], explicit=cfg.get("head_dim"))
    out.update(
        head_dim=head_dim,
        qkv_bias=bias,
        o_bias=bias,
        qk_norm=QkNorm.PER_HEAD,
        norm_one_plus_weight=True,
        attention_output_gate=True,
        rotary_concat=True,  # partial rotary: cat((rotated, passed), -1)
        rotary_dim=int(head_dim * _partial_rotary(cfg, "partial_rotary_factor", default=0.25)),
        linear_attention=LinearAttentionSpec(
            n_key_heads=cfg.int_("linear_num_key_heads"),
            n_value_heads=cfg.int_("linear_num_value_heads"),
            key_head_dim=cfg.int_("linear_key_head_dim"),
            value_head_dim=cfg.int_("linear_value_head_dim"),
            conv_kernel=cfg.int_("linear_conv_kernel_dim"),
        ),
    )
    if not out["layer_types"]:
        interval = cfg.int_("full_attention_interval", default=4)
        out["layer_types"] = tuple(
            AttentionType.LINEAR if (i + 1) % interval else AttentionType.FULL for i in range(n)
        )
    n_experts = cfg.int_("num_experts")
    if n_experts:
        shared = cfg.int_("shared_expert_intermediate_size")
        out["moe"] = MoeSpec(
            n_experts=n_experts,
            top_k=cfg.int_("num_experts_per_tok"),
            expert_intermediate_size=cfg.int_("moe_intermediate_size"),
            n_shared_experts=1,
            shared_intermediate_size=shared,
            shared_expert_gate=True,
            layer_freq=cfg.int_("decoder_sparse_step"),
            dense_layers=_dense_layers(cfg),
        )
    return out


def _dense_layers(cfg: _Config) -> tuple[int, ...]:
    value = cfg.get("mlp_only_layers", default=None) or []
    if not isinstance(value, list) or not all(
        isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in value
    ):
        raise ConfigError(f"{cfg.name}: mlp_only_layers must be a list of layer indices")
    return tuple(value)
