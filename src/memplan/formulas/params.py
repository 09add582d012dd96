"""Exact parameter counts of a decoder-only transformer, as transformers builds it.

Each function counts one module from its shapes (``nn.Linear(n_in, n_out, bias)`` holds
``n_in * n_out (+ n_out)`` parameters). The tree from :func:`param_breakdown` sums, by
construction, to ``sum(p.numel() for p in model.parameters())`` of the transformers model
(tied weights counted once); ``tests/test_params_exact.py`` checks this on the meta device.

Tree (unit ``params``)::

    parameters
      embeddings/{token_embeddings, position_embeddings}
      layers/attention/{q_proj, k_proj, v_proj | qkv_proj, o_proj, q_norm, k_norm, sinks,
                        MLA parts}                             (softmax-attention layers)
      layers/linear_attention/{conv1d, in_proj_qkvz, in_proj_ba, dt_bias, A_log, norm,
                               out_proj}                        (Gated DeltaNet layers)
      layers/norms
      layers/mlp/{gate_proj, up_proj, down_proj}              (dense layers)
      layers/moe/{router, experts, shared_experts, shared_expert_gate}   (MoE layers)
      final_norm
      lm_head                                                  (absent when tied)
      vision_tower, multi_modal_projector                      (multimodal checkpoints)

Components under ``layers`` are summed over all layers; the formula says ``n_layers x`` the
count of one layer. Per-layer totals: :func:`layer_params`.
"""

from __future__ import annotations

from dataclasses import dataclass

from memplan.formulas.vision import vision_items
from memplan.report import Item
from memplan.specs.model import MlpKind, ModelSpec, NormKind, PositionKind, QkNorm

__all__ = [
    "ParamTotals",
    "active_params_per_token",
    "attention_params",
    "embedding_params",
    "expert_params",
    "layer_params",
    "linear_params",
    "mlp_params",
    "norm_params",
    "param_breakdown",
    "param_totals",
    "total_params",
]

_SRC = "transformers 5.23 modeling_{}.py"


def linear_params(n_in: int, n_out: int, bias: bool = False) -> int:
    """``nn.Linear(n_in, n_out, bias)``: a (n_out, n_in) weight and an optional (n_out,) bias."""
    return n_in * n_out + (n_out if bias else 0)


def norm_params(spec: ModelSpec, width: int) -> int:
    """One norm over ``width`` features: RMSNorm weight; LayerNorm weight (+ bias); none (OLMo)."""
    if spec.norm_kind is NormKind.LAYERNORM_NO_AFFINE:
        return 0
    if spec.norm_kind is NormKind.LAYERNORM and spec.norm_bias:
        return 2 * width
    return width


def _source(spec: ModelSpec) -> str:
    if spec.model_type == "manual":
        return "hand-given hyperparameters, Llama-style modules (modeling_llama.py)"
    return _SRC.format(spec.model_type)


# Attention ------------------------------------------------------------------------------------
def _linear_formula(n: int, n_in: int, n_out: int, bias: bool) -> str:
    return f"{n} x [{n_in}*{n_out}" + (f" + {n_out} bias]" if bias else "]")


def _mha_items(spec: ModelSpec, n: int) -> list[Item]:
    """q/k/v/o (or fused qkv) for MHA/GQA/MQA, times ``n`` layers."""
    h, q, kv = spec.hidden_size, spec.q_dim, spec.kv_dim
    src = _source(spec)
    shapes = (
        [("qkv_proj", h, q + 2 * kv)]
        if spec.fused_qkv
        else [("q_proj", h, spec.q_proj_width), ("k_proj", h, kv), ("v_proj", h, kv)]
    )
    items = [
        Item(
            key,
            n * linear_params(n_in, n_out, spec.qkv_bias),
            "params",
            _linear_formula(n, n_in, n_out, spec.qkv_bias),
            src,
        )
        for key, n_in, n_out in shapes
    ]
    o_count = linear_params(q, h, spec.o_bias)
    items.append(Item("o_proj", n * o_count, "params", _linear_formula(n, q, h, spec.o_bias), src))
    return items


