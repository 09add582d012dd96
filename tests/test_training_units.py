"""The analytic training engine's closed forms, invariants and bad input (no torch needed)."""

from __future__ import annotations

import dataclasses
import time

import pytest

from memplan.catalog import resolve
from memplan.errors import SetupError
from memplan.estimate.training import (
    estimate_training,
    evaluate,
    training_peak_bytes,
    training_plan,
)
from memplan.formulas.optimizer import (
    optimizer_from_name,
    optimizer_state_allocations,
    optimizer_step_temporary_bytes,
)
from memplan.formulas.params import total_params
from memplan.formulas.training import alloc_bytes, param_tensors, regime
from memplan.specs.training import (
    Checkpointing,
    Optimizer,
    Precision,
    TrainingSetup,
)

LLAMA2 = "meta-llama/Llama-2-7b-hf"


def _plan(spec, setup):  # type: ignore[no-untyped-def]
    return training_plan(spec, dataclasses.replace(setup, batch=1, seq=1, allow_long_seq=True))


def test_allocator_rounding() -> None:
    assert alloc_bytes(0) == 0
    assert alloc_bytes(1) == 512
    assert alloc_bytes(512) == 512
    assert alloc_bytes(513) == 1024
    assert alloc_bytes(513, round_to=1) == 513


@pytest.mark.parametrize(
    "name",
    [LLAMA2, "meta-llama/Llama-3.1-8B", "gpt2", "google/gemma-2-9b", "Qwen/Qwen2.5-7B",
     "mistralai/Mixtral-8x7B-v0.1", "microsoft/Phi-3-mini-4k-instruct"],
)  # fmt: skip
def test_param_inventory_matches_the_parameter_count(name: str) -> None:
    spec = resolve(name)
    assert sum(t.numel for t in param_tensors(spec)) == total_params(spec)


def test_llama2_tensor_count_and_pure_bf16_bytes() -> None:
    spec = resolve(LLAMA2)
    tensors = param_tensors(spec)
    assert len(tensors) == 291  # as model.named_parameters() lists them
    setup = TrainingSetup(batch=1, seq=512, precision=Precision.BF16)
    plan = _plan(spec, setup)
    expected = sum(alloc_bytes(t.numel * 2) for t in tensors)
    assert plan.param_bytes == expected == 13_476_831_232
    assert plan.grad_bytes == expected
    assert plan.state_bytes == 2 * expected  # exp_avg + exp_avg_sq, step on the host
    assert plan.step_temporary == expected  # foreach: one sqrt per parameter at once


def test_fused_adamw_keeps_its_step_counters_on_the_gpu() -> None:
    spec = resolve(LLAMA2)
    setup = TrainingSetup(batch=1, seq=512, precision=Precision.BF16)
    foreach = _plan(spec, setup)
    fused = _plan(spec, dataclasses.replace(setup, optimizer=Optimizer.ADAMW_FUSED))
    assert fused.state_bytes - foreach.state_bytes == 291 * 512
    assert fused.step_temporary == 0


def test_regimes() -> None:
    assert regime(Precision.FP32).param_bytes == 4
    mixed = regime(Precision.BF16_MIXED)
    assert (mixed.param_bytes, mixed.grad_bytes, mixed.compute_bytes, mixed.autocast) == (
        4, 4, 2, True,
    )  # fmt: skip
    ds = regime(Precision.DEEPSPEED_BF16)
    assert ds.param_bytes + ds.grad_bytes + 2 * ds.state_bytes + ds.master_bytes == 16
    assert regime(Precision.DEEPSPEED_BF16, fp32_grad_accumulation=True).grad_bytes == 4


def test_deepspeed_is_sixteen_bytes_per_parameter() -> None:
    spec = resolve(LLAMA2)
    setup = TrainingSetup(precision=Precision.DEEPSPEED_BF16, optimizer=Optimizer.ADAMW_FUSED)
    plan = _plan(spec, setup)
    n = total_params(spec)
    static = plan.param_bytes + plan.grad_bytes + plan.state_bytes
    assert 16 * n <= static <= 16 * n + 8 * 291 * 512  # rounding of 291 tensors, 6 copies + steps


def test_eight_bit_adamw_block_statistics() -> None:
    n = 1_000_000
    sizes = optimizer_state_allocations(Optimizer.ADAMW_8BIT, n, (1000, 1000), 4)
    assert sizes == (n, n, 4 * 3907, 4 * 3907)  # ceil(1e6 / 256) = 3907 blocks
    assert optimizer_state_allocations(Optimizer.ADAMW_8BIT, 4095, (4095,), 4) == (4 * 4095,) * 2


def test_adafactor_factored_second_moment() -> None:
    sizes = optimizer_state_allocations(Optimizer.ADAFACTOR, 4096 * 11008, (11008, 4096), 2)
    assert sizes == (11008 * 4, 4096 * 4, 4)  # rows, cols (fp32) and the RMS scalar
    assert optimizer_state_allocations(Optimizer.ADAFACTOR, 4096, (4096,), 2) == (4096 * 4, 4)


def test_step_temporaries() -> None:
    sizes = [1000, 3000]
    assert optimizer_step_temporary_bytes(Optimizer.ADAMW, sizes, 3000, 512) == 512 * 8
    assert optimizer_step_temporary_bytes(Optimizer.ADAMW_FUSED, sizes, 3000, 512) == 0
    assert optimizer_step_temporary_bytes(Optimizer.ADAMW_FORLOOP, sizes, 3000, 512) == 2 * 3072
    assert optimizer_step_temporary_bytes(Optimizer.SGD_MOMENTUM, sizes, 3000, 512) == 0


