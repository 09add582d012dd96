"""The per-rank engine's memos give what building afresh gives (a key missing a field would
hand one setup's answer to another).

- ``dist_states.static_setup`` is memoised by the values of every field but the micro-batch
  and the sequence: setups that differ in any one other field get their own static setup;
- ``train_step._sum_saved`` sums the tensors no allocation rounds as one linear form and sizes
  the others once per distinct size: the sum is the per-tensor sum, rounded or not.
"""

from __future__ import annotations

import dataclasses

import pytest

from memplan.catalog import resolve
from memplan.estimate.dist_local import local_step
from memplan.estimate.dist_states import static_setup
from memplan.estimate.train_step import _sum_saved
from memplan.formulas.allocator import alloc_bytes
from memplan.specs.parallel import ParallelPlan, Sharding
from memplan.specs.training import (
    Attention,
    Checkpointing,
    Optimizer,
    Precision,
    Target,
    TrainingSetup,
)

_OTHER_VALUES = {
    "precision": Precision.BF16,
    "optimizer": Optimizer.SGD,
    "attention": Attention.EAGER,
    "checkpointing": Checkpointing.FULL,
    "dropout": 0.1,
    "fp32_grad_accumulation": True,
    "lora_rank": 8,
    "lora_alpha": 32.0,
    "lora_targets": ("q_proj",),
    "qlora": True,
    "freeze_embeddings": True,
    "freeze_layers": 2,
    "target": Target.CPU,
    "gpu": "A100",
}
"""A second value for every field a static setup keeps (the test fails on a new field)."""


def test_static_setup_keeps_every_field_but_batch_and_seq() -> None:
    base = TrainingSetup(batch=3, seq=1024, lora_rank=4)
    kept = set(TrainingSetup.__dataclass_fields__) - {"batch", "seq", "allow_long_seq"}
    assert set(_OTHER_VALUES) == kept
    seen = {static_setup(base)}
    for name, value in _OTHER_VALUES.items():
        setup = dataclasses.replace(base, **{name: value})
        got = static_setup(setup)
        assert got == dataclasses.replace(setup, batch=1, seq=1, allow_long_seq=True), name
        seen.add(got)
    assert len(seen) == len(_OTHER_VALUES) + 1
    # the micro-batch, the sequence and allow_long_seq share one
    assert static_setup(dataclasses.replace(base, batch=7, seq=99, allow_long_seq=True)) is (
        static_setup(base)
    )


@pytest.mark.parametrize(
    ("name", "checkpointing", "sp"),
    [
        ("meta-llama/Llama-3.1-8B", Checkpointing.NONE, False),
        ("meta-llama/Llama-3.1-8B", Checkpointing.FULL, True),
        ("Qwen/Qwen1.5-MoE-A2.7B", Checkpointing.NONE, True),
    ],
)
def test_sum_saved_is_the_per_tensor_sum(name: str, checkpointing: Checkpointing, sp: bool) -> None:
    spec = resolve(name)
    plan = ParallelPlan(gpus_per_node=8, tp_degree=2, sharding=Sharding.FSDP_FULL,
                        sequence_parallel=sp)  # fmt: skip
    for batch, seq in ((1, 512), (3, 1000), (2, 4096)):
        setup = TrainingSetup(batch=batch, seq=seq, checkpointing=checkpointing)
        local = local_step(spec, setup, plan)
        tplan, b, s, r = local.plan, local.batch, local.seq, local.plan.round_to
        tuples = [tplan.model_saved, tplan.head_saved, tplan.nll_saved, tplan.final_norm_input]
        for g in tplan.layers:
            tuples += [g.saved, g.full_saved, g.down_input, g.recompute]
        for items in tuples:
            for rounding in (r, 1):  # the CUDA allocator's 512 B and the CPU target's none
                expected = sum(alloc_bytes(it.nbytes(b, s), rounding) for it in items)
                assert _sum_saved(items, b, s, rounding) == expected
