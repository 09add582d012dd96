"""Saved tensors of the 2025 families' own modules (gpt-oss experts, Llama 4, Qwen3-Next), op by
op as transformers 5.23 and torch 2.13 save them; :mod:`memplan.formulas.activations` calls
these for the layers that have them.
"""

from __future__ import annotations

from memplan.formulas.activations import ActivationContext, Saved, _linear_inputs, _mlp
from memplan.specs.model import ModelSpec

__all__ = ["gpt_oss_moe_saved", "llama4_moe_saved"]


def _routed_tokens(
    spec: ModelSpec, x: int, k: int, *, saves_input: bool, n_sort_indices: int
) -> list[Saved]:
    """``grouped_mm_experts_forward`` (integrations/moe.py) up to the first grouped_mm: the
    gathers by expert order save their int64 indices (``perm // k``, ``perm``, the inverse
    permutation, and gpt-oss's ``expert_ids_g`` for the bias gathers), the int32 offsets (one
    per expert), and grouped_mm its input in the weights' dtype ``x`` (torch's kernel only for
    the weight's gradient; the fp32 fallback op always)."""
    moe = spec.moe
    assert moe is not None
    out = [Saved(f"moe/sort_indices_{i}", 8, per_token=k) for i in range(n_sort_indices)]
    out.append(Saved("moe/offsets_int32", 4, fixed=moe.n_experts))
    if saves_input:
        out.append(Saved("moe/expert_inputs", x, per_token=k * spec.hidden_size))
    return out


def gpt_oss_moe_saved(
    spec: ModelSpec, ctx: ActivationContext, in_bytes: int, param_bytes: int, trainable: bool
) -> list[Saved]:
    """gpt-oss's MoE block (``GptOssMLP``): a biased router, top-k of the logits and a softmax
    over those k (in the logits' half dtype under autocast), then the grouped experts with
    biases and gpt-oss's clamped SwiGLU (``GptOssExperts._apply_gate``):

    - ``gate = gate_up[..., ::2].clamp(max=7)`` and ``up = gate_up[..., 1::2].clamp(-7, 7)``
      save their input, views of the (S, 2I) projection: that buffer stays whole;
    - ``glu = gate * sigmoid(gate * alpha)`` saves the clamped gate and the sigmoid;
    - ``(up + 1) * glu`` saves both factors; the down projection saves the product (its
      input), and the routing multiply the down projection's output and the (S, 1) weights.

    S = tokens x k rows, in the experts' weight dtype ``param_bytes``.
    """
    moe = spec.moe
    assert moe is not None
    x, c, hdim, w = param_bytes, ctx.compute_bytes, spec.hidden_size, moe.expert_intermediate_size
    k = moe.top_k
    saves_input = trainable or x != 2
    out = _linear_inputs(ctx, "router", hdim, in_bytes, [trainable])
    out.append(Saved("moe/topk_indices", 8, per_token=k))
    out.append(Saved("moe/topk_softmax", c if ctx.autocast else x, per_token=k))
    # the expert-bias gathers save expert_ids_g only when the biases train
    out += _routed_tokens(spec, x, k, saves_input=saves_input, n_sort_indices=4 if trainable else 3)
    out += [
        Saved("moe/expert_gate_up", x, per_token=k * 2 * w),
        Saved("moe/gate_clamped", x, per_token=k * w),
        Saved("moe/gate_sigmoid", x, per_token=k * w),
        Saved("moe/up_plus_one", x, per_token=k * w),
        Saved("moe/glu", x, per_token=k * w),
        *([Saved("moe/expert_down_input", x, per_token=k * w)] if saves_input else []),
        Saved("moe/expert_down_out", x, per_token=k * hdim),
        Saved("moe/routing_weights", c if ctx.autocast else x, per_token=k),
    ]
    return out


def llama4_moe_saved(
    spec: ModelSpec, ctx: ActivationContext, in_bytes: int, trainable: bool
) -> list[Saved]:
    """Llama 4's MoE block as transformers 5.23 runs it (``Llama4TextMoe``): every token goes
    through every expert.

    The router (a bias-free linear) keeps its top-k indices; the scores are scattered into a
    (T, E) tensor of -inf, ``sigmoid(scores.float())`` saves its fp32 result; the hidden states
    are repeated E times and multiplied by the scores (a (E*T, 1) copy in the scores' dtype):
    the multiply saves both; ``bmm`` over the stacked experts (autocast casts the input and the
    weights to half) saves its input, the gate_up output is kept whole by the gate and up views
    (silu saves the gate), the product saves its factors and is the down ``bmm``'s input. The
    shared expert is a dense gated MLP on the tokens. E = ``n_experts`` rows per token.
    """
    moe = spec.moe
    assert moe is not None
    c, hdim, w, e = ctx.compute_bytes, spec.hidden_size, moe.expert_intermediate_size, moe.n_experts
    k, stream = moe.top_k, in_bytes
    out = _linear_inputs(ctx, "router", hdim, in_bytes, [trainable])
    out.append(Saved("moe/topk_indices", 8, per_token=k))
    out.append(Saved("moe/router_sigmoid_fp32", 4, per_token=e))
    out.append(Saved("moe/scores_repeated", c, per_token=e))
    # the scores' gradient reads the repeated tokens (the scores need one through the
    # router's input even when its weight is frozen)
    out.append(Saved("moe/routed_in", stream, per_token=e * hdim))
    if trainable:  # the bmm inputs serve the experts' weight gradients only
        half = ctx.autocast and stream != c
        out.append(Saved("moe/expert_inputs" + ("_half" if half else ""), c, per_token=e * hdim))
    out.append(Saved("moe/expert_gate_up", c, per_token=e * 2 * w))
    out.append(Saved("moe/expert_act", c, per_token=e * w))
    if trainable:
        out.append(Saved("moe/expert_down_input", c, per_token=e * w))
    shared = dict.fromkeys(("gate", "up", "down", "gate_up"), trainable)
    for s in _mlp(spec, ctx, in_bytes, moe.shared_intermediate_size, shared):
        if s.key.endswith("/input") and trainable:
            continue  # without a cast the shared expert reads the router's saved input
        out.append(Saved(f"shared_{s.key}", s.elem_bytes, per_token=s.per_token))
    return out
