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
    types = set()
    for entry in list_models():
        config = catalog_config(entry)
        types.add(config.get("model_type"))
        text = config.get("text_config")
        if isinstance(text, dict):  # a multimodal checkpoint's text model (llama4_text)
            types.add(text.get("model_type"))
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


def _gpt_oss_config(rng: random.Random) -> dict[str, Any]:
    cfg = {"model_type": "gpt_oss", **_dims(rng)}
    cfg.update(
        head_dim=rng.choice([8, 16]),
        num_local_experts=rng.randint(2, 5),
        num_experts_per_tok=1,
        attention_bias=rng.random() < 0.7,
        sliding_window=rng.choice([4, 8, 128]),
    )
    return cfg


def _llama4_text_config(rng: random.Random) -> dict[str, Any]:
    cfg = {"model_type": "llama4_text", **_dims(rng)}
    layers = cfg["num_hidden_layers"]
    cfg.update(
        head_dim=rng.choice([8, 16]),
        intermediate_size_mlp=8 * rng.randint(4, 24),
        num_local_experts=rng.randint(2, 5),
        num_experts_per_tok=1,
        attention_bias=rng.random() < 0.5,
        use_qk_norm=rng.random() < 0.5,
        no_rope_layer_interval=rng.choice([2, 4]),
        attention_chunk_size=rng.choice([8, 16]),
    )
    if rng.random() < 0.5:
        cfg["interleave_moe_layer_step"] = rng.choice([1, 2])
    else:
        cfg["moe_layers"] = sorted(rng.sample(range(layers), rng.randint(0, layers)))
    if rng.random() < 0.3:
        cfg["no_rope_layers"] = [rng.choice([0, 1]) for _ in range(layers)]
    return cfg


def _qwen3_next_config(rng: random.Random) -> dict[str, Any]:
    cfg = {"model_type": "qwen3_next", **_dims(rng)}
    layers = cfg["num_hidden_layers"]
    k_heads = rng.choice([1, 2])
    cfg.update(
        head_dim=rng.choice([8, 16]),
        attention_bias=rng.random() < 0.5,
        linear_num_key_heads=k_heads,
        linear_num_value_heads=k_heads * rng.choice([1, 2]),
        linear_key_head_dim=rng.choice([4, 8]),
        linear_value_head_dim=rng.choice([4, 8]),
        linear_conv_kernel_dim=rng.choice([2, 4]),
        full_attention_interval=rng.choice([2, 4]),
        num_experts=rng.choice([0, 2, 4]),
        num_experts_per_tok=1,
        moe_intermediate_size=8 * rng.randint(1, 4),
        shared_expert_intermediate_size=8 * rng.randint(1, 4),
        decoder_sparse_step=rng.choice([1, 2]),
        mlp_only_layers=sorted(rng.sample(range(layers), rng.randint(0, layers))),
        partial_rotary_factor=rng.choice([0.25, 0.5, 1.0]),
    )
    return cfg


def _vision_config(model_type: str, rng: random.Random) -> dict[str, Any]:
    heads = rng.choice([2, 4])
    vision: dict[str, Any] = {
        "hidden_size": heads * rng.choice([8, 16]),
        "intermediate_size": 8 * rng.randint(2, 8),
        "num_hidden_layers": rng.randint(1, 2),
        "num_attention_heads": heads,
        "patch_size": rng.choice([4, 8]),
        "image_size": rng.choice([16, 32]),
    }
    if model_type == "gemma3":
        vision.update(model_type="siglip_vision_model", vision_use_head=rng.random() < 0.5)
    elif model_type == "mistral3":
        vision.update(model_type="pixtral", head_dim=vision["hidden_size"] // heads)
    else:
        width = rng.choice([16, 32])
        vision.update(
            model_type="llama4_vision_model",
            vision_output_dim=width,
            projector_input_dim=width,
            projector_output_dim=width,
        )
    return vision


def _multimodal_config(model_type: str, rng: random.Random) -> dict[str, Any]:
    text_type = {"gemma3": "gemma3_text", "llama4": "llama4_text", "mistral3": "mistral"}
    text = _random_config(text_type[model_type], rng)
    cfg: dict[str, Any] = {
        "model_type": model_type,
        "text_config": text,
        "vision_config": _vision_config(model_type, rng),
    }
    if model_type == "gemma3":
        cfg["mm_tokens_per_image"] = rng.choice([1, 4])
    if model_type == "mistral3":
        cfg.update(
            spatial_merge_size=rng.choice([1, 2]),
            multimodal_projector_bias=rng.random() < 0.5,
            vision_feature_layer=rng.choice([-1, [-1, -2]]),
        )
    return cfg


def _random_config(model_type: str, rng: random.Random) -> dict[str, Any]:
    if model_type in ("gemma3", "llama4", "mistral3"):
        return _multimodal_config(model_type, rng)
    if model_type == "gpt_oss":
        return _gpt_oss_config(rng)
    if model_type == "llama4_text":
        return _llama4_text_config(rng)
    if model_type == "qwen3_next":
        return _qwen3_next_config(rng)
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
