"""The analytic KV cache against the trace engine's inference mode (fake CUDA tensors).

The trace rounds every CUDA storage up to 512 B as the caching allocator does; its
``kv_cache`` line holds the K/V tensors (the cache layers' int64 counters are not in it).
Setups with ``gen_len=2`` put the peak at the end of the prefill, where sliding layers of a
DynamicCache still hold the whole prompt.
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
def test_prefill_kv_cache_matches_trace(
    name: str, attention: str, weights: str, width: int, cache: str
) -> None:
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from memplan.trace.inference import trace_inference

    raw = CONFIGS[name]
    prompt, gen = 12, 2
    setup = InferenceSetup(
        batch=2, prompt_len=prompt, gen_len=gen, weights=weights, cache=cache, attention=attention
    )
    report = trace_inference(dict(raw), setup)
    ours = kv_cache_item(
        _spec(name, raw),
        batch=2,
        n_tokens=prompt,
        dtype_bytes=width,
        cache=cache,
        decoded=False,
        max_cache_len=prompt + gen,
        round_to=512,
    )
    expected = ours.total - ours.get("cache_counters")
    assert report.breakdown.get("kv_cache") == expected