def _mla_items(spec: ModelSpec, n: int) -> list[Item]:
    """DeepSeek MLA (DeepSeek-V2 paper, eq. 9-14; DeepseekV2Attention), times ``n`` layers."""
    mla, h, heads = spec.mla, spec.hidden_size, spec.n_heads
    if mla is None:
        return []
    src = _source(spec)
    parts: list[tuple[str, int, str]] = []
    if mla.q_lora_rank is None:
        parts.append(("q_proj", linear_params(h, heads * mla.qk_head_dim), "h*heads*qk_head_dim"))
    else:
        r = mla.q_lora_rank
        parts.append(("q_a_proj", linear_params(h, r, spec.qkv_bias), "h*q_lora_rank"))
        parts.append(("q_a_layernorm", r, "q_lora_rank"))
        parts.append(("q_b_proj", linear_params(r, heads * mla.qk_head_dim), "r*heads*qk_dim"))
    kv_a = linear_params(h, mla.kv_lora_rank + mla.qk_rope_head_dim, spec.qkv_bias)
    parts.append(("kv_a_proj_with_mqa", kv_a, "h*(kv_lora_rank+rope_dim)"))
    parts.append(("kv_a_layernorm", mla.kv_lora_rank, "kv_lora_rank"))
    kv_b = linear_params(mla.kv_lora_rank, heads * (mla.qk_nope_head_dim + mla.v_head_dim))
    parts.append(("kv_b_proj", kv_b, "kv_lora_rank*heads*(nope+v)"))
    parts.append(("o_proj", linear_params(heads * mla.v_head_dim, h, spec.o_bias), "heads*v*h"))
    return [Item(key, n * count, "params", f"{n} x [{f}]", src) for key, count, f in parts]


def _qk_norm_items(spec: ModelSpec, n: int) -> list[Item]:
    if spec.qk_norm in (QkNorm.NONE, QkNorm.L2):  # Llama 4's L2 norm has no weight
        return []
    if spec.qk_norm is QkNorm.PER_HEAD:
        q_w = k_w = spec.head_dim
    else:
        q_w, k_w = spec.q_dim, spec.kv_dim
    src = _source(spec)
    return [
        Item("q_norm", n * q_w, "params", f"{n} x RMSNorm({q_w})", src),
        Item("k_norm", n * k_w, "params", f"{n} x RMSNorm({k_w})", src),
    ]


def attention_item(spec: ModelSpec, n: int = 1) -> Item:
    """The attention block of ``n`` layers, with one child per weight."""
    node = Item("attention", unit="params")
    node.children = _mla_items(spec, n) if spec.mla is not None else _mha_items(spec, n)
    node.children += _qk_norm_items(spec, n)
    if spec.attention_sinks:
        src = _source(spec)
        node.leaf("sinks", n * spec.n_heads, f"{n} x [{spec.n_heads}] (one logit per head)", src)
    return node


def linear_attention_item(spec: ModelSpec, n: int = 1) -> Item:
    """``n`` Gated DeltaNet layers (``Qwen3NextGatedDeltaNet``): the depthwise convolution over
    q, k, v (no bias), the q/k/v/z and b/a input projections, per-head ``dt_bias`` and
    ``A_log``, the gated RMSNorm over one value head, and the output projection."""
    lin, h, src = spec.linear_attention, spec.hidden_size, _source(spec)
    node = Item("linear_attention", unit="params")
    if lin is None:
        return node
    qkvz = 2 * lin.key_dim + 2 * lin.value_dim
    parts = [
        ("conv1d", lin.conv_dim * lin.conv_kernel, f"{lin.conv_dim}*{lin.conv_kernel}"),
        ("in_proj_qkvz", linear_params(h, qkvz), f"{h}*{qkvz}"),
        ("in_proj_ba", linear_params(h, 2 * lin.n_value_heads), f"{h}*{2 * lin.n_value_heads}"),
        ("dt_bias", lin.n_value_heads, f"{lin.n_value_heads}"),
        ("A_log", lin.n_value_heads, f"{lin.n_value_heads}"),
        ("norm", lin.value_head_dim, f"RMSNorm({lin.value_head_dim})"),
        ("out_proj", linear_params(lin.value_dim, h), f"{lin.value_dim}*{h}"),
    ]
    for key, count, formula in parts:
        node.leaf(key, n * count, f"{n} x [{formula}]", src)
    return node


