"""Training-side memory of the model's own tensors: parameters, gradients, autocast copies.

The analytic engine needs the model tensor by tensor (not just a parameter total) because the
CUDA caching allocator rounds every block up to 512 bytes, LoRA targets and frozen layers act on
named modules, and autocast caches a half copy of each matmul weight only. The inventory below
follows the modules transformers 5 builds for each family (``modeling_llama.py``,
``modeling_gpt2.py``, ``modeling_phi3.py``, ``modeling_mixtral.py`` with its 3-D expert tensors,
``modeling_deepseek_v2.py``); :func:`param_tensors` lists them with their roles.

Precision regimes (:func:`regime`) give the byte width of each kind of tensor:

============== ====== ===== ======= ================ ===============
precision      params grads compute optimizer states master weights
============== ====== ===== ======= ================ ===============
fp32           4      4     4       4                -
fp16 / bf16    2      2     2       2 (torch keeps states in the param dtype)
*-mixed (AMP)  4      4     2       4                - (autocast caches 2-byte copies)
deepspeed-*    2      2/4   2       4                4 (seed 001's 16 bytes per parameter)
============== ====== ===== ======= ================ ===============
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from memplan.formulas.allocator import ALLOCATOR_ROUND_BYTES, alloc_bytes
from memplan.formulas.vision import vision_buffer_items, vision_tensors
from memplan.specs.model import MlpKind, ModelSpec, NormKind, PositionKind, QkNorm
from memplan.specs.training import Precision

__all__ = [
    "ALLOCATOR_ROUND_BYTES",
    "ParamTensor",
    "Regime",
    "alloc_bytes",
    "buffer_allocations",
    "param_tensors",
    "regime",
]


@dataclass(frozen=True, slots=True)
class Regime:
    """Byte widths of one precision regime (see the module table)."""

    param_bytes: int
    grad_bytes: int
    compute_bytes: int
    state_bytes: int
    master_bytes: int
    """0 unless an fp32 master copy of the weights is kept (DeepSpeed/Megatron style)."""
    autocast: bool
    """PyTorch AMP: fp32 parameters, matmuls in half with cached half copies of the weights."""


_FP32 = Regime(4, 4, 4, 4, 0, False)
_HALF = Regime(2, 2, 2, 2, 0, False)
_AUTOCAST = Regime(4, 4, 2, 4, 0, True)
_MASTER = {False: Regime(2, 2, 2, 4, 4, False), True: Regime(2, 4, 2, 4, 4, False)}
"""DeepSpeed's half model with fp32 master weights, by fp32 gradient accumulation."""


def regime(precision: Precision, *, fp32_grad_accumulation: bool = False) -> Regime:
    """The byte widths of ``precision`` (module docstring; seeds 001 and 002 for DeepSpeed)."""
    if precision is Precision.FP32:
        return _FP32
    if precision in (Precision.FP16, Precision.BF16):
        return _HALF
    if precision in (Precision.FP16_MIXED, Precision.BF16_MIXED):
        return _AUTOCAST
    return _MASTER[bool(fp32_grad_accumulation)]


@dataclass(frozen=True, slots=True)
class ParamTensor:
    """One parameter tensor of the model."""

    name: str
    """``layers.3.self_attn.q_proj.weight`` style, as transformers names it (prefix dropped)."""
    numel: int
    role: str
    """``embedding``, ``linear`` (a matmul weight: autocast casts it), ``bias``, ``norm``,
    ``experts`` (3-D stacked expert weights, also matmul weights), ``router``, ``vector``
    (a learned vector no autocast op casts: gpt-oss's sinks and expert biases, Gated DeltaNet's
    ``dt_bias`` and ``A_log``), ``conv`` (Gated DeltaNet's depthwise convolution), ``vision``
    (a multimodal checkpoint's vision tower and projector: text inputs never use them)."""
    layer: int = -1
    """Decoder layer index; -1 outside the layers."""
    module: str = ""
    """The short module name LoRA targets match (``q_proj``, ``down_proj``, ``c_attn``)."""
    shape: tuple[int, ...] = ()


def _linear(
    name: str, module: str, out_f: int, in_f: int, bias: bool, layer: int
) -> list[ParamTensor]:
    items = [ParamTensor(f"{name}.weight", out_f * in_f, "linear", layer, module, (out_f, in_f))]
    if bias:
        items.append(ParamTensor(f"{name}.bias", out_f, "bias", layer, module, (out_f,)))
    return items


def _norm(spec: ModelSpec, name: str, width: int, layer: int) -> list[ParamTensor]:
    if spec.norm_kind is NormKind.LAYERNORM_NO_AFFINE:
        return []
    items = [ParamTensor(f"{name}.weight", width, "norm", layer, "norm", (width,))]
    if spec.norm_kind is NormKind.LAYERNORM and spec.norm_bias:
        items.append(ParamTensor(f"{name}.bias", width, "norm", layer, "norm", (width,)))
    return items


