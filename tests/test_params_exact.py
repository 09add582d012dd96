"""memplan's counts equal transformers' own: every catalog model, and random configs per family.

The oracle is ``sum(p.numel())`` over the unique parameters of the model transformers builds
on the meta device (``memplan.trace.meta``); buffers are checked against ``named_buffers()``.
"""

from __future__ import annotations

import random
from typing import Any

import pytest

from memplan.catalog import catalog_config, list_models
from memplan.formulas.buffers import buffer_bytes
from memplan.formulas.params import total_params
from memplan.specs.hf import SUPPORTED_MODEL_TYPES, spec_from_config

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from memplan.trace.meta import build_meta_model  # noqa: E402

pytestmark = pytest.mark.trace


def _meta_counts(config: dict[str, Any]) -> tuple[int, int]:
    model = build_meta_model(config)
    n_params = sum(p.numel() for p in model.parameters())
    n_buffer_bytes = sum(b.numel() * b.element_size() for b in model.buffers())
    return n_params, n_buffer_bytes


@pytest.mark.parametrize("entry", list_models(), ids=lambda e: e.id)
def test_catalog_model_count_equals_meta_build(entry: Any) -> None:
    config = catalog_config(entry)
    spec = spec_from_config(config, name=entry.id)
    n_params, n_buffer_bytes = _meta_counts(config)
    assert total_params(spec) == n_params
    assert buffer_bytes(spec) == n_buffer_bytes


def test_catalog_covers_every_supported_family() -> None:
    types = {catalog_config(entry).get("model_type") for entry in list_models()}
    missing = set(SUPPORTED_MODEL_TYPES) - types
    assert not missing, f"catalog has no model of {sorted(missing)}"


# Random size-reduced configs ---------------------------------------------------------------
def _dims(rng: random.Random) -> dict[str, Any]:
    heads = rng.choice([2, 4, 6, 8])
    kv = rng.choice([d for d in range(1, heads + 1) if heads % d == 0])
    hd = rng.choice([8, 16])
    out: dict[str, Any] = {
        "vocab_size": rng.randrange(200, 600),
        "hidden_size": heads * hd,
        "num_hidden_layers": rng.randint(1, 4),
        "num_attention_heads": heads,
        "num_key_value_heads": kv,
        "intermediate_size": 8 * rng.randint(4, 24),
        "tie_word_embeddings": rng.random() < 0.5,
        "pad_token_id": None,
        "bos_token_id": None,
        "eos_token_id": None,
    }
    if rng.random() < 0.4:
        out["head_dim"] = rng.choice([8, 12, 16, 24])
    return out


def _moe(rng: random.Random, layers: int) -> dict[str, Any]:
    return {
        "num_experts": rng.randint(2, 5),
        "num_experts_per_tok": 1,
        "moe_intermediate_size": 8 * rng.randint(2, 6),
        "decoder_sparse_step": rng.choice([1, 1, 2]),
        "mlp_only_layers": sorted(rng.sample(range(layers), rng.randint(0, layers))),
    }


def _family_config(model_type: str, rng: random.Random) -> dict[str, Any]:
    cfg = {"model_type": model_type, **_dims(rng)}
    flip = rng.random() < 0.5
    if model_type in ("llama", "olmo", "olmo2", "gemma", "gemma2", "gemma3_text", "qwen3"):
        cfg["attention_bias"] = flip
    if model_type == "llama":
        cfg["mlp_bias"] = rng.random() < 0.5
    if model_type in ("gemma", "gemma2", "gemma3_text", "qwen3", "qwen3_moe"):
        cfg["head_dim"] = rng.choice([8, 16, 24])
    if model_type == "mixtral":
        cfg.update(num_local_experts=rng.randint(2, 5), num_experts_per_tok=1)
    if model_type in ("qwen2_moe", "qwen3_moe"):
        cfg.update(_moe(rng, cfg["num_hidden_layers"]))
    if model_type == "qwen2_moe":
        cfg.update(shared_expert_intermediate_size=8 * rng.randint(2, 8), qkv_bias=flip)
    if model_type == "starcoder2":
        cfg["use_bias"] = flip
    if model_type == "phi3" and flip:
        cfg["partial_rotary_factor"] = 0.5
    if model_type == "gpt_neox":
        cfg.update(attention_bias=flip, use_parallel_residual=rng.random() < 0.5)
        cfg.update(rotary_pct=rng.choice([0.25, 0.5, 1.0]))
        cfg.pop("head_dim", None)
    return cfg