def attention_params(spec: ModelSpec) -> int:
    """Parameters of one layer's attention block (projections, biases, q/k norms)."""
    return int(attention_item(spec).total)


# MLP and MoE ---------------------------------------------------------------------------------
def mlp_item(spec: ModelSpec, width: int, n: int = 1, key: str = "mlp", bias: bool = False) -> Item:
    """Gated (gate, up, down: 3 matrices) or plain (up, down: 2 matrices) MLP of ``width``."""
    h, src = spec.hidden_size, _source(spec)
    node = Item(key, unit="params")
    names = ("gate_proj", "up_proj") if spec.mlp_kind is MlpKind.GATED else ("up_proj",)
    for name in names:
        node.leaf(name, n * linear_params(h, width, bias), _linear_formula(n, h, width, bias), src)
    node.leaf(
        "down_proj", n * linear_params(width, h, bias), _linear_formula(n, width, h, bias), src
    )
    return node


def mlp_params(spec: ModelSpec, width: int, bias: bool = False) -> int:
    """One MLP of hidden width ``width``."""
    return int(mlp_item(spec, width, bias=bias).total)


def expert_params(spec: ModelSpec) -> int:
    """One routed expert: a gated MLP of ``expert_intermediate_size`` (fused 3D
    ``gate_up_proj`` (E, 2I, h) and ``down_proj`` (E, h, I) in transformers 5: same count),
    with gpt-oss's biases (2I + h) where the experts have them."""
    if spec.moe is None:
        return 0
    h, width = spec.hidden_size, spec.moe.expert_intermediate_size
    return 3 * h * width + ((2 * width + h) if spec.moe.expert_bias else 0)


def moe_item(spec: ModelSpec, n: int = 1) -> Item:
    """Router, routed experts, shared experts and their gate, times ``n`` MoE layers."""
    moe, h, src = spec.moe, spec.hidden_size, _source(spec)
    node = Item("moe", unit="params")
    if moe is None:
        return node
    router = moe.n_experts * (h + (1 if moe.router_bias_param else 0))
    bias = " + bias" if moe.router_bias_param else ""
    node.leaf("router", n * router, f"{n} x [{moe.n_experts}*{h}{bias}]", src)
    width = moe.expert_intermediate_size
    biases = f" + (2*{width} + {h}) bias" if moe.expert_bias else ""
    node.leaf(
        "experts",
        n * moe.n_experts * expert_params(spec),
        f"{n} x {moe.n_experts} x [3*{h}*{width}{biases}]",
        src,
    )
    if moe.shared_intermediate_size:
        shared = mlp_item(spec, moe.shared_intermediate_size, n, "shared_experts", spec.mlp_bias)
        node.add(shared)
    if moe.shared_expert_gate:
        node.leaf("shared_expert_gate", n * h, f"{n} x [{h}*1]", src)
    return node


# Whole model ---------------------------------------------------------------------------------
def _layer_counts(spec: ModelSpec) -> tuple[int, int]:
    """(dense layers, MoE layers)."""
    n_moe = sum(1 for i in range(spec.n_layers) if spec.is_moe_layer(i))
    return spec.n_layers - n_moe, n_moe