def _attention_tensors(spec: ModelSpec, i: int) -> list[ParamTensor]:
    h = spec.hidden_size
    p = f"layers.{i}.self_attn"
    mla = spec.mla
    if mla is not None:
        n_q = spec.n_heads * mla.qk_head_dim
        items: list[ParamTensor] = []
        if mla.q_lora_rank is None:
            items += _linear(f"{p}.q_proj", "q_proj", n_q, h, False, i)
        else:
            items += _linear(f"{p}.q_a_proj", "q_a_proj", mla.q_lora_rank, h, spec.qkv_bias, i)
            items += _norm(spec, f"{p}.q_a_layernorm", mla.q_lora_rank, i)
            items += _linear(f"{p}.q_b_proj", "q_b_proj", n_q, mla.q_lora_rank, False, i)
        kv_a = mla.kv_lora_rank + mla.qk_rope_head_dim
        items += _linear(f"{p}.kv_a_proj_with_mqa", "kv_a_proj_with_mqa", kv_a, h, spec.qkv_bias, i)
        items += _norm(spec, f"{p}.kv_a_layernorm", mla.kv_lora_rank, i)
        kv_b = spec.n_heads * (mla.qk_nope_head_dim + mla.v_head_dim)
        items += _linear(f"{p}.kv_b_proj", "kv_b_proj", kv_b, mla.kv_lora_rank, False, i)
        items += _linear(f"{p}.o_proj", "o_proj", h, spec.n_heads * mla.v_head_dim, spec.o_bias, i)
        return items
    if spec.is_linear_attention(i):
        return _linear_attention_tensors(spec, i)
    q, kv = spec.q_dim, spec.kv_dim
    if spec.fused_qkv:
        module = "c_attn" if spec.conv1d_names else "qkv_proj"
        items = _linear(f"{p}.{module}", module, q + 2 * kv, h, spec.qkv_bias, i)
    else:
        items = []
        for module, width in (("q_proj", spec.q_proj_width), ("k_proj", kv), ("v_proj", kv)):
            items += _linear(f"{p}.{module}", module, width, h, spec.qkv_bias, i)
    if spec.qk_norm is QkNorm.PER_HEAD:
        items += _norm(spec, f"{p}.q_norm", spec.head_dim, i)
        items += _norm(spec, f"{p}.k_norm", spec.head_dim, i)
    elif spec.qk_norm is QkNorm.FULL:
        items += _norm(spec, f"{p}.q_norm", q, i)
        items += _norm(spec, f"{p}.k_norm", kv, i)
    o_module = "c_proj" if spec.conv1d_names else "o_proj"
    items += _linear(f"{p}.{o_module}", o_module, h, q, spec.o_bias, i)
    if spec.attention_sinks:
        items.append(ParamTensor(f"{p}.sinks", spec.n_heads, "vector", i, "sinks", (spec.n_heads,)))
    return items


def _linear_attention_tensors(spec: ModelSpec, i: int) -> list[ParamTensor]:
    """Qwen3-Next's Gated DeltaNet (``Qwen3NextGatedDeltaNet``)."""
    lin, h, p = spec.linear_attention, spec.hidden_size, f"layers.{i}.linear_attn"
    if lin is None:
        return []
    conv = (lin.conv_dim, 1, lin.conv_kernel)
    items = [
        ParamTensor(f"{p}.conv1d.weight", lin.conv_dim * lin.conv_kernel, "conv", i, "conv1d", conv)
    ]
    qkvz = 2 * lin.key_dim + 2 * lin.value_dim
    items += _linear(f"{p}.in_proj_qkvz", "in_proj_qkvz", qkvz, h, False, i)
    items += _linear(f"{p}.in_proj_ba", "in_proj_ba", 2 * lin.n_value_heads, h, False, i)
    nv = lin.n_value_heads
    items.append(ParamTensor(f"{p}.dt_bias", nv, "vector", i, "dt_bias", (nv,)))
    items.append(ParamTensor(f"{p}.A_log", nv, "vector", i, "A_log", (nv,)))
    items.append(
        ParamTensor(
            f"{p}.norm.weight", lin.value_head_dim, "norm", i, "norm", (lin.value_head_dim,)
        )
    )
    items += _linear(f"{p}.out_proj", "out_proj", h, lin.value_dim, False, i)
    return items


def _dense_mlp_tensors(
    spec: ModelSpec, prefix: str, width: int, layer: int, fused: bool
) -> list[ParamTensor]:
    h, bias = spec.hidden_size, spec.mlp_bias
    if spec.mlp_kind is MlpKind.PLAIN:
        up, down = ("c_fc", "c_proj") if spec.conv1d_names else ("up_proj", "down_proj")
        return _linear(f"{prefix}.{up}", up, width, h, bias, layer) + _linear(
            f"{prefix}.{down}", down, h, width, bias, layer
        )
    if fused:
        items = _linear(f"{prefix}.gate_up_proj", "gate_up_proj", 2 * width, h, bias, layer)
    else:
        items = _linear(f"{prefix}.gate_proj", "gate_proj", width, h, bias, layer)
        items += _linear(f"{prefix}.up_proj", "up_proj", width, h, bias, layer)
    return items + _linear(f"{prefix}.down_proj", "down_proj", h, width, bias, layer)


