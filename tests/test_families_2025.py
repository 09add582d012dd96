"""gpt-oss, Llama 4, Gemma 3 (multimodal), Mistral 3 and Qwen3-Next: catalog, parsers, published
counts and gpt-oss's MXFP4 weights (no torch; the meta-device counts are in
``test_params_exact.py``)."""

from __future__ import annotations

from math import ceil

import pytest

from memplan.catalog import resolve
from memplan.estimate.params import default_weight_format, params_report
from memplan.formulas.params import total_params
from memplan.formulas.vision import vision_params
from memplan.formulas.weights import weights_total_bytes
from memplan.specs.hf import spec_from_config
from memplan.specs.model import AttentionType, QkNorm
from memplan.specs.vision import VisionKind

# (Every published count, these included, is tests/test_published_params.py's.)


def test_qwen3_next_mtp_module_is_the_published_difference() -> None:
    from test_published_params import mtp_module_not_built

    spec = resolve("Qwen/Qwen3-Next-80B-A3B-Instruct")
    assert total_params(spec) == 79_674_391_296
    assert mtp_module_not_built(spec) == 81_324_862_720 - 79_674_391_296


def test_instruct_variants_resolve_with_their_own_context() -> None:
    scout = resolve("meta-llama/Llama-4-Scout-17B-16E-Instruct")
    assert scout.max_position_embeddings == 10_485_760
    assert resolve("llama-4-scout").max_position_embeddings == 262_144
    assert total_params(scout) == total_params(resolve("llama-4-scout"))
    for name in ("gemma-3-4b-it", "google/gemma-3-27b-it", "mistral-small-3.2"):
        assert resolve(name).vision is not None
    assert resolve("Qwen/Qwen3-Next-80B-A3B-Thinking").model_type == "qwen3_next"


# gpt-oss ---------------------------------------------------------------------------------------
def test_gpt_oss_layers_alternate_sliding_and_full_with_sinks() -> None:
    spec = resolve("openai/gpt-oss-20b")
    assert spec.layer_types[:2] == (AttentionType.SLIDING, AttentionType.FULL)
    assert spec.sliding_window == 128 and spec.attention_sinks
    assert spec.moe is not None and (spec.moe.n_experts, spec.moe.top_k) == (32, 4)
    assert spec.moe.router_bias_param and spec.moe.expert_bias
    tree = params_report(spec).breakdown
    assert tree.find("layers/attention/sinks").value == 24 * 64
    assert tree.find("layers/moe/router").value == 24 * (32 * 2880 + 32)


def test_gpt_oss_defaults_to_its_mxfp4_experts() -> None:
    """MXFP4 (OCP MX v1.0): per expert matrix (out, in), out * in / 32 blocks of 16 bytes of
    packed E2M1 values and one E8M0 scale byte each; every other tensor bf16."""
    spec = resolve("openai/gpt-oss-20b")
    assert default_weight_format(spec) == "mxfp4" and spec.dtype == "bfloat16"
    h, width, layers, experts = 2880, 2880, 24, 32
    matrices = [(2 * width, h), (h, width)]  # gate_up (out, in), down (out, in)
    packed = sum(out * ceil(n_in / 32) * (16 + 1) for out, n_in in matrices)
    expert_weights = sum(out * n_in for out, n_in in matrices)
    rest = total_params(spec) - layers * experts * expert_weights
    assert weights_total_bytes(spec, "mxfp4") == layers * experts * packed + 2 * rest
    assert "weights (mxfp4)" in params_report(spec).sections


# Llama 4 ---------------------------------------------------------------------------------------
def test_llama4_scout_nope_chunked_and_moe_layers() -> None:
    spec = resolve("meta-llama/Llama-4-Scout-17B-16E")
    assert spec.nope_layers == tuple(range(3, 48, 4))
    assert spec.layer_types[:4] == (AttentionType.CHUNKED,) * 3 + (AttentionType.FULL,)
    assert spec.attention_chunk_size == 8192 and spec.qk_norm is QkNorm.L2
    assert spec.attn_temperature_tuning and not spec.uses_rotary(3) and spec.uses_rotary(0)
    assert spec.moe is not None and spec.moe.all_experts_per_token
    assert all(spec.is_moe_layer(i) for i in range(48))
    assert spec.intermediate_size == 16384 and spec.moe.shared_intermediate_size == 8192


def test_llama4_maverick_interleaves_dense_and_moe() -> None:
    spec = resolve("meta-llama/Llama-4-Maverick-17B-128E")
    assert [spec.is_moe_layer(i) for i in range(4)] == [False, True, False, True]
    assert spec.qk_norm is QkNorm.NONE


def test_llama4_empty_no_rope_layers_means_the_interval() -> None:
    text = {"model_type": "llama4_text", "hidden_size": 64, "num_attention_heads": 4,
            "num_key_value_heads": 2, "head_dim": 16, "num_hidden_layers": 8,
            "intermediate_size": 32, "vocab_size": 100, "no_rope_layers": []}  # fmt: skip
    assert spec_from_config(text).nope_layers == (3, 7)


