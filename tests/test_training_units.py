"""The analytic training engine's closed forms, invariants and bad input (no torch needed)."""

from __future__ import annotations

import dataclasses

import pytest

from memplan.catalog import resolve
from memplan.errors import SetupError
from memplan.estimate.training import (
    estimate_training,
    evaluate,
    training_plan,
)
from memplan.formulas.optimizer import (
    optimizer_from_name,
    optimizer_state_allocations,
    optimizer_step_temporary_bytes,
)
from memplan.formulas.params import total_params
from memplan.formulas.training import alloc_bytes, param_tensors, regime
from memplan.formulas.weights import weights_total_bytes
from memplan.specs.hf import spec_from_config
from memplan.specs.training import (
    Checkpointing,
    Optimizer,
    Precision,
    Target,
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
    """Seed 001's 16 bytes per parameter (bf16 weights and gradients, fp32 master weights and
    two fp32 Adam moments), plus fused AdamW's fp32 ``step`` counter per tensor on the GPU."""
    spec = resolve(LLAMA2)
    tensors = param_tensors(spec)
    setup = TrainingSetup(precision=Precision.DEEPSPEED_BF16, optimizer=Optimizer.ADAMW_FUSED)
    cpu = _plan(spec, dataclasses.replace(setup, target=Target.CPU))  # no allocator rounding
    assert cpu.param_bytes + cpu.grad_bytes + cpu.state_bytes == (
        16 * total_params(spec) + 4 * len(tensors)
    )
    cuda = _plan(spec, setup)  # each tensor its own 512-B blocks
    assert cuda.param_bytes + cuda.grad_bytes + cuda.state_bytes == sum(
        2 * alloc_bytes(2 * t.numel) + 3 * alloc_bytes(4 * t.numel) + alloc_bytes(4)
        for t in tensors
    )


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
    # this setup peaks in the backward, the highest of the phases
    assert report.scalars["peak_phase"] == "backward"
    assert report.scalars["peak_bytes"] == phases["peak_backward"] == max(phases.values())
    assert report.scalars["peak_bytes"] == int(report.breakdown.total)
    # the first step runs forward and backward without optimizer states; its step makes them
    # (and the step temporaries) on top of the same gradients, as every later step has them
    assert report.scalars["first_step_peak_bytes"] == max(
        phases["peak_backward"] - plan.state_bytes, phases["optimizer_step"]
    )


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
    # the peaks with recomputation: against the trace in test_trace_semantics.py and
    # test_training_exact.py


def test_lora_trains_only_the_adapters() -> None:
    spec = resolve(LLAMA2)
    setup = TrainingSetup(lora_rank=16, lora_targets=("q_proj", "v_proj"), precision=Precision.BF16)
    report = estimate_training(spec, setup)
    assert report.scalars["trainable_params"] == 32 * 2 * (16 * 4096 + 4096 * 16) == 8_388_608
    plan = _plan(spec, setup)
    # per layer and target: A (16 x 4096) and B (4096 x 16), fp32 (peft keeps adapters fp32)
    assert plan.grads == {"lora_adapters": 32 * 2 * 2 * alloc_bytes(16 * 4096 * 4)}
    # AdamW's two moments of the adapters only (the step counters live on the host)
    assert plan.state_bytes == 2 * 32 * 2 * 2 * alloc_bytes(16 * 4096 * 4)


def test_qlora_stores_the_base_in_nf4() -> None:
    """The base model as the inference weights formula stores it in bitsandbytes NF4 (layers'
    linear weights quantized, embeddings, norms and lm_head in bf16), plus the fp32 adapters
    (A and B of rank 16 on q, k, v and o in each of the 32 layers)."""
    spec = resolve(LLAMA2)
    setup = TrainingSetup(lora_rank=16, qlora=True, precision=Precision.BF16, target=Target.CPU)
    nf4 = _plan(spec, setup)
    adapters = 32 * 4 * (16 * 4096 + 4096 * 16) * 4
    assert nf4.params["lora_adapters"] == adapters
    assert nf4.param_bytes == weights_total_bytes(spec, "bnb-nf4") + adapters


def test_batch_one_saves_the_padded_labels() -> None:
    """labels[..., 1:].contiguous() is a view for one row: nll_loss saves the (1, S+1) buffer."""
    spec = resolve("gpt2")
    plan = _plan(spec, TrainingSetup(precision=Precision.FP32))
    (labels,) = [s for s in plan.head_saved if s.key == "loss/shift_labels"]
    assert labels.nbytes(1, 64) == 65 * 8
    assert labels.nbytes(2, 64) == 2 * 64 * 8


# Bad input -------------------------------------------------------------------------------------
def test_batch_zero_is_refused() -> None:
    with pytest.raises(SetupError, match="batch must be a positive integer"):
        TrainingSetup(batch=0)


def test_sequence_beyond_max_positions_needs_an_override() -> None:
    spec = resolve("gpt2")
    with pytest.raises(SetupError, match="max_position_embeddings"):
        estimate_training(spec, TrainingSetup(seq=2048))
    # the override lifts the check and changes nothing else: a rotary model (no position
    # table) limited to 1024 positions answers as the same model allowed 4096
    config = dict(resolve("meta-llama/Llama-3.2-1B").hf_config or {})
    short = spec_from_config({**config, "max_position_embeddings": 1024})
    long = spec_from_config({**config, "max_position_embeddings": 4096})
    allowed = estimate_training(short, TrainingSetup(seq=2048, allow_long_seq=True))
    plain = estimate_training(long, TrainingSetup(seq=2048))
    assert allowed.phases == plain.phases
    assert allowed.scalars["peak_bytes"] == plain.scalars["peak_bytes"]


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