def _mlp_tensors(spec: ModelSpec, i: int) -> list[ParamTensor]:
    p = f"layers.{i}.mlp"
    moe = spec.moe
    if moe is None or not spec.is_moe_layer(i):
        return _dense_mlp_tensors(spec, p, spec.intermediate_size, i, spec.fused_gate_up)
    h, e, w = spec.hidden_size, moe.n_experts, moe.expert_intermediate_size
    items = [ParamTensor(f"{p}.gate.weight", e * h, "router", i, "gate", (e, h))]
    if moe.router_bias_param:  # gpt-oss: F.linear(x, weight, bias)
        items.append(ParamTensor(f"{p}.gate.bias", e, "bias", i, "gate", (e,)))
    # transformers 5 stacks the experts: gate_up_proj (E, 2W, H) and down_proj (E, H, W).
    items.append(
        ParamTensor(
            f"{p}.experts.gate_up_proj", e * 2 * w * h, "experts", i, "experts", (e, 2 * w, h)
        )
    )
    if moe.expert_bias:
        items.append(
            ParamTensor(
                f"{p}.experts.gate_up_proj_bias", e * 2 * w, "vector", i, "experts", (e, 2 * w)
            )
        )
    items.append(
        ParamTensor(f"{p}.experts.down_proj", e * h * w, "experts", i, "experts", (e, h, w))
    )
    if moe.expert_bias:
        items.append(
            ParamTensor(f"{p}.experts.down_proj_bias", e * h, "vector", i, "experts", (e, h))
        )
    if moe.n_shared_experts and moe.shared_intermediate_size:
        items += _dense_mlp_tensors(
            spec, f"{p}.shared_experts", moe.shared_intermediate_size, i, False
        )
    if moe.shared_expert_gate:
        items += _linear(f"{p}.shared_expert_gate", "shared_expert_gate", 1, h, False, i)
    return items


@lru_cache(maxsize=256)
def param_tensors(spec: ModelSpec) -> tuple[ParamTensor, ...]:
    """Every parameter tensor of ``spec``, in module order (embeddings, layers, norm, head).

    Tied embeddings are listed once (the head reuses ``embed_tokens.weight``).
    """
    h = spec.hidden_size
    items = [
        ParamTensor(
            "embed_tokens.weight",
            spec.vocab_size * h,
            "embedding",
            -1,
            "embed_tokens",
            (spec.vocab_size, h),
        )
    ]
    if spec.position is PositionKind.LEARNED:
        n = spec.max_position_embeddings
        items.append(ParamTensor("embed_positions.weight", n * h, "embedding", -1, "wpe", (n, h)))
    for i in range(spec.n_layers):
        for k in range(spec.n_layer_norms):
            items += _norm(spec, f"layers.{i}.norm{k}", h, i)
        items += _attention_tensors(spec, i)
        items += _mlp_tensors(spec, i)
    if spec.final_norm:
        items += _norm(spec, "norm", h, -1)
    if not spec.tie_word_embeddings:
        items += _linear("lm_head", "lm_head", spec.vocab_size, h, spec.lm_head_bias, -1)
    elif spec.lm_head_bias:
        items.append(
            ParamTensor("lm_head.bias", spec.vocab_size, "bias", -1, "lm_head", (spec.vocab_size,))
        )
    for t in vision_tensors(spec):
        items.append(ParamTensor(t.name, t.numel, "vision", -1, t.group, t.shape))
    return tuple(items)


def buffer_allocations(spec: ModelSpec) -> tuple[int, ...]:
    """Byte sizes of the registered buffers, one allocation each (``formulas/buffers.py``).

    Rotary models keep ``inv_freq`` and ``original_inv_freq`` (two storages, fp32, half the
    rotary width each); Gemma an fp32 ``embed_scale``; GPT-BigCode a bool causal mask;
    DeepSeek-V3 an fp32 ``e_score_correction_bias`` per MoE layer.
    """
    out: list[int] = []
    if spec.position is PositionKind.ROTARY:
        rot = spec.mla.qk_rope_head_dim if spec.mla else (spec.rotary_dim or spec.head_dim)
        out += [(rot + 1) // 2 * 4] * (2 * spec.n_rotary_tables)
    if spec.embedding_multiplier is not None:  # Gemma's embed_scale
        out.append(4)
    if spec.causal_mask_buffer:
        out.append(spec.max_position_embeddings**2)
    if spec.moe is not None and spec.moe.router_bias:
        n_moe = sum(1 for i in range(spec.n_layers) if spec.is_moe_layer(i))
        out += [spec.moe.n_experts * 4] * n_moe
    out += [size for _, size, _ in vision_buffer_items(spec)]
    return tuple(out)
