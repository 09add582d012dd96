"""CUDA semantics of the trace on fake cpu tensors, checked against closed forms."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

from memplan.errors import SetupError
from memplan.estimate.training import estimate_training
from memplan.formulas.training import alloc_bytes, param_tensors
from memplan.specs.hf import spec_from_config
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


def _timeline(report) -> dict[str, int]:  # type: ignore[no-untyped-def]
    """The steady-state phases, the peak and the first step's peak."""
    out = {p.name: p.bytes for p in report.phases if "/" not in p.name}
    out["peak"] = report.scalars["peak_bytes"]
    out["first_step_peak"] = report.scalars["first_step_peak_bytes"]
    return out


def _analytic_timeline(setup: TrainingSetup) -> dict[str, int]:
    """The same figures from the analytic engine (the other engine) for tiny Llama."""
    return _timeline(estimate_training(spec_from_config(LLAMA), setup))


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
    recompute = dataclasses.replace(base, checkpointing=Checkpointing.FULL)
    plain = trace_training(LLAMA, base)
    ckpt = trace_training(LLAMA, recompute)
    ckpt_layers = ckpt.sections["activations_end_of_forward"].get("layers")
    assert ckpt_layers == 2 * 32 * 64 * 2  # layer 1's input, held by the checkpoint
    # every phase and peak, with and without recomputation, as the analytic engine has them
    assert _timeline(plain) == _analytic_timeline(base)
    assert _timeline(ckpt) == _analytic_timeline(recompute)


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
    # fused: one fp32 ``step`` per parameter tensor on the GPU, each a 512-B block
    n_tensors = len(param_tensors(spec_from_config(LLAMA)))
    steps = alloc_bytes(4) * n_tensors if optimizer is Optimizer.ADAMW_FUSED else 0
    assert states == states_per_param * params + steps


def test_adafactor_states_are_factored() -> None:
    """transformers' Adafactor (``optimization.py``, beta1 None): per matrix the row and column
    means of the squared gradient (shape[:-1] and shape[:-2] + shape[-1:]), per vector the full
    second moment, and per tensor its RMS, a 0-d tensor; fp32 here, each a 512-B block."""
    report = trace_training(
        LLAMA,
        TrainingSetup(batch=2, seq=16, precision=Precision.FP32, optimizer=Optimizer.ADAFACTOR),
    )
    expected = 0
    for tensor in param_tensors(spec_from_config(LLAMA)):
        shape = tensor.shape
        if len(shape) >= 2:
            moments = [math.prod(shape[:-1]), math.prod(shape[:-2] + shape[-1:])]
        else:
            moments = [tensor.numel]
        expected += sum(alloc_bytes(4 * n) for n in moments) + alloc_bytes(4)
    assert report.breakdown.get("optimizer_states") == expected


def test_inference_kv_cache_is_exact() -> None:
    dynamic = trace_inference(LLAMA, InferenceSetup(batch=2, prompt_len=16, gen_len=3))
    # 2 layers x (K, V) x (B=2, 2 KV heads, 16 + 2 tokens, 16) bf16
    assert dynamic.scalars["kv_cache_bytes"] == 2 * 2 * (2 * 2 * 18 * 16 * 2)
    static = trace_inference(
        LLAMA, InferenceSetup(batch=2, prompt_len=16, gen_len=3, cache="static")
    )
    # ... plus each StaticLayer's int64 cumulative_length counter
    assert static.scalars["kv_cache_bytes"] == 2 * 2 * (2 * 2 * 19 * 16 * 2) + 2 * 8
    # at the peak (end of the prefill): the 16 prompt tokens, each tensor a multiple of 512 B
    assert dynamic.breakdown.get("kv_cache") == 2 * 2 * (2 * 2 * 16 * 16 * 2)


def test_flops_count_attention_kernels() -> None:
    """``torch.utils.flop_counter``'s formulas: a matmul 2mnk, forward and twice that backward;
    the flash kernel 2 x 2 B H S^2 D forward (no causal halving), and backward 5 matmuls of
    that size (``sdpa_backward_flop_count`` recomputes the scores), so 2.5 x its forward."""
    report = trace_training(LLAMA, TrainingSetup(batch=2, seq=32, precision=Precision.BF16))
    batch, seq, hidden, kv, inner, vocab, layers = 2, 32, 64, 32, 176, 256, 2
    heads, head_dim = 4, 16
    tokens = batch * seq
    linear = 2 * tokens * (2 * hidden * hidden + 2 * hidden * kv + 3 * hidden * inner)
    head = 2 * tokens * hidden * vocab
    core = 2 * (2 * batch * heads * seq * seq * head_dim)  # Q K^T and P V
    expected = 3 * (layers * linear + head) + layers * (core + 5 * core // 2)
    assert report.scalars["flops"] == expected


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
    # layer 1's input, fp32 (the residual stream under autocast)
    assert report.sections["activations_end_of_forward"].get("layers") == 2 * 32 * 64 * 4
    # the recomputation's autocast copies and activations, phase by phase as the analytic
    # engine has them
    assert _timeline(report) == _analytic_timeline(setup)
