"""Will it fit: one verdict for every command (train, infer, serve-capacity, the Python API).

A process's GPU memory is its tensors' peak (``peak_bytes``: the allocated bytes, what
``torch.cuda.max_memory_allocated`` counts for the tensors) plus what lies outside them, each a
named line (:func:`memplan.formulas.overheads.outside_tensors_item`): the CUDA context, the
cuBLAS workspaces of the GPU's architecture, and, where the trace engine's allocator model gives
it, the caching allocator's reserved-but-unallocated bytes. :func:`fit_on_gpu` is the one
verdict::

    usable   = GPU memory - outside lines
    headroom = usable - required (the tensors' peak)
    fits     = headroom >= 0

Inverse questions (the largest batch, the longest sequence) bisect a monotone peak with
:func:`largest`; the training ones are here (:func:`fit_training`), the inference one in
:mod:`memplan.estimate.inference`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from memplan.estimate.train_step import _plan_key
from memplan.estimate.training import TrainingPlan, evaluate, training_plan
from memplan.formulas.overheads import outside_tensors_item
from memplan.report import Item
from memplan.specs.hardware import Gpu
from memplan.specs.model import ModelSpec
from memplan.specs.training import TrainingSetup

__all__ = [
    "TRAINING_WORKSPACES",
    "Fit",
    "TrainingFit",
    "fit_on_gpu",
    "fit_scalars",
    "fit_training",
    "largest",
    "training_fit_scalars",
    "training_usable_bytes",
]

TRAINING_WORKSPACES = 2
"""cuBLAS workspaces of a training step: one per (handle, stream), and autograd runs the
backward on its own thread, whose handle gets its own (as the trace engine counts them)."""
_MAX_BATCH = 1 << 20
_MAX_SEQ = 1 << 24


@dataclass(frozen=True, slots=True, kw_only=True)
class Fit:
    """The verdict for one GPU."""

    memory_bytes: int
    """The GPU's memory (the catalog's driver total, or as given)."""
    usable_bytes: int
    """What the tensors may use: the memory less the ``outside`` lines."""
    required_bytes: int
    """The tensors' peak (``peak_bytes``)."""
    headroom_bytes: int
    """``usable - required``; negative: short by that much."""
    fits: bool
    limit: str
    """What holds the peak (phase and largest category), in words."""
    outside: Item = field(compare=False)
    """The named lines subtracted from the memory (``outside_tensors``)."""


def fit_on_gpu(memory_bytes: int, required_bytes: int, outside: Item, limit: str = "") -> Fit:
    """The one fit verdict: ``required_bytes`` of tensors beside the ``outside`` lines."""
    usable = max(0, memory_bytes - int(outside.total))
    headroom = usable - required_bytes
    return Fit(
        memory_bytes=memory_bytes,
        usable_bytes=usable,
        required_bytes=required_bytes,
        headroom_bytes=headroom,
        fits=headroom >= 0,
        limit=limit,
        outside=outside,
    )


def fit_scalars(fit: Fit) -> dict[str, object]:
    """The JSON fields of a verdict: the outside lines each as ``<line>_bytes``, then
    ``usable_bytes``, ``headroom_bytes``, ``fits``, ``limit``."""
    scalars: dict[str, object] = {
        f"{child.key}_bytes": int(child.total) for child in fit.outside.children
    }
    scalars.update(
        gpu_memory_bytes=fit.memory_bytes,
        usable_bytes=fit.usable_bytes,
        headroom_bytes=fit.headroom_bytes,
        fits=fit.fits,
        limit=fit.limit,
    )
    return scalars


def largest(fits: Callable[[int], bool], limit: int, start: int = 1) -> int:
    """The largest n in [1, limit] with ``fits(n)``, or 0 when not even 1 fits (``fits`` must
    be monotone: true up to some n, false beyond). The search brackets the answer by doubling
    (or halving) from ``start`` (the setup's own value is a good one), then bisects."""
    start = min(max(start, 1), limit)
    if fits(start):
        low, high = start, start * 2
        while high <= limit and fits(high):
            low, high = high, high * 2
        high = min(high, limit + 1)
    else:
        low, high = start // 2, start
        while low >= 1 and not fits(low):
            low, high = low // 2, low
        if low < 1:
            return 0
    while high - low > 1:
        middle = (low + high) // 2
        if fits(middle):
            low = middle
        else:
            high = middle
    return low


def training_usable_bytes(gpu: Gpu, *, cuda_context_bytes: int | None = None) -> int:
    """What a training step's tensors may use on ``gpu``: its memory less the CUDA context and
    the two cuBLAS workspaces of its architecture (the per-rank verdicts of a plan use it)."""
    outside = outside_tensors_item(
        gpu, cuda_context_bytes=cuda_context_bytes, n_workspaces=TRAINING_WORKSPACES
    )
    return max(0, gpu.memory_bytes - int(outside.total))


