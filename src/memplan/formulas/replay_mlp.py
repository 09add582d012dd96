"""The feed-forward block of an inference forward, replayed
(:mod:`memplan.formulas.forward_memory`): the dense MLP, and MoE (router, the grouped experts of
``transformers/integrations/moe.py``, shared experts)."""

from __future__ import annotations

from memplan.formulas.replay_ops import FP32_BYTES, INT64_BYTES, ForwardShape, Replay
from memplan.specs.model import MlpKind, ModelSpec

__all__ = ["mlp"]


def mlp(spec: ModelSpec, shape: ForwardShape, r: Replay, index: int) -> None:
    """The layer's feed-forward block: dense MLP or MoE, read from ``mlp_in`` into ``mlp_out``."""
    if spec.is_moe_layer(index) and spec.moe is not None:
        _moe_block(spec, shape, r)
    else:
        _dense_mlp(spec, shape, r, "mlp", spec.intermediate_size, "mlp_out")


def _dense_mlp(
    spec: ModelSpec, shape: ForwardShape, r: Replay, prefix: str, width: int, out: str
) -> None:
    """``down(act(gate(x)) * up(x))`` (gated) or ``down(act(up(x)))``."""
    t, act = shape.tokens, shape.act
    inner = t * width * act // shape.tp_degree
    if spec.mlp_kind is MlpKind.GATED:
        r.new(f"{prefix}/gate", inner)
        r.new(f"{prefix}/act", inner)
        r.free(f"{prefix}/gate")
        r.new(f"{prefix}/up", inner)
        r.new(f"{prefix}/product", inner)
        r.free(f"{prefix}/act", f"{prefix}/up")
        last = f"{prefix}/product"
    else:
        r.new(f"{prefix}/up", inner)
        r.new(f"{prefix}/act", inner)
        r.free(f"{prefix}/up")
        last = f"{prefix}/act"
    r.new(out, t * spec.hidden_size * act)
    r.free(last)


_ROUTING_WEIGHTS_IN_ACT = frozenset({"qwen2_moe", "qwen3_moe"})
"""Routers that cast the top-k weights to the logits' dtype (``.to(router_logits.dtype)``);
the others (Mixtral, DeepSeek) hand fp32 weights to the experts, which promotes the weighted
expert outputs to fp32."""
_SHARED_EXPERT_FIRST = frozenset({"qwen2_moe"})
"""``Qwen2MoeSparseMoeBlock`` runs the shared expert before the router (DeepSeek after)."""


def _routing_width(spec: ModelSpec, act: int) -> int:
    return act if spec.model_type in _ROUTING_WEIGHTS_IN_ACT else FP32_BYTES


def _moe_block(spec: ModelSpec, shape: ForwardShape, r: Replay) -> None:
    """Router, routed experts (``grouped_mm_experts_forward``), shared experts, their sum."""
    moe = spec.moe
    assert moe is not None
    t, act, h = shape.tokens, shape.act, spec.hidden_size
    shared = moe.shared_intermediate_size
    if shared and spec.model_type in _SHARED_EXPERT_FIRST:
        _dense_mlp(spec, shape, r, "shared_expert", shared, "moe/shared_out")
    _router(spec, shape, r)
    _experts(spec, shape, r)
    if shared and spec.model_type in _SHARED_EXPERT_FIRST:
        if moe.shared_expert_gate:
            r.new("moe/shared_gate", t * act)
            r.new("moe/shared_gate_sigmoid", t * act)
            r.free("moe/shared_gate")
            r.new("moe/shared_gated", t * h * act)
            r.free("moe/shared_gate_sigmoid", "moe/shared_out")
            r.rename("moe/shared_gated", "moe/shared_out")
        r.new("mlp_out", t * h * act)
        r.free("moe/experts_out", "moe/shared_out")
    elif shared:
        _dense_mlp(spec, shape, r, "shared_expert", shared, "moe/shared_out")
        r.new("mlp_out", t * h * act)
        r.free("moe/shared_out", "moe/experts_out")
    else:
        r.rename("moe/experts_out", "mlp_out")
    r.free("router/logits", "router/weights", "router/indices")


