"""CUDA semantics of the trace on fake cpu tensors, checked against closed forms."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

from memplan.errors import SetupError
from memplan.specs.inference import InferenceSetup
from memplan.specs.training import (
    Attention,
    Checkpointing,
    Optimizer,
    Precision,
    TrainingSetup,
)
from memplan.trace.inference import trace_inference
from memplan.trace.training import trace_training

pytestmark = pytest.mark.trace

CONFIGS = json.loads((Path(__file__).parent / "data" / "trace_tiny_configs.json").read_text())
LLAMA = CONFIGS["llama"]


def _saved(report) -> dict[str, int]:  # type: ignore[no-untyped-def]
    return {c.key: int(c.total) for c in report.sections["saved_by_node"].children}


def test_cuda_dropout_saves_one_byte_masks() -> None:
    # GPT-2: embedding dropout + 2 residual dropouts per layer, each (B, S, H) bool
    report = trace_training(
        CONFIGS["gpt2"], TrainingSetup(batch=2, seq=32, precision=Precision.BF16, dropout=0.1)
    )
    assert _saved(report)["NativeDropoutBackward0.result1"] == (1 + 2 * 2) * 2 * 32 * 64


def test_mem_efficient_logsumexp_is_padded_to_32() -> None:
    setup = TrainingSetup(
        batch=2, seq=40, precision=Precision.BF16, attention=Attention.MEM_EFFICIENT
    )
    mha = {**LLAMA, "num_key_value_heads": LLAMA["num_attention_heads"]}
    saved = _saved(trace_training(mha, setup))
    # (B, H, ceil(S / 32) * 32) float32 per layer
    assert saved["ScaledDotProductEfficientAttentionBackward0.log_sumexp"] == 2 * (2 * 4 * 64 * 4)


def test_mem_efficient_refuses_grouped_kv_heads() -> None:
    """torch 2.13 compiles ``check_batch_size_and_num_heads_dense<false, true>`` for the
    memory-efficient kernel: grouped KV heads (enable_gqa) never reach it."""
    setup = TrainingSetup(
        batch=2, seq=40, precision=Precision.BF16, attention=Attention.MEM_EFFICIENT
    )
    with pytest.raises(SetupError, match="mem-efficient attention kernel cannot run"):
        trace_training(LLAMA, setup)


def test_flash_logsumexp_and_gqa_kv_not_expanded() -> None:
    setup = TrainingSetup(batch=2, seq=40, precision=Precision.BF16, gpu="A100")
    saved = _saved(trace_training(LLAMA, setup))
    assert saved["ScaledDotProductFlashAttentionBackward0.logsumexp"] == 2 * (2 * 4 * 40 * 4)
    # 2 KV heads of 16, bf16, per layer: K as the model made it, not repeated to 4 heads
    assert saved["ScaledDotProductFlashAttentionBackward0.key"] == 2 * (2 * 2 * 40 * 16 * 2)


def test_cudnn_on_h100_logsumexp_and_gqa_kv_not_expanded() -> None:
    """H100 with torch 2.13's cuDNN 9.20: cuDNN attention first; it takes grouped heads too."""
    saved = _saved(trace_training(LLAMA, TrainingSetup(batch=2, seq=40, precision=Precision.BF16)))
    assert saved["ScaledDotProductCudnnAttentionBackward0.logsumexp"] == 2 * (2 * 4 * 40 * 4)
    assert saved["ScaledDotProductCudnnAttentionBackward0.key"] == 2 * (2 * 2 * 40 * 16 * 2)


def test_autocast_keeps_half_weight_copies_until_backward() -> None:
    report = trace_training(LLAMA, TrainingSetup(batch=2, seq=64, precision=Precision.BF16_MIXED))
    assert report.scalars["peak_phase"] == "forward"
    # every matmul weight (7 per layer, and lm_head) once in bf16
    per_layer = 64 * 64 * 2 + 64 * 32 * 2 + 3 * 64 * 176
    assert report.breakdown.get("autocast_cache") == 2 * (2 * per_layer + 256 * 64)
    phases = {p.name: p.bytes for p in report.phases}
    # after backward: fp32 parameters, fp32 gradients, nothing else of the casts
    assert phases["after_backward"] - phases["after_load"] == report.breakdown.get("parameters")


def test_full_checkpointing_keeps_only_layer_inputs() -> None:
    base = TrainingSetup(batch=2, seq=32, precision=Precision.BF16)
    plain = trace_training(LLAMA, base)
    ckpt = trace_training(
        LLAMA,
        TrainingSetup(batch=2, seq=32, precision=Precision.BF16, checkpointing=Checkpointing.FULL),
    )
    plain_layers = plain.sections["activations_end_of_forward"].get("layers")
    ckpt_layers = ckpt.sections["activations_end_of_forward"].get("layers")
    assert ckpt_layers == 2 * 32 * 64 * 2  # layer 1's input, held by the checkpoint
    assert plain_layers > 10 * ckpt_layers
    assert ckpt.scalars["peak_bytes"] < plain.scalars["peak_bytes"]


def test_lora_trains_only_adapters() -> None:
    setup = TrainingSetup(
        batch=2, seq=32, precision=Precision.FP32, lora_rank=4, lora_targets=("q_proj", "v_proj")
    )
    report = trace_training(LLAMA, setup)
    trainable = 2 * (4 * (64 + 64) + 4 * (64 + 32))
    assert report.scalars["trainable_params"] == trainable
    phases = {p.name: p.bytes for p in report.phases}
    # gradients: fp32, per layer A_q (4x64), B_q (64x4), A_v (4x64), B_v (32x4)
    assert phases["after_backward"] - phases["after_load"] == 2 * (1024 + 1024 + 1024 + 512)


