"""What to try when a training step does not fit: computed, not canned.

Each lever is a change to the setup that is not already on; its worth is the peak it would
remove, computed by the same accounting (:func:`memplan.estimate.training.training_peak_bytes`)
on the changed setup. Only levers that lower the peak are listed, largest first, with whether
the step would then fit the GPU's usable memory (``usable_bytes`` of the fit verdict,
:func:`memplan.estimate.fit.fit_on_gpu`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass

from memplan.errors import MemplanError
from memplan.estimate.train_setup import ALL_LINEAR, ATTENTION, lora_targets_for
from memplan.estimate.training import estimate_training, training_peak_bytes
from memplan.specs.model import ModelSpec
from memplan.specs.training import (
    QLORA_RECIPE,
    Checkpointing,
    Optimizer,
    Precision,
    TrainingSetup,
)

__all__ = ["Lever", "what_to_try"]

_FOREACH = (Optimizer.ADAMW, Optimizer.ADAM, Optimizer.ADAMW_FOREACH)
_EIGHT_BIT = (Optimizer.ADAMW_8BIT, Optimizer.PAGED_ADAMW_8BIT)
_LORA_RANK = 16
"""The rank the LoRA lever proposes (peft's examples; memory barely depends on it)."""


@dataclass(frozen=True, slots=True)
class Lever:
    """One change to try, the flag that makes it, and what it would give."""

    name: str
    flags: str
    saved_bytes: int
    peak_bytes: int
    fits: bool


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
    return sorted(out, key=lambda lever: -lever.saved_bytes)
