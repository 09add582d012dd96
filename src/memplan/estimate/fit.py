"""What fits on a GPU: the largest micro-batch, the longest sequence, the headroom, the limit.

The memory a step may use is the GPU's memory less what lives outside PyTorch's caching
allocator: the CUDA context with its loaded kernels and the cuBLAS workspaces
(:data:`CUDA_RESERVE_BYTES`; ``memplan trace --measure`` reads the real figure on a GPU).
The peak grows with batch and sequence length, so both searches are bisections over
:func:`memplan.estimate.training.training_peak_bytes` (microseconds per probe).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

from memplan.estimate.training import evaluate, training_plan
from memplan.formulas.overheads import CUBLAS_WORKSPACE_BYTES_HOPPER, CUDA_CONTEXT_BYTES
from memplan.specs.model import ModelSpec
from memplan.specs.training import TrainingSetup

__all__ = ["CUDA_RESERVE_BYTES", "Fit", "fit_training", "usable_bytes"]

CUDA_RESERVE_BYTES = CUDA_CONTEXT_BYTES + CUBLAS_WORKSPACE_BYTES_HOPPER
"""The CUDA context with its kernels plus one cuBLAS workspace on Hopper
(:mod:`memplan.formulas.overheads`, where both figures are defined and sourced)."""
_MAX_BATCH = 1 << 20


@dataclass(frozen=True, slots=True)
class Fit:
    """The answer for one GPU."""

    memory_bytes: int
    usable_bytes: int
    peak_bytes: int
    headroom_bytes: int
    """Usable memory left at the peak; negative: short by that much."""
    fits: bool
    max_batch_size: int
    """Largest micro-batch at the setup's sequence length (0: not even batch 1)."""
    max_seq_len: int
    """Longest sequence at the setup's batch (0: not even one token)."""
    limit: str
    """What holds the peak (phase and largest category), in words."""


def usable_bytes(memory_bytes: int) -> int:
    """GPU memory the caching allocator can hand out."""
    return max(0, memory_bytes - CUDA_RESERVE_BYTES)


def _peak(spec: ModelSpec, setup: TrainingSetup, batch: int, seq: int) -> int:
    return evaluate(training_plan(spec, setup), batch, seq).peak_bytes


def _largest(fits: Callable[[int], bool], hi_limit: int) -> int:
    """The largest n in [0, hi_limit] with fits(n) (fits is monotone, fits(0) assumed)."""
    if not fits(1):
        return 0
    lo, hi = 1, 2
    while hi <= hi_limit and fits(hi):
        lo, hi = hi, hi * 2
    hi = min(hi, hi_limit + 1)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if fits(mid):
            lo = mid
        else:
            hi = mid
    return lo


def fit_training(spec: ModelSpec, setup: TrainingSetup, memory_bytes: int) -> Fit:
    """Largest batch and sequence for ``setup`` on a GPU with ``memory_bytes`` of memory."""
    plan_setup = dataclasses.replace(setup, batch=1, seq=1, allow_long_seq=True)
    budget = usable_bytes(memory_bytes)
    peak = _peak(spec, plan_setup, setup.batch, setup.seq)
    max_batch = _largest(lambda b: _peak(spec, plan_setup, b, setup.seq) <= budget, _MAX_BATCH)
    seq_limit = spec.max_position_embeddings if not setup.allow_long_seq else 1 << 24
    max_seq = _largest(lambda s: _peak(spec, plan_setup, setup.batch, s) <= budget, seq_limit)
    mem = evaluate(training_plan(spec, plan_setup), setup.batch, setup.seq)
    at_peak = mem.phases[mem.peak_phase]
    biggest = max(at_peak, key=lambda k: at_peak[k])
    phase = {"forward_peak": "the loss in the forward"}.get(mem.peak_phase, mem.peak_phase)
    limit = f"{phase} ({biggest} {100 * at_peak[biggest] / max(peak, 1):.0f}% of the peak)"
    return Fit(
        memory_bytes=memory_bytes,
        usable_bytes=budget,
        peak_bytes=peak,
        headroom_bytes=budget - peak,
        fits=peak <= budget,
        max_batch_size=max_batch,
        max_seq_len=max_seq,
        limit=limit,
    )