def test_timeline_invariants() -> None:
    spec = resolve("meta-llama/Llama-3.2-1B")
    setup = TrainingSetup(batch=2, seq=1024)
    report = estimate_training(spec, setup)
    phases = {p.name: p.bytes for p in report.phases}
    plan = _plan(spec, setup)
    assert phases["after_load"] == phases["after_zero_grad"]
    assert phases["after_backward"] - phases["after_load"] == plan.grad_bytes
    assert phases["optimizer_step"] - phases["after_backward"] == plan.step_temporary
    assert (
        report.scalars["peak_bytes"] == max(phases.values())
        or report.scalars["peak_phase"] == "forward"
    )
    assert report.scalars["peak_bytes"] == int(report.breakdown.total)
    # the first step has no optimizer states before step()
    assert report.scalars["first_step_peak_bytes"] <= report.scalars["peak_bytes"]


def test_peak_grows_with_batch_and_sequence() -> None:
    spec = resolve("meta-llama/Llama-3.2-1B")
    plan = _plan(spec, TrainingSetup())
    by_batch = [evaluate(plan, b, 1024).peak_bytes for b in (1, 2, 4, 8)]
    by_seq = [evaluate(plan, 2, s) for s in (256, 512, 1024, 4096)]
    assert by_batch == sorted(by_batch) and len(set(by_batch)) == 4
    assert [m.peak_bytes for m in by_seq] == sorted(m.peak_bytes for m in by_seq)


def test_checkpointing_keeps_only_layer_inputs() -> None:
    spec = resolve("meta-llama/Llama-3.2-1B")
    setup = TrainingSetup(batch=8, seq=2048, precision=Precision.BF16)
    plan = _plan(spec, dataclasses.replace(setup, checkpointing=Checkpointing.FULL))
    layer_bytes = sum(
        g.count * sum(alloc_bytes(s.nbytes(8, 2048)) for s in g.saved) for g in plan.layers
    )
    assert layer_bytes == spec.n_layers * alloc_bytes(8 * 2048 * spec.hidden_size * 2)
    full = training_peak_bytes(spec, setup)
    ckpt = training_peak_bytes(spec, dataclasses.replace(setup, checkpointing=Checkpointing.FULL))
    assert ckpt < full


def test_lora_trains_only_the_adapters() -> None:
    spec = resolve(LLAMA2)
    setup = TrainingSetup(lora_rank=16, lora_targets=("q_proj", "v_proj"), precision=Precision.BF16)
    report = estimate_training(spec, setup)
    assert report.scalars["trainable_params"] == 32 * 2 * (16 * 4096 + 4096 * 16) == 8_388_608
    plan = _plan(spec, setup)
    assert plan.grads == {"lora_adapters": 32 * 2 * 2 * alloc_bytes(16 * 4096 * 4)}
    full = _plan(spec, TrainingSetup(precision=Precision.BF16))
    assert plan.state_bytes * 100 < full.state_bytes


def test_qlora_stores_the_base_in_nf4() -> None:
    spec = resolve(LLAMA2)
    bf16 = _plan(spec, TrainingSetup(lora_rank=16, precision=Precision.BF16))
    nf4 = _plan(spec, TrainingSetup(lora_rank=16, qlora=True, precision=Precision.BF16))
    assert "quantized_nf4" in nf4.params
    assert nf4.param_bytes < 0.4 * bf16.param_bytes


def test_batch_one_saves_the_padded_labels() -> None:
    """labels[..., 1:].contiguous() is a view for one row: nll_loss saves the (1, S+1) buffer."""
    spec = resolve("gpt2")
    plan = _plan(spec, TrainingSetup(precision=Precision.FP32))
    (labels,) = [s for s in plan.head_saved if s.key == "loss/shift_labels"]
    assert labels.nbytes(1, 64) == 65 * 8
    assert labels.nbytes(2, 64) == 2 * 64 * 8


def test_an_estimate_takes_well_under_a_millisecond() -> None:
    spec = resolve("meta-llama/Llama-3.1-8B")
    training_peak_bytes(spec, TrainingSetup())
    setups = [TrainingSetup(batch=1 + i % 4, seq=512 * (1 + i % 8)) for i in range(2000)]
    start = time.perf_counter()
    for setup in setups:
        training_peak_bytes(spec, setup)
    assert (time.perf_counter() - start) / len(setups) < 1e-3


# Bad input -------------------------------------------------------------------------------------
def test_batch_zero_is_refused() -> None:
    with pytest.raises(SetupError, match="batch must be a positive integer"):
        TrainingSetup(batch=0)


def test_sequence_beyond_max_positions_needs_an_override() -> None:
    spec = resolve("gpt2")
    with pytest.raises(SetupError, match="max_position_embeddings"):
        estimate_training(spec, TrainingSetup(seq=2048))
    assert (
        estimate_training(spec, TrainingSetup(seq=2048, allow_long_seq=True)).scalars["peak_bytes"]
        > 0
    )


def test_lora_rank_larger_than_the_layer() -> None:
    spec = resolve("gpt2")
    with pytest.raises(SetupError, match="LoRA rank 1000 is larger"):
        estimate_training(spec, TrainingSetup(seq=128, lora_rank=1000, lora_targets=("c_attn",)))


def test_unknown_optimizer_and_lora_target() -> None:
    with pytest.raises(SetupError, match="unknown optimizer 'adamx'"):
        optimizer_from_name("adamx")
    with pytest.raises(SetupError, match="unknown LoRA target q_proj for openai-community/gpt2"):
        estimate_training(
            resolve("gpt2"), TrainingSetup(seq=128, lora_rank=8, lora_targets=("q_proj",))
        )