@dataclass(frozen=True, slots=True, kw_only=True)
class TrainingFit:
    """A training step's verdict and the inverse questions at its setup."""

    fit: Fit
    max_batch_size: int
    """Largest micro-batch at the setup's sequence length (0: not even batch 1)."""
    max_seq_len: int
    """Longest sequence at the setup's batch (0: not even one token)."""


def _training_limit(plan: TrainingPlan, setup: TrainingSetup) -> str:
    """What holds the peak of ``setup`` (evaluated on ``plan``), in words."""
    mem = evaluate(plan, setup.batch, setup.seq)
    at_peak = mem.phases[mem.peak_phase]
    biggest = max(at_peak, key=lambda k: at_peak[k])
    phase = {"forward_peak": "the loss in the forward"}.get(mem.peak_phase, mem.peak_phase)
    share = 100 * at_peak[biggest] / max(mem.peak_bytes, 1)
    return f"{phase} ({biggest} {share:.0f}% of the peak)"


def fit_training(
    spec: ModelSpec,
    setup: TrainingSetup,
    gpu: Gpu,
    *,
    cuda_context_bytes: int | None = None,
) -> TrainingFit:
    """The verdict for ``setup`` on ``gpu``, the largest batch and the longest sequence."""
    plan = training_plan(spec, _plan_key(setup))
    outside = outside_tensors_item(
        gpu, cuda_context_bytes=cuda_context_bytes, n_workspaces=TRAINING_WORKSPACES
    )
    peak = evaluate(plan, setup.batch, setup.seq).peak_bytes
    verdict = fit_on_gpu(gpu.memory_bytes, peak, outside, _training_limit(plan, setup))
    budget = verdict.usable_bytes

    def fits(batch: int, seq: int) -> bool:
        return evaluate(plan, batch, seq).peak_bytes <= budget

    seq_limit = _MAX_SEQ if setup.allow_long_seq else spec.max_position_embeddings
    return TrainingFit(
        fit=verdict,
        max_batch_size=largest(lambda b: fits(b, setup.seq), _MAX_BATCH, setup.batch),
        max_seq_len=largest(lambda s: fits(setup.batch, s), seq_limit, setup.seq),
    )


def training_fit_scalars(
    spec: ModelSpec,
    setup: TrainingSetup,
    gpu: Gpu,
    peak_bytes: int,
    *,
    method: str = "exact",
    peak_phase: str = "",
    cuda_context_bytes: int | None = None,
) -> dict[str, object]:
    """The verdict's JSON fields for a training report (``peak_bytes`` from ``method``).

    The exact method adds the largest batch, the longest sequence and, when the step does not
    fit, what to try (:func:`memplan.estimate.advice.what_to_try`); a textbook method is judged
    by the same verdict on its own peak, and seed 004's method adds its own answer to its
    question (``max_batch_size`` by its formula, on the whole memory, as the seed does)."""
    from memplan.formulas.methods_training import canonical_method, seed004_max_batch

    method = canonical_method(method)
    scalars: dict[str, object] = {"gpu": gpu.name}
    if method == "exact":
        found = fit_training(spec, setup, gpu, cuda_context_bytes=cuda_context_bytes)
        scalars.update(fit_scalars(found.fit))
        scalars.update(max_batch_size=found.max_batch_size, max_seq_len=found.max_seq_len)
        if not found.fit.fits:
            scalars["what_to_try"] = _levers(spec, setup, found.fit, peak_phase)
        return scalars
    outside = outside_tensors_item(
        gpu, cuda_context_bytes=cuda_context_bytes, n_workspaces=TRAINING_WORKSPACES
    )
    verdict = fit_on_gpu(gpu.memory_bytes, peak_bytes, outside, f"the {method} method's peak")
    scalars.update(fit_scalars(verdict))
    if method == "fp32-adamw-count":
        scalars["max_batch_size"] = seed004_max_batch(spec, setup.seq, gpu.memory_bytes)
    return scalars


def _levers(
    spec: ModelSpec, setup: TrainingSetup, verdict: Fit, peak_phase: str
) -> list[dict[str, object]]:
    """The levers of :func:`memplan.estimate.advice.what_to_try` as JSON records."""
    from memplan.estimate.advice import what_to_try

    return [
        {
            "lever": lever.name.split(" (")[0].split(":")[0],
            "name": lever.name,
            "flags": lever.flags,
            "saved_bytes": lever.saved_bytes,
            "peak_bytes": lever.peak_bytes,
            "fits": lever.fits,
            "gpus": lever.gpus,
        }
        for lever in what_to_try(
            spec,
            setup,
            verdict.usable_bytes,
            peak_bytes=verdict.required_bytes,
            peak_phase=peak_phase,
        )
    ]
