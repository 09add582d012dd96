"""What to try when a training step does not fit: computed, not canned.

Each lever is a change to the setup that is not already on; its worth is the peak it would
remove, computed by the same accounting (:func:`memplan.estimate.training.training_peak_bytes`)
on the changed setup. Only levers that lower the peak are listed, largest first, with whether
the step would then fit the GPU's usable memory (``usable_bytes`` of the fit verdict,
:func:`memplan.estimate.fit.fit_on_gpu`).

More GPUs (:func:`fewest_gpus`): the smallest power-of-two count of the same GPU over which
FSDP full sharding brings every rank's peak under that memory, computed by the per-rank engine
(:mod:`memplan.estimate.distributed`), each rank at the same micro-batch and sequence.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass

from memplan.errors import MemplanError
from memplan.estimate.train_setup import ALL_LINEAR, ATTENTION, lora_targets_for
from memplan.estimate.training import estimate_training, training_peak_bytes
from memplan.specs.model import ModelSpec
from memplan.specs.parallel import DEFAULT_GPUS_PER_NODE, ParallelPlan, Sharding
from memplan.specs.training import (
    QLORA_RECIPE,
    Checkpointing,
    Optimizer,
    Precision,
    TrainingSetup,
)

__all__ = ["Lever", "fewest_gpus", "what_to_try"]

_FOREACH = (Optimizer.ADAMW, Optimizer.ADAM, Optimizer.ADAMW_FOREACH)
_EIGHT_BIT = (Optimizer.ADAMW_8BIT, Optimizer.PAGED_ADAMW_8BIT)
_LORA_RANK = 16
"""The rank the LoRA lever proposes (peft's examples; memory barely depends on it)."""
MAX_GPUS = 1024
"""The most GPUs the "more GPUs" lever tries (128 nodes of 8)."""


@dataclass(frozen=True, slots=True)
class Lever:
    """One change to try, the flag that makes it, and what it would give."""

    name: str
    flags: str
    saved_bytes: int
    peak_bytes: int
    fits: bool
    gpus: int = 1
    """GPUs the lever uses (``peak_bytes`` is then per GPU, the worst rank's)."""


def _levers(
    spec: ModelSpec, setup: TrainingSetup, peak_phase: str
) -> Iterator[tuple[str, str, TrainingSetup]]:
    """(name, flags, changed setup) for every lever that is not already on."""
    replace = dataclasses.replace
    if setup.checkpointing is not Checkpointing.FULL:
        yield (
            "activation checkpointing",
            "--checkpointing full",
            replace(setup, checkpointing=Checkpointing.FULL),
        )
    if setup.precision in (Precision.FP32, Precision.BF16_MIXED, Precision.FP16_MIXED):
        yield (
            "pure bf16 (no fp32 master copy)",
            "--precision bf16",
            replace(setup, precision=Precision.BF16),
        )
    if setup.optimizer in _FOREACH and peak_phase == "optimizer_step":
        yield (
            "fused AdamW (no foreach step temporaries)",
            "--optimizer adamw-fused",
            replace(setup, optimizer=Optimizer.ADAMW_FUSED),
        )
    if setup.optimizer not in _EIGHT_BIT and not setup.is_lora:
        yield (
            "8-bit AdamW states",
            "--optimizer adamw-8bit",
            replace(setup, optimizer=Optimizer.ADAMW_8BIT),
        )
    if not setup.is_lora:
        targets = lora_targets_for(spec, (ATTENTION,))
        yield (
            f"LoRA r={_LORA_RANK}",
            f"--lora-rank {_LORA_RANK}",
            replace(setup, lora_rank=_LORA_RANK, lora_targets=targets),
        )
    elif not setup.qlora:
        yield (
            "QLoRA (NF4 base weights)",
            "--qlora",
            replace(
                setup,
                qlora=True,
                lora_targets=setup.lora_targets or lora_targets_for(spec, (ALL_LINEAR,)),
            ),
        )
    if not setup.is_lora and setup.optimizer is not Optimizer.PAGED_ADAMW_8BIT:
        recipe = replace(
            setup,
            qlora=True,
            lora_rank=QLORA_RECIPE.lora_rank,
            lora_targets=lora_targets_for(spec, (ALL_LINEAR,)),
            precision=Precision(QLORA_RECIPE.precision),
            checkpointing=Checkpointing(QLORA_RECIPE.checkpointing),
            optimizer=Optimizer(QLORA_RECIPE.optimizer),
        )
        yield "the QLoRA recipe", "--qlora", recipe
    if setup.batch > 1:
        yield (
            "micro-batch 1 (gradient accumulation for the rest)",
            "--batch 1",
            replace(setup, batch=1),
        )


def _fsdp_plan(n_gpus: int) -> ParallelPlan:
    """FSDP full sharding over ``n_gpus`` GPUs, nodes of :data:`DEFAULT_GPUS_PER_NODE` (the
    layout ``--gpus N --fsdp full`` builds)."""
    per_node = min(n_gpus, DEFAULT_GPUS_PER_NODE)
    return ParallelPlan(
        nodes=n_gpus // per_node, gpus_per_node=per_node, sharding=Sharding.FSDP_FULL
    )


def fewest_gpus(
    spec: ModelSpec, setup: TrainingSetup, usable_bytes: int, *, max_gpus: int = MAX_GPUS
) -> Lever | None:
    """The smallest power-of-two GPU count (2 to ``max_gpus``) whose FSDP full sharding puts
    every rank's peak within ``usable_bytes``, or None: no such count (the activations do not
    shard) or a setup the per-rank engine does not take. A rank's peak does not grow with the
    count (its share of the states shrinks, its activations and buffers stay), so the count is
    found by bisection over the exponents."""
    from memplan.estimate.dist_report import worst_peak_bytes

    def peak_at(n_gpus: int) -> int:
        return worst_peak_bytes(spec, setup, _fsdp_plan(n_gpus))

    try:
        peaks = {2: peak_at(2)}  # two GPUs often suffice: try them first
        low, high = 1, max_gpus.bit_length() - 1  # 2**low .. 2**high GPUs; 2**high fits
        if peaks[2] <= usable_bytes:
            high = 1
        else:
            peaks[2**high] = peak_at(2**high)
            if peaks[2**high] > usable_bytes:
                return None
            low = 2
        while low < high:
            mid = (low + high) // 2
            peaks[2**mid] = peak_at(2**mid)
            low, high = (low, mid) if peaks[2**mid] <= usable_bytes else (mid + 1, high)
    except MemplanError:
        return None
    n_gpus, peak = 2**high, peaks[2**high]
    flags = f"--gpus {n_gpus} --fsdp full"
    name = f"more GPUs: FSDP full sharding over {n_gpus} GPUs, per-GPU peak"
    return Lever(name, flags, training_peak_bytes(spec, setup) - peak, peak, True, gpus=n_gpus)


def what_to_try(
    spec: ModelSpec,
    setup: TrainingSetup,
    usable_bytes: int,
    *,
    peak_bytes: int | None = None,
    peak_phase: str | None = None,
) -> list[Lever]:
    """The levers not already on that lower the peak, largest saving first (``peak_bytes``
    and ``peak_phase``: the setup's own, when the caller has them)."""
    if peak_bytes is None or peak_phase is None:
        report = estimate_training(spec, setup)
        peak_bytes = int(report.scalars["peak_bytes"])
        peak_phase = str(report.scalars.get("peak_phase", ""))
    peak, phase = peak_bytes, peak_phase
    out = []
    for name, flags, changed in _levers(spec, setup, phase):
        try:
            new_peak = training_peak_bytes(spec, changed)
        except MemplanError:  # a lever this model cannot take (e.g. a rank too large)
            continue
        if new_peak < peak:
            out.append(Lever(name, flags, peak - new_peak, new_peak, new_peak <= usable_bytes))
    out.sort(key=lambda lever: -lever.saved_bytes)
    more = fewest_gpus(spec, setup, usable_bytes)
    return out if more is None else [*out, more]
