"""config.json -> ModelSpec: family defaults, and clear errors for bad configs."""

from __future__ import annotations

from typing import Any

import pytest

from memplan.errors import ConfigError
from memplan.formulas.params import total_params
from memplan.specs.hf import SUPPORTED_MODEL_TYPES, UnsupportedModelTypeError, spec_from_config
from memplan.specs.manual import manual_spec
from memplan.specs.model import MlpKind, NormKind, PositionKind, QkNorm

LLAMA: dict[str, Any] = {
    "model_type": "llama",
    "vocab_size": 32000,
    "hidden_size": 4096,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 32,
    "intermediate_size": 11008,
}


def test_twenty_six_families_supported() -> None:
    new = {"gpt_oss", "llama4_text", "qwen3_next", "gemma3", "llama4", "mistral3"}
    assert len(SUPPORTED_MODEL_TYPES) == 26 and new <= set(SUPPORTED_MODEL_TYPES)


def test_llama_defaults() -> None:
    spec = spec_from_config(LLAMA)
    assert (spec.head_dim, spec.n_kv_heads, spec.tie_word_embeddings) == (128, 32, False)
    assert spec.mlp_kind is MlpKind.GATED and not spec.qkv_bias
    assert total_params(spec) == 6_738_415_616


def test_family_defaults_from_transformers_config_classes() -> None:
    # Gemma's head_dim defaults to 256 and its embeddings are tied
    gemma = spec_from_config({**LLAMA, "model_type": "gemma", "num_key_value_heads": 1})
    assert gemma.head_dim == 256 and gemma.tie_word_embeddings
    # Qwen3 defaults to head_dim 128 and per-head q/k norms
    qwen3 = spec_from_config({**LLAMA, "model_type": "qwen3", "hidden_size": 1024})
    assert qwen3.head_dim == 128 and qwen3.qk_norm is QkNorm.PER_HEAD
    # OLMo's LayerNorm has no parameters; OLMo 2 norms all of q and all of k
    assert spec_from_config({**LLAMA, "model_type": "olmo"}).norm_kind is (
        NormKind.LAYERNORM_NO_AFFINE
    )
    assert spec_from_config({**LLAMA, "model_type": "olmo2"}).qk_norm is QkNorm.FULL


def test_gpt2_names_and_learned_positions() -> None:
    spec = spec_from_config(
        {"model_type": "gpt2", "vocab_size": 50257, "n_embd": 768, "n_layer": 12, "n_head": 12}
    )
    assert spec.position is PositionKind.LEARNED and spec.max_position_embeddings == 1024
    assert spec.intermediate_size == 4 * 768 and spec.tie_word_embeddings
    assert total_params(spec) == 124_439_808


def test_falcon_7b_multi_query_single_norm() -> None:
    spec = spec_from_config(
        {
            "model_type": "falcon",
            "vocab_size": 65024,
            "hidden_size": 4544,
            "num_hidden_layers": 32,
            "num_attention_heads": 71,
        }
    )
    assert spec.n_kv_heads == 1 and spec.n_layer_norms == 1
    assert total_params(spec) == 6_921_720_704


def test_deepseek_null_q_lora_rank_is_a_plain_q_proj() -> None:
    cfg = {**LLAMA, "model_type": "deepseek_v2", "q_lora_rank": None, "num_experts_per_tok": 2}
    assert spec_from_config(cfg).mla.q_lora_rank is None  # type: ignore[union-attr]


def test_qwen2_moe_layer_pattern() -> None:
    cfg = {
        **LLAMA,
        "model_type": "qwen2_moe",
        "num_hidden_layers": 6,
        "decoder_sparse_step": 2,
        "mlp_only_layers": [3],
    }
    spec = spec_from_config(cfg)
    assert [spec.is_moe_layer(i) for i in range(6)] == [False, True, False, False, False, True]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"hidden_size": 4000, "num_attention_heads": 48}, "not divisible"),
        ({"num_key_value_heads": 5}, "must divide"),
        ({"num_hidden_layers": 0}, "must be positive"),
        ({"vocab_size": -3}, "must be positive"),
        ({"hidden_size": "big"}, "must be an integer"),
    ],
)
def test_inconsistent_dimensions(change: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        spec_from_config({**LLAMA, **change})


def test_missing_required_field() -> None:
    config = dict(LLAMA)
    del config["hidden_size"]
    with pytest.raises(ConfigError, match="no 'hidden_size'"):
        spec_from_config(config)


def test_unsupported_model_type_names_supported_ones() -> None:
    with pytest.raises(UnsupportedModelTypeError, match="supported: llama, mistral") as info:
        spec_from_config({**LLAMA, "model_type": "mamba"})
    assert info.value.config["model_type"] == "mamba"


def test_missing_model_type() -> None:
    with pytest.raises(ConfigError, match="no 'model_type'"):
        spec_from_config({k: v for k, v in LLAMA.items() if k != "model_type"})


def test_manual_spec_matches_config() -> None:
    spec = manual_spec(hidden=4096, layers=32, heads=32, vocab=32000, intermediate=11008)
    assert total_params(spec) == 6_738_415_616
    gqa = manual_spec(
        hidden=4096, layers=32, heads=32, kv_heads=8, vocab=128256, intermediate=14336
    )
    assert total_params(gqa) == 8_030_261_248  # Llama-3-8B


def test_manual_spec_errors() -> None:
    with pytest.raises(ConfigError, match="not divisible"):
        manual_spec(hidden=100, layers=2, heads=3, vocab=10, intermediate=64)
    with pytest.raises(ConfigError, match="give --intermediate"):
        manual_spec(hidden=64, layers=2, heads=4, vocab=10)
    with pytest.raises(ConfigError, match="positive integer"):
        manual_spec(hidden=64, layers=0, heads=4, vocab=10, intermediate=64)
