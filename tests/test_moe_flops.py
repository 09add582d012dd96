"""MoE expert matmuls in the trace's FLOPs: ``aten._grouped_mm`` and transformers' fallback op.

torch 2.13's ``flop_counter`` has no formula for grouped matmuls, so before
``memplan.trace.flops`` the trace counted MoE experts as zero (tiny Mixtral -71.5 %, tiny
Qwen2-MoE -33.9 %, tiny DeepSeek-V2 -18.9 % on a generation). Held here: the formula against
the per-group ``mm`` loop it stands for (real CPU tensors, torch's own counter), and the
trace's FLOPs against the analytic count for MoE families, inference and training, both
expert paths (bf16: ``torch._grouped_mm``; fp32: ``transformers::grouped_mm_fallback``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from memplan.formulas.flops import forward_flops_item
from memplan.specs.hf import spec_from_config
from memplan.specs.inference import InferenceSetup
from memplan.specs.training import Precision, TrainingSetup

CONFIGS = json.loads((Path(__file__).parent / "data" / "trace_tiny_configs.json").read_text())
MOE = ["mixtral", "qwen2_moe", "deepseek_v2"]


def _mm_loop_flops(a: Any, b: Any, sizes: list[int], layout: str) -> int:
    """FlopCounterMode's count of the per-group ``mm`` calls a grouped matmul stands for."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    start = 0
    with counter:
        for group, size in enumerate(sizes):
            end = start + size
            if layout == "2d3d":
                torch.mm(a[start:end], b[group])
            elif layout == "3d2d":
                torch.mm(a[group], b[:, start:end])
            else:  # 2d2d: the shared dimension is split
                torch.mm(a[:, start:end], b[start:end])
            start = end
    return int(counter.get_total_flops())


@pytest.mark.trace
@pytest.mark.parametrize("layout", ["2d3d", "3d2d", "2d2d", "3d3d"])
def test_grouped_mm_formula_equals_the_mm_loop(layout: str) -> None:
    torch = pytest.importorskip("torch")
    from memplan.trace.flops import grouped_mm_flops

    sizes = [3, 0, 5, 4]  # rows per group (one empty group), summing to the jagged length
    total, groups, k, n = sum(sizes), len(sizes), 8, 6
    shapes = {
        "2d3d": ((total, k), (groups, k, n)),
        "3d2d": ((groups, 5, k), (k, total)),
        "2d2d": ((k, total), (total, n)),
        "3d3d": ((groups, 5, k), (groups, k, n)),
    }
    a_shape, b_shape = shapes[layout]
    a, b = torch.ones(a_shape), torch.ones(b_shape)
    if layout == "3d3d":
        from torch.utils.flop_counter import FlopCounterMode

        with FlopCounterMode(display=False) as counter:
            torch.bmm(a, b)
        expected = int(counter.get_total_flops())
    else:
        expected = _mm_loop_flops(a, b, sizes, layout)
    assert grouped_mm_flops(a_shape, b_shape) == expected


@pytest.mark.trace
@pytest.mark.parametrize(
    ("name", "weights"),
    # bf16 Mixtral and DeepSeek-V2 generations: tests/test_kv_trace.py
    [("qwen2_moe", "bf16"), *((name, "fp32") for name in MOE)],
)
def test_generation_flops_of_moe_match_analytic(name: str, weights: str) -> None:
    """Prefill + 3 decode steps: trace FLOPs equal the analytic count, experts included, on
    both expert paths (bf16: ``torch._grouped_mm``; fp32: transformers' fallback op)."""
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from memplan.trace.inference import trace_inference

    raw = CONFIGS[name]
    spec = spec_from_config(dict(raw), source=name)
    setup = InferenceSetup(batch=2, prompt_len=12, gen_len=4, weights=weights)
    traced = trace_inference(dict(raw), setup).scalars["flops"]
    common = dict(batch=2, convention="matmul", logits="last")
    total = forward_flops_item(spec, q_len=12, **common).total
    total += sum(
        forward_flops_item(spec, q_len=1, past_len=12 + s, **common).total for s in range(3)
    )
    assert traced == total


@pytest.mark.trace
@pytest.mark.parametrize("name", MOE)
def test_training_flops_of_moe_match_analytic(name: str) -> None:
    """A training step: backward = 2 x forward for every matmul, grouped ones included. The
    fused attention backward also recomputes ``Q K^T`` (``flop_counter``'s
    ``sdpa_backward_flop_count``: 2.5 x the forward when q/k and v head dims are equal), hence
    the extra ``Q K^T`` share of the attention core."""
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from memplan.trace.training import trace_training

    raw = CONFIGS[name]
    spec = spec_from_config(dict(raw), source=name)
    setup = TrainingSetup(batch=2, seq=12, precision=Precision.BF16)
    traced = trace_training(dict(raw), setup).scalars["flops"]
    forward = forward_flops_item(spec, batch=2, q_len=12, convention="matmul")
    core = forward.find("layers/attention_core").total
    d_qk, d_v = (spec.mla.qk_head_dim, spec.mla.v_head_dim) if spec.mla else (spec.head_dim,) * 2
    assert core > 0
    assert traced == 3 * forward.total + core * d_qk // (d_qk + d_v)
