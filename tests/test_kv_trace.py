"""The analytic KV cache against the trace engine's inference mode (fake CUDA tensors).

The trace rounds every CUDA storage up to 512 B as the caching allocator does; its
``kv_cache`` line holds the K/V tensors and the cache layers' int64 counters.
A 12-token prompt with ``gen_len=2`` puts the peak at the end of the prefill, where sliding
layers of a DynamicCache still hold the whole prompt; a 6-token prompt with ``gen_len=20``
ends with ``6 + 19`` tokens cached (sliding layers capped); the trace's ``kv_cache_bytes``
is the cache after the last step. (A decode-phase peak can fall inside a ``torch.cat`` of
the cache, with one layer's old and new tensors both alive; that transient is not compared.)
"""

from __future__ import annotations

import pytest

from memplan.formulas.kv_cache import kv_cache_item
from memplan.specs.inference import InferenceSetup
from test_kv_cache_exact import CONFIGS, _spec

CASES = [
    ("llama", "sdpa", "fp32", 4),
    ("qwen2", "sdpa", "bf16", 2),
    ("mistral", "sdpa", "bf16", 2),
    ("gemma2", "eager", "fp32", 4),
    ("mixtral", "sdpa", "bf16", 2),
    ("deepseek_v2", "sdpa", "bf16", 2),
]


@pytest.mark.trace
@pytest.mark.parametrize(("name", "attention", "weights", "width"), CASES)
@pytest.mark.parametrize("cache", ["dynamic", "static"])
@pytest.mark.parametrize(("prompt", "gen"), [(12, 2), (6, 20)])
def test_kv_cache_matches_trace(
    name: str, attention: str, weights: str, width: int, cache: str, prompt: int, gen: int
) -> None:
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from memplan.trace.inference import trace_inference

    raw = CONFIGS[name]
    setup = InferenceSetup(
        batch=2, prompt_len=prompt, gen_len=gen, weights=weights, cache=cache, attention=attention
    )
    report = trace_inference(dict(raw), setup)
    spec = _spec(name, raw)
    common = dict(batch=2, dtype_bytes=width, cache=cache, max_cache_len=prompt + gen)
    # the cache after the last step (storages of keys and values, as the trace sums them)
    end = kv_cache_item(spec, n_tokens=prompt + gen - 1, decoded=True, **common)
    assert report.scalars["kv_cache_bytes"] == end.total
    assert gen != 2 or report.scalars["peak_phase"] == "prefill"
    if report.scalars["peak_phase"] == "prefill":
        # the kv_cache line at the peak, CUDA storages rounded up to 512 B
        ours = kv_cache_item(spec, n_tokens=prompt, decoded=False, round_to=512, **common)
        assert report.breakdown.get("kv_cache") == ours.total


@pytest.mark.trace
@pytest.mark.parametrize(("name", "attention", "weights", "width"), CASES)
def test_generation_flops_match_trace(name: str, attention: str, weights: str, width: int) -> None:
    """The trace's FLOPs over a prefill and 3 decode steps: every matmul as run (the
    ``matmul`` convention: emulated CUDA attention kernels are counted without causal
    halving), logits at the last position only; MoE experts (``aten._grouped_mm``) counted by
    ``memplan.trace.flops``."""
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from memplan.formulas.flops import forward_flops_item
    from memplan.trace.inference import trace_inference
    from test_flops_exact import _moe_spec

    raw = CONFIGS[name]
    spec = _moe_spec(name, raw)
    prompt, gen = 12, 4
    setup = InferenceSetup(
        batch=2, prompt_len=prompt, gen_len=gen, weights=weights, attention=attention
    )
    traced = trace_inference(dict(raw), setup).scalars["flops"]
    items = [forward_flops_item(spec, batch=2, q_len=prompt, convention="matmul", logits="last")]
    items += [
        forward_flops_item(
            spec, batch=2, q_len=1, past_len=prompt + step, convention="matmul", logits="last"
        )
        for step in range(gen - 1)
    ]
    assert traced == sum(item.total for item in items)