def _router(spec: ModelSpec, shape: ForwardShape, r: Replay) -> None:
    """Top-k routing: logits, fp32 softmax, top-k weights and indices (kept for the experts)."""
    moe = spec.moe
    assert moe is not None
    t, act, e, k = shape.tokens, shape.act, moe.n_experts, moe.top_k
    half = act != FP32_BYTES
    if spec.model_type.startswith("deepseek"):  # the linear in fp32 on fp32 copies
        if half:
            r.new("router/input_fp32", t * spec.hidden_size * FP32_BYTES)
            r.new("router/weight_fp32", e * spec.hidden_size * FP32_BYTES)
        r.new("router/logits", t * e * FP32_BYTES)
        if half:
            r.free("router/input_fp32", "router/weight_fp32")
        r.new("router/probs", t * e * FP32_BYTES)
    else:
        r.new("router/logits", t * e * act)
        if half:  # logits.float() (Mixtral) or softmax(dtype=float) (Qwen): an fp32 copy
            r.new("router/logits_fp32", t * e * FP32_BYTES)
        r.new("router/probs", t * e * FP32_BYTES)
        if half:
            r.free("router/logits_fp32")
    r.new("router/top_values", t * k * FP32_BYTES)
    r.new("router/indices", t * k * INT64_BYTES)
    _route_weights(spec, shape, r)


def _route_weights(spec: ModelSpec, shape: ForwardShape, r: Replay) -> None:
    """What the router makes of its top-k values: normalised (Mixtral; Qwen's
    ``norm_topk_prob``), scaled (DeepSeek) or cast to the activation dtype (Qwen)."""
    t, act, k = shape.tokens, shape.act, spec.moe.top_k if spec.moe else 0
    config = spec.hf_config or {}
    normalise = spec.model_type == "mixtral" or bool(config.get("norm_topk_prob", False))
    if spec.model_type.startswith("deepseek"):  # top-k values x routed_scaling_factor
        r.new("router/weights", t * k * FP32_BYTES)
        r.free("router/top_values", "router/probs")
        return
    if normalise:
        r.new("router/top_sum", t * FP32_BYTES)
        r.free("router/top_sum")
    if spec.model_type in _ROUTING_WEIGHTS_IN_ACT and act != FP32_BYTES:
        r.new("router/weights", t * k * act)
        r.free("router/top_values", "router/probs")
        return
    r.free("router/probs")
    r.rename("router/top_values", "router/weights")


def _experts(spec: ModelSpec, shape: ForwardShape, r: Replay) -> None:
    """``grouped_mm_experts_forward`` (transformers ``integrations/moe.py``): tokens sorted by
    expert, two grouped matmuls, the routing weights applied, the order restored, summed.
    Every token goes to ``top_k`` experts: ``S = tokens x top_k`` rows."""
    moe = spec.moe
    assert moe is not None
    t, act, h = shape.tokens, shape.act, spec.hidden_size
    rows, width = t * moe.top_k, moe.expert_intermediate_size // shape.tp_degree
    weight = _routing_width(spec, act)
    wide = max(weight, act)
    r.new("experts/ids_sorted", rows * INT64_BYTES)
    r.new("experts/perm", rows * INT64_BYTES)
    r.new("experts/token_index", rows * INT64_BYTES)
    r.new("experts/inputs", rows * h * act)
    r.free("experts/token_index")
    r.new("experts/sample_weights", rows * weight)
    r.new("experts/histc_input", rows * FP32_BYTES)
    r.new("experts/tokens_per_expert", moe.n_experts * FP32_BYTES)
    r.new("experts/offsets", moe.n_experts * 4)
    gated = spec.mlp_kind is MlpKind.GATED
    r.new("experts/gate_up", rows * (2 if gated else 1) * width * act)
    r.new("experts/act", rows * width * act)
    if gated:
        r.new("experts/product", rows * width * act)
        r.free("experts/act")
        r.rename("experts/product", "experts/act")
    r.free("experts/gate_up")
    r.new("experts/down", rows * h * act)
    r.free("experts/act")
    r.new("experts/weighted", rows * h * wide)
    r.new("experts/inv_perm", rows * INT64_BYTES)
    r.new("experts/arange", rows * INT64_BYTES)
    r.free("experts/arange")
    r.new("experts/unsorted", rows * h * wide)
    r.free("experts/weighted")
    r.new("experts/summed", t * h * wide)
    if wide != act:
        r.new("moe/experts_out", t * h * act)
    else:
        r.rename("experts/summed", "moe/experts_out")
    for name in ("ids_sorted", "perm", "inputs", "sample_weights", "histc_input"):
        r.free(f"experts/{name}")
    r.free("experts/tokens_per_expert", "experts/offsets", "experts/down", "experts/unsorted")
    r.free("experts/inv_perm")
    if wide != act:
        r.free("experts/summed")