def _gpt_config(model_type: str, rng: random.Random) -> dict[str, Any]:
    heads = rng.choice([2, 4, 8])
    cfg: dict[str, Any] = {
        "model_type": model_type,
        "vocab_size": rng.randrange(200, 600),
        "n_embd": heads * rng.choice([8, 16]),
        "n_layer": rng.randint(1, 3),
        "n_head": heads,
        "n_positions": rng.choice([32, 64]),
        "tie_word_embeddings": rng.random() < 0.5,
    }
    if rng.random() < 0.5:
        cfg["n_inner"] = 8 * rng.randint(4, 20)
    if model_type == "gpt_bigcode":
        cfg["multi_query"] = rng.random() < 0.5
    return cfg


def _falcon_config(rng: random.Random) -> dict[str, Any]:
    heads = rng.choice([2, 4, 8])
    kv = rng.choice([d for d in range(1, heads + 1) if heads % d == 0])
    new_arch = rng.random() < 0.5
    cfg: dict[str, Any] = {
        "model_type": "falcon",
        "vocab_size": rng.randrange(200, 600),
        "hidden_size": heads * 8,
        "num_hidden_layers": rng.randint(1, 3),
        "num_attention_heads": heads,
        "num_kv_heads": kv,
        "new_decoder_architecture": new_arch,
        "multi_query": rng.random() < 0.5,
        "parallel_attn": rng.random() < 0.7,
        "bias": rng.random() < 0.5,
        "alibi": rng.random() < 0.3,
        "tie_word_embeddings": rng.random() < 0.5,
        "num_ln_in_parallel_attn": rng.choice([None, 1, 2]),
    }
    if rng.random() < 0.5:
        cfg["ffn_hidden_size"] = 8 * rng.randint(4, 16)
    return cfg


def _deepseek_config(model_type: str, rng: random.Random) -> dict[str, Any]:
    cfg = {"model_type": model_type, **_dims(rng)}
    cfg.pop("head_dim", None)
    layers = cfg["num_hidden_layers"]
    cfg.update(
        q_lora_rank=rng.choice([None, 16, 24]),
        kv_lora_rank=rng.choice([8, 16]),
        qk_nope_head_dim=rng.choice([4, 8]),
        qk_rope_head_dim=rng.choice([2, 4]),
        v_head_dim=rng.choice([4, 8]),
        n_routed_experts=rng.choice([2, 4]),
        num_experts_per_tok=1,
        moe_intermediate_size=8 * rng.randint(1, 4),
        n_shared_experts=rng.choice([1, 2]),
        first_k_dense_replace=rng.randint(0, layers),
        attention_bias=rng.random() < 0.5,
        n_group=1,
        topk_group=1,
    )
    return cfg


def _random_config(model_type: str, rng: random.Random) -> dict[str, Any]:
    if model_type in ("gpt2", "gpt_bigcode"):
        return _gpt_config(model_type, rng)
    if model_type == "falcon":
        return _falcon_config(rng)
    if model_type.startswith("deepseek"):
        return _deepseek_config(model_type, rng)
    return _family_config(model_type, rng)


@pytest.mark.parametrize("model_type", SUPPORTED_MODEL_TYPES)
def test_random_configs_count_exactly(model_type: str) -> None:
    rng = random.Random(f"memplan-{model_type}")
    for _ in range(6):
        config = _random_config(model_type, rng)
        spec = spec_from_config(dict(config))
        n_params, n_buffer_bytes = _meta_counts(config)
        assert total_params(spec) == n_params, config
        assert buffer_bytes(spec) == n_buffer_bytes, config
