"""KV cache bytes: memplan's formulas against the real transformers caches on tiny CPU models.

Runs a prefill and decode steps with ``DynamicCache(config=...)`` and ``StaticCache`` and sums
the storages the cache layers hold (and the views they keep), exactly.
"""

from __future__ import annotations

from typing import Any

import pytest

from memplan.formulas.kv_cache import (
    cached_tokens,
    kv_cache_bytes,
    kv_cache_item,
    kv_dtype_bytes,
    kv_elements_per_token_per_layer,
)
from memplan.specs.model import AttentionType, MlaSpec, ModelSpec

BASE = dict(
    vocab_size=128,
    hidden_size=64,
    intermediate_size=96,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=256,
)

CONFIGS: dict[str, dict[str, Any]] = {
    "llama": dict(model_type="llama", **BASE),
    "qwen2": dict(model_type="qwen2", **BASE),
    "mistral": dict(model_type="mistral", sliding_window=8, **BASE),
    "gemma2": dict(
        model_type="gemma2",
        head_dim=16,
        sliding_window=8,
        layer_types=["sliding_attention", "full_attention"] * 2,
        **BASE,
    ),
    "mixtral": dict(model_type="mixtral", num_local_experts=4, num_experts_per_tok=2, **BASE),
    "deepseek_v2": dict(
        model_type="deepseek_v2",
        kv_lora_rank=32,
        q_lora_rank=None,
        qk_nope_head_dim=16,
        qk_rope_head_dim=8,
        v_head_dim=16,
        n_routed_experts=4,
        num_experts_per_tok=2,
        moe_intermediate_size=32,
        n_shared_experts=1,
        first_k_dense_replace=1,
        **{**BASE, "num_key_value_heads": 4},
    ),
}


def _spec(name: str, raw: dict[str, Any]) -> ModelSpec:
    """A hand-built spec holding only what the KV cache depends on."""
    n_layers = raw["num_hidden_layers"]
    head_dim = raw.get("head_dim", raw["hidden_size"] // raw["num_attention_heads"])
    layer_types = tuple(AttentionType(t) for t in raw.get("layer_types", ()))
    mla = None
    if "kv_lora_rank" in raw:
        mla = MlaSpec(
            q_lora_rank=raw["q_lora_rank"],
            kv_lora_rank=raw["kv_lora_rank"],
            qk_nope_head_dim=raw["qk_nope_head_dim"],
            qk_rope_head_dim=raw["qk_rope_head_dim"],
            v_head_dim=raw["v_head_dim"],
        )
    return ModelSpec(
        name=name,
        model_type=raw["model_type"],
        vocab_size=raw["vocab_size"],
        hidden_size=raw["hidden_size"],
        n_layers=n_layers,
        n_heads=raw["num_attention_heads"],
        n_kv_heads=raw["num_key_value_heads"],
        head_dim=head_dim,
        intermediate_size=raw["intermediate_size"],
        sliding_window=raw.get("sliding_window"),
        layer_types=layer_types,
        mla=mla,
    )


def _cache_bytes(cache: Any) -> tuple[int, int]:
    """(storage bytes, view bytes) of every tensor the cache layers keep."""
    import torch

    storages: dict[int, int] = {}
    views = 0
    for layer in cache.layers:
        for name, value in vars(layer).items():
            if isinstance(value, torch.Tensor):
                storage = value.untyped_storage()
                storages[storage.data_ptr() or id(storage)] = storage.nbytes()
                if name in ("keys", "values"):
                    views += value.nbytes
    return sum(storages.values()), views


def _model(raw: dict[str, Any]) -> Any:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.for_model(**raw)
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()


@pytest.mark.trace
@pytest.mark.parametrize("name", sorted(CONFIGS))
@pytest.mark.parametrize("prompt", [5, 12])
def test_dynamic_cache_bytes_exact(name: str, prompt: int) -> None:
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    raw = CONFIGS[name]
    model = _model(raw)
    spec = _spec(name, raw)
    batch, width = 2, 4
    cache = transformers.DynamicCache(config=model.config)
    ids = torch.randint(0, raw["vocab_size"], (batch, prompt))
    with torch.no_grad():
        out = model(input_ids=ids, past_key_values=cache, use_cache=True)
        held, views = _cache_bytes(out.past_key_values)
        assert held == kv_cache_bytes(
            spec, batch=batch, n_tokens=prompt, dtype_bytes=width, decoded=False
        )
        assert (
            views
            == kv_cache_item(
                spec, batch=batch, n_tokens=prompt, dtype_bytes=width, views=True
            ).total
        )
        nxt = torch.randint(0, raw["vocab_size"], (batch, 1))
        for step in range(1, 4):
            out = model(input_ids=nxt, past_key_values=out.past_key_values, use_cache=True)
            held, views = _cache_bytes(out.past_key_values)
            n = prompt + step
            assert held == kv_cache_bytes(spec, batch=batch, n_tokens=n, dtype_bytes=width)
            assert (
                views
                == kv_cache_item(spec, batch=batch, n_tokens=n, dtype_bytes=width, views=True).total
            )


@pytest.mark.trace
@pytest.mark.parametrize("name", ["llama", "gemma2", "deepseek_v2"])
def test_static_cache_bytes_exact(name: str) -> None:
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    raw = CONFIGS[name]
    model = _model(raw)
    spec = _spec(name, raw)
    batch, prompt, max_len = 2, 12, 20
    cache = transformers.StaticCache(config=model.config, max_cache_len=max_len)
    ids = torch.randint(0, raw["vocab_size"], (batch, prompt))
    with torch.no_grad():
        model(input_ids=ids, past_key_values=cache, use_cache=True)
    held, _ = _cache_bytes(cache)
    assert held == kv_cache_bytes(
        spec, batch=batch, n_tokens=prompt, dtype_bytes=4, cache="static", max_cache_len=max_len
    )


def test_per_token_widths() -> None:
    spec = _spec("llama", CONFIGS["llama"])
    assert kv_elements_per_token_per_layer(spec) == 2 * 2 * 16
    mla = _spec("deepseek_v2", CONFIGS["deepseek_v2"])
    assert kv_elements_per_token_per_layer(mla) == 32 + 8
    assert kv_dtype_bytes("auto", "bf16") == 2
    assert kv_dtype_bytes("fp8") == 1


def test_window_caps() -> None:
    assert cached_tokens(100, 8) == 8
    assert cached_tokens(100, 8, decoded=False) == 100
    assert cached_tokens(100, 8, views=True) == 7
    assert cached_tokens(5, 8) == 5
    assert cached_tokens(5, None, cache="static", max_cache_len=20) == 20
    assert cached_tokens(5, 8, cache="static", max_cache_len=20) == 8


def test_llama2_7b_kv_per_token() -> None:
    """Llama-2-7B: 2 x 32 layers x 32 heads x 128 x 2 B = 524,288 B (0.5 MiB) per token."""
    spec = ModelSpec(
        name="llama-2-7b",
        model_type="llama",
        vocab_size=32000,
        hidden_size=4096,
        n_layers=32,
        n_heads=32,
        n_kv_heads=32,
        head_dim=128,
        intermediate_size=11008,
    )
    assert kv_cache_bytes(spec, batch=1, n_tokens=1, dtype_bytes=2) == 524_288