def test_frozen_layers_have_no_gradients() -> None:
    report = trace_training(
        LLAMA, TrainingSetup(batch=2, seq=32, precision=Precision.FP32, freeze_layers=2)
    )
    per_layer = 64 * 64 * 2 + 64 * 32 * 2 + 3 * 64 * 176 + 2 * 64
    assert report.scalars["trainable_params"] == report.scalars["total_params"] - 2 * per_layer


@pytest.mark.parametrize(
    ("optimizer", "states_per_param"), [(Optimizer.SGD_MOMENTUM, 1), (Optimizer.ADAMW_FUSED, 2)]
)
def test_optimizer_states(optimizer: Optimizer, states_per_param: int) -> None:
    report = trace_training(
        LLAMA, TrainingSetup(batch=2, seq=16, precision=Precision.FP32, optimizer=optimizer)
    )
    states = report.breakdown.get("optimizer_states")
    params = report.breakdown.get("parameters")
    steps = 512 * 21 if optimizer is Optimizer.ADAMW_FUSED else 0  # fused: step on the GPU
    assert states == states_per_param * params + steps


def test_adafactor_states_are_factored() -> None:
    report = trace_training(
        LLAMA,
        TrainingSetup(batch=2, seq=16, precision=Precision.FP32, optimizer=Optimizer.ADAFACTOR),
    )
    assert 0 < report.breakdown.get("optimizer_states") < report.breakdown.get("parameters") / 4


def test_inference_kv_cache_is_exact() -> None:
    dynamic = trace_inference(LLAMA, InferenceSetup(batch=2, prompt_len=16, gen_len=3))
    # 2 layers x (K, V) x (B=2, 2 KV heads, 16 + 2 tokens, 16) bf16
    assert dynamic.scalars["kv_cache_bytes"] == 2 * 2 * (2 * 2 * 18 * 16 * 2)
    static = trace_inference(
        LLAMA, InferenceSetup(batch=2, prompt_len=16, gen_len=3, cache="static")
    )
    assert static.scalars["kv_cache_bytes"] == 2 * 2 * (2 * 2 * 19 * 16 * 2)
    assert dynamic.breakdown.get("kv_cache") > 0


def test_flops_count_attention_kernels() -> None:
    report = trace_training(LLAMA, TrainingSetup(batch=2, seq=32, precision=Precision.BF16))
    tokens, params = 2 * 32, report.scalars["total_params"] - 256 * 64
    assert report.scalars["flops"] > 6 * tokens * params


@pytest.mark.parametrize(
    ("config", "setup", "message"),
    [
        (LLAMA, TrainingSetup(seq=4096), "longer than the model's maximum"),
        (LLAMA, TrainingSetup(seq=16, lora_rank=4, lora_targets=("c_attn",)), "not modules"),
        (CONFIGS["gemma2"], TrainingSetup(seq=16, attention=Attention.FLASH), "no sdpa"),
        (LLAMA, TrainingSetup(seq=16, optimizer=Optimizer.ADAMW_8BIT), "analytic"),
        (LLAMA, TrainingSetup(seq=16, precision=Precision.DEEPSPEED_BF16), "analytic"),
    ],
)
def test_bad_setups_are_one_line_errors(config: dict, setup: TrainingSetup, message: str) -> None:  # type: ignore[type-arg]
    with pytest.raises(SetupError, match=message) as info:
        trace_training(config, setup)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("family", ["llama", "mistral", "gemma3_text", "deepseek_v3"])
@pytest.mark.parametrize("cache", ["dynamic", "static"])
def test_decode_fast_forward_equals_every_step(
    family: str, cache: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Tracing the first and last decode steps gives the phases and FLOPs of all of them."""
    from memplan.trace import inference

    setup = InferenceSetup(batch=2, prompt_len=16, gen_len=9, cache=cache)
    fast = trace_inference(CONFIGS[family], setup)
    monkeypatch.setattr(inference, "_decode_positions", lambda p, n: [p + i for i in range(n)])
    monkeypatch.setattr(inference, "_decode_flops", lambda total, f, step, steps: total + f)
    full = trace_inference(CONFIGS[family], setup)
    assert [(p.name, p.bytes) for p in fast.phases] == [(p.name, p.bytes) for p in full.phases]
    assert fast.scalars["flops"] == full.scalars["flops"]
    assert fast.scalars["kv_cache_bytes"] == full.scalars["kv_cache_bytes"]


def test_mixed_precision_checkpointing_recomputes_under_autocast() -> None:
    setup = TrainingSetup(
        batch=2, seq=32, precision=Precision.BF16_MIXED, checkpointing=Checkpointing.FULL
    )
    report = trace_training(LLAMA, setup)
    plain = trace_training(LLAMA, TrainingSetup(batch=2, seq=32, precision=Precision.BF16_MIXED))
    saved = report.sections["activations_end_of_forward"].total
    assert saved < plain.sections["activations_end_of_forward"].total
    # layer 1's input, fp32 (the residual stream under autocast)
    assert report.sections["activations_end_of_forward"].get("layers") == 2 * 32 * 64 * 4