# Qwen3-Next ------------------------------------------------------------------------------------
def test_qwen3_next_three_linear_layers_per_full_one() -> None:
    spec = resolve("qwen3-next")
    linear = [i for i in range(48) if spec.is_linear_attention(i)]
    assert len(linear) == 36 and spec.n_attention_layers == 12
    assert spec.attention_type(3) is AttentionType.FULL and spec.attention_output_gate
    assert spec.q_proj_width == 2 * 16 * 256 and spec.rotary_dim == 64
    lin = spec.linear_attention
    assert lin is not None and (lin.key_dim, lin.value_dim, lin.conv_dim) == (2048, 4096, 8192)


# Multimodal ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("model_id", "kind", "tied"),
    [
        ("google/gemma-3-4b-pt", VisionKind.SIGLIP, True),
        ("meta-llama/Llama-4-Scout-17B-16E", VisionKind.LLAMA4, False),
        ("mistralai/Mistral-Small-3.1-24B-Instruct-2503", VisionKind.PIXTRAL, False),
    ],
)
def test_multimodal_text_model_and_vision_tower(
    model_id: str, kind: VisionKind, tied: bool
) -> None:
    spec = resolve(model_id)
    assert spec.vision is not None and spec.vision.kind is kind
    assert spec.tie_word_embeddings is tied
    tree = params_report(spec).breakdown
    vision = tree.find("vision_tower").total + tree.find("multi_modal_projector").total
    assert vision == vision_params(spec) > 0


def test_mistral3_ties_as_its_text_config_says() -> None:
    """Mistral3Config defaults the top-level flag to True; the checkpoint stores lm_head apart,
    and from_pretrained keeps it: memplan follows text_config (MistralConfig: untied)."""
    spec = resolve("mistral-small-3.1")
    assert not spec.tie_word_embeddings
    assert params_report(spec).breakdown.find("lm_head").value == 131072 * 5120


def test_multimodal_config_without_text_config_is_one_clear_error() -> None:
    from memplan.errors import ConfigError

    with pytest.raises(ConfigError, match="needs a text_config"):
        spec_from_config({"model_type": "gemma3"})


def test_qwen3_next_caches_states_not_keys_in_linear_layers() -> None:
    """12 softmax-attention layers cache K and V (2 KV heads x 256, bf16); each of the 36
    Gated DeltaNet layers keeps a conv state (batch, 2 x 2048 + 4096 channels, kernel 4) in
    bf16 and an fp32 recurrent state (batch, 32 value heads, 128, 128), whatever the length."""
    from memplan.formulas.kv_cache import kv_cache_item

    spec = resolve("Qwen/Qwen3-Next-80B-A3B-Instruct")
    one = kv_cache_item(spec, batch=1, n_tokens=1, dtype_bytes=2, linear_states=False)
    assert one.total == 12 * 2 * 2 * 256 * 2
    conv, recurrent = 8192 * 4 * 2, 32 * 128 * 128 * 4
    for tokens in (1, 1000):
        tree = kv_cache_item(spec, batch=1, n_tokens=tokens, dtype_bytes=2)
        assert tree.find("linear_attention_states").value == 36 * (conv + recurrent)
        assert tree.find("full_attention_layers").value == tokens * 12 * 2 * 2 * 256 * 2


@pytest.mark.parametrize(
    ("model_id", "per_token", "note"),
    [
        # 24 layers x 2 x 8 KV heads x 64 x 2 B; the sliding layers' counters do not grow
        ("openai/gpt-oss-20b", 24 * 2 * 8 * 64 * 2, "gpt_oss: the forward is replayed"),
        # only the 12 softmax-attention layers: 12 x 2 x 2 KV heads x 256 x 2 B
        ("Qwen/Qwen3-Next-80B-A3B-Instruct", 12 * 2 * 2 * 256 * 2, "linear attention not"),
    ],
)
def test_infer_runs_with_the_checkpoint_format(
    capsys: pytest.CaptureFixture[str], model_id: str, per_token: int, note: str
) -> None:
    """gpt-oss's default MXFP4 experts compute in bf16 (the command failed on the format)."""
    from cli_helpers import cli_json

    data = cli_json(capsys, ["infer", model_id, "--gpu", "H200", "--json"])
    assert data["kv_cache_bytes_per_token"] == per_token
    assert any(line.startswith(note) for line in data["notes"])


def test_train_names_the_linear_attention_it_does_not_model(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from cli_helpers import cli_json

    common = ["qwen3-next", "--seq", "512", "--gpu", "H100", "--json"]
    for argv in (["train", *common], ["time", *common, "--tokens", "1e9"]):
        data = cli_json(capsys, argv)
        assert any(
            line.startswith("linear attention not modelled: the 36") for line in data["notes"]
        )
