"""Matmul FLOPs: memplan's per-component count against torch.utils.flop_counter on tiny models."""

from __future__ import annotations

from typing import Any

import pytest

from memplan.formulas.flops import (
    attention_pairs,
    forward_flops,
    forward_flops_item,
    seed004_forward_flops,
    training_step_flops,
)
from memplan.specs.model import MlpKind, ModelSpec, MoeSpec, PositionKind
from test_kv_cache_exact import CONFIGS, _spec


def _moe_spec(name: str, raw: dict[str, Any]) -> ModelSpec:
    """The KV test's spec plus the MLP/MoE fields FLOPs depend on."""
    import dataclasses

    spec = _spec(name, raw)
    moe = None
    if name == "mixtral":
        moe = MoeSpec(n_experts=4, top_k=2, expert_intermediate_size=raw["intermediate_size"])
    if name == "deepseek_v2":
        moe = MoeSpec(
            n_experts=4,
            top_k=2,
            expert_intermediate_size=32,
            n_shared_experts=1,
            shared_intermediate_size=32,
            first_dense_layers=1,
        )
    return dataclasses.replace(spec, moe=moe)


def _counted(raw: dict[str, Any], batch: int, seq: int, attn: str, past: int = 0) -> int:
    import torch
    from torch.utils.flop_counter import FlopCounterMode
    from transformers import AutoConfig, AutoModelForCausalLM, DynamicCache

    config = AutoConfig.for_model(**raw)
    config._attn_implementation = attn
    # the default grouped_mm experts run torch._grouped_mm, which FlopCounterMode counts as zero
    config._experts_implementation = "eager"
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32, attn_implementation=attn)
    model.eval()
    cache = DynamicCache(config=model.config)
    with torch.no_grad():
        if past:
            model(input_ids=torch.randint(0, 128, (batch, past)), past_key_values=cache)
        ids = torch.randint(0, 128, (batch, seq))
        counter = FlopCounterMode(display=False)
        with counter:
            model(input_ids=ids, past_key_values=cache, use_cache=True)
    return int(counter.get_total_flops())


@pytest.mark.trace
@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_forward_flops_match_flop_counter_eager(name: str) -> None:
    """Eager attention: torch counts the core's full matmuls (our ``matmul`` convention)."""
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    raw = CONFIGS[name]
    spec = _moe_spec(name, raw)
    counted = _counted(raw, batch=2, seq=12, attn="eager")
    ours = forward_flops_item(spec, batch=2, q_len=12, convention="matmul")
    assert counted == ours.total, [(p, i.total) for p, i in ours.flatten()]


@pytest.mark.trace
@pytest.mark.parametrize("name", ["llama", "gemma2", "deepseek_v2"])
def test_decode_flops_match_flop_counter_eager(name: str) -> None:
    """One decode step after a 12-token prefill: sliding layers see at most window - 1 + 1 keys."""
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    raw = CONFIGS[name]
    spec = _moe_spec(name, raw)
    counted = _counted(raw, batch=2, seq=1, attn="eager", past=12)
    ours = forward_flops_item(spec, batch=2, q_len=1, past_len=12, convention="matmul")
    assert counted == ours.total


@pytest.mark.trace
def test_sdpa_on_cpu_counts_no_attention_core() -> None:
    """CPU sdpa runs a flash kernel that FlopCounterMode counts as zero: add the core back."""
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    raw = CONFIGS["llama"]
    spec = _moe_spec("llama", raw)
    counted = _counted(raw, batch=2, seq=12, attn="sdpa")
    ours = forward_flops_item(spec, batch=2, q_len=12, convention="matmul")
    assert counted + ours.find("layers/attention_core").total == ours.total


def test_causal_pairs() -> None:
    assert attention_pairs(4, 0, None, "causal", cached=False) == 10
    assert attention_pairs(4, 0, None, "matmul", cached=False) == 16
    assert attention_pairs(1, 12, None, "causal", cached=True) == 13
    assert attention_pairs(6, 0, 3, "causal", cached=False) == 1 + 2 + 3 + 3 + 3 + 3
    assert attention_pairs(1, 12, 8, "matmul", cached=True) == 8


GPT2_XL = ModelSpec(
    name="gpt2-xl",
    model_type="gpt2",
    vocab_size=50257,
    hidden_size=1600,
    n_layers=48,
    n_heads=25,
    n_kv_heads=25,
    head_dim=64,
    intermediate_size=6400,
    mlp_kind=MlpKind.PLAIN,
    position=PositionKind.LEARNED,
    tie_word_embeddings=True,
    max_position_embeddings=1024,
)


def test_seed004_formula_gpt2_xl() -> None:
    """Seed 004: 9.05969664e10 x batch FLOPs per forward for GPT-2 XL at context 1024."""
    assert seed004_forward_flops(GPT2_XL, batch=1, seq=1024) == 90_596_966_400
    assert seed004_forward_flops(GPT2_XL, batch=1024, seq=1024) == 92_771_293_593_600


def test_gpt2_xl_exact_forward() -> None:
    """memplan's count: 48 layers of 4d^2 projections and a 2-matrix MLP, core, lm_head."""
    d, s, v, ff = 1600, 1024, 50257, 6400
    layer = 2 * s * (4 * d * d + 2 * d * ff) + 2 * 25 * (s * s) * (64 + 64)
    expected = 48 * layer + 2 * s * d * v
    assert forward_flops(GPT2_XL, batch=1, seq=s, convention="matmul") == expected
    model, hardware = training_step_flops(
        GPT2_XL, batch=1, seq=s, convention="matmul", recompute=True
    )
    assert model == 3 * expected and hardware == 4 * expected


def test_sliding_causal_pairs_closed_form_matches_the_sum() -> None:
    for past in range(0, 10):
        for q_len in range(1, 10):
            for window in range(1, 8):
                expected = sum(min(p + 1, window) for p in range(past, past + q_len))
                assert attention_pairs(q_len, past, window, "causal", cached=past > 0) == expected