def _layers_item(spec: ModelSpec) -> Item:
    n_dense, n_moe = _layer_counts(spec)
    n, h, src = spec.n_layers, spec.hidden_size, _source(spec)
    n_attn = spec.n_attention_layers
    node = Item("layers", unit="params")
    if n_attn:
        node.add(attention_item(spec, n_attn))
    if n_attn < n:
        node.add(linear_attention_item(spec, n - n_attn))
    per_norm = norm_params(spec, h)
    if spec.n_layer_norms and per_norm:
        formula = f"{n} x {spec.n_layer_norms} x {spec.norm_kind.value}({h})"
        node.leaf("norms", n * spec.n_layer_norms * per_norm, formula, src)
    if n_dense:
        node.add(mlp_item(spec, spec.intermediate_size, n_dense, "mlp", spec.mlp_bias))
    if n_moe:
        node.add(moe_item(spec, n_moe))
    return node


def param_breakdown(spec: ModelSpec) -> Item:
    """The exact parameter tree (unit ``params``); see the module docstring for its keys."""
    h, v, src = spec.hidden_size, spec.vocab_size, _source(spec)
    root = Item("parameters", unit="params")
    emb = root.add(Item("embeddings", unit="params"))
    tied = " (tied: also the lm_head)" if spec.tie_word_embeddings else ""
    emb.leaf("token_embeddings", v * h, f"{v}*{h}", src, tied.strip(" ()"))
    if spec.position is PositionKind.LEARNED:
        p = spec.max_position_embeddings
        emb.leaf("position_embeddings", p * h, f"{p}*{h}", src)
    root.add(_layers_item(spec))
    if spec.final_norm and norm_params(spec, h):
        root.leaf("final_norm", norm_params(spec, h), f"{spec.norm_kind.value}({h})", src)
    if not spec.tie_word_embeddings:
        bias = " + bias" if spec.lm_head_bias else ""
        root.leaf("lm_head", linear_params(h, v, spec.lm_head_bias), f"{h}*{v}{bias}", src)
    for item in vision_items(spec):
        root.add(item)
    return root


def total_params(spec: ModelSpec) -> int:
    """All unique parameters (tied weights once)."""
    return int(param_breakdown(spec).total)


def embedding_params(spec: ModelSpec) -> int:
    """Vocabulary and position matrices: token embeddings, learned positions, an untied lm_head.

    "Non-embedding" parameters (Kaplan et al. 2020, section 2.1) are the total minus these.
    """
    count = spec.vocab_size * spec.hidden_size
    if spec.position is PositionKind.LEARNED:
        count += spec.max_position_embeddings * spec.hidden_size
    if not spec.tie_word_embeddings:
        count += linear_params(spec.hidden_size, spec.vocab_size, spec.lm_head_bias)
    return count


def layer_params(spec: ModelSpec, index: int) -> int:
    """Parameters of decoder layer ``index`` (attention, its norms, and its MLP or MoE)."""
    mixer = (
        int(linear_attention_item(spec).total)
        if spec.is_linear_attention(index)
        else attention_params(spec)
    )
    count = mixer + spec.n_layer_norms * norm_params(spec, spec.hidden_size)
    if spec.is_moe_layer(index):
        return count + int(moe_item(spec).total)
    return count + mlp_params(spec, spec.intermediate_size, spec.mlp_bias)


def active_params_per_token(spec: ModelSpec) -> int:
    """Parameters one token passes through: the total less the routed experts it skips.

    Each MoE layer uses ``top_k`` of ``n_experts`` routed experts (all shared experts and the
    router); dense models use all of their parameters.
    """
    total = total_params(spec)
    if spec.moe is None:
        return total
    _, n_moe = _layer_counts(spec)
    skipped = spec.moe.n_experts - spec.moe.top_k
    return total - n_moe * skipped * expert_params(spec)


@dataclass(frozen=True, slots=True)
class ParamTotals:
    """The headline counts of a model."""

    total: int
    embedding: int
    non_embedding: int
    active_per_token: int
    per_layer: tuple[int, ...]


def param_totals(spec: ModelSpec) -> ParamTotals:
    total = total_params(spec)
    emb = embedding_params(spec)
    per_layer = tuple(layer_params(spec, i) for i in range(spec.n_layers))
    return ParamTotals(total, emb, total - emb, active_params_per_token(spec), per_layer)
