"""``trace_parallel_training(model, setup, plan) -> Report``: a plan traced rank by rank.

Each traced rank runs in this process under a fake process group of the plan's world size
(:mod:`memplan.trace.distributed`): full size, no GPU, one rank after another. By default the
traced ranks are the first rank of each distinct rank group of the analytic engine
(:func:`memplan.estimate.distributed.rank_groups`: rank 0, and e.g. the last data-parallel rank
when FSDP2's padding makes it differ); ``ranks=`` picks them by hand.

The report has the shape of the analytic per-rank report
(:func:`memplan.estimate.dist_report.parallel_training_report`), ``kind="training/parallel"``
and ``method="trace"``: ``peak_bytes`` / ``peak_phase`` / ``worst_rank`` of the worst traced
rank, ``ranks`` (one entry per traced rank: ``ranks`` ``[r]``, ``stage``, ``peak_bytes``,
``peak_phase``, ``breakdown``, ``phases`` with a per-category ``breakdown`` each), ``plan``;
``breakdown`` and ``phases`` are the worst rank's. Each entry's ``communication`` gives the
communication lines per phase (FSDP2's unsharded parameters and gradients, its flat
all-gather and reduce-scatter buffers, DDP's buckets).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from memplan.errors import SetupError
from memplan.report import Report
from memplan.specs.model import ModelSpec
from memplan.specs.parallel import ParallelPlan
from memplan.specs.training import TrainingSetup

__all__ = ["UNTRACEABLE", "default_ranks", "trace_parallel_training"]

UNTRACEABLE = (
    "cannot be traced: DeepSpeed's runtime at full size (ZeRO-3 traces only with patches, "
    "ZeRO-1/2 not at all under fake tensors), offload (no host/device split), context and "
    "expert parallelism; the analytic engine answers and the gloo runs hold it at small size"
)
"""What the trace does not run, in one line (DIST-NOTES.md, "Stays analytic")."""

Progress = Callable[[str, float], None]


def default_ranks(
    model: ModelSpec | dict[str, Any], setup: TrainingSetup, plan: ParallelPlan
) -> list[int]:
    """The first rank of each distinct rank group of the analytic engine (rank 0 without a
    ModelSpec)."""
    if not isinstance(model, ModelSpec):
        return [0]
    from memplan.estimate.distributed import rank_groups

    return sorted({group.ranks[0] for group in rank_groups(model, setup, plan)})


def trace_parallel_training(
    model: ModelSpec | dict[str, Any],
    setup: TrainingSetup,
    plan: ParallelPlan,
    *,
    ranks: Sequence[int] | None = None,
    progress: Progress | None = None,
) -> Report:
    """Trace ``ranks`` (default: :func:`default_ranks`) of ``plan``, one after another."""
    from memplan.trace import require_torch

    require_torch()
    from memplan.trace.build import config_of
    from memplan.trace.dist_report import rank_report
    from memplan.trace.distributed import fake_process_group, run_parallel_training
    from memplan.trace.layout import check_traceable

    check_traceable(plan)
    name, config = config_of(model)
    chosen = list(ranks) if ranks is not None else default_ranks(model, setup, plan)
    for rank in chosen:
        if not 0 <= rank < plan.world_size:
            raise SetupError(f"rank {rank} is not in the plan's {plan.world_size} ranks")
    tick = progress or (lambda message, fraction: None)
    reports = []
    for i, rank in enumerate(chosen):
        tick(f"rank {rank} ({i + 1} of {len(chosen)})", i / len(chosen))
        with fake_process_group(rank, plan.world_size):
            run = run_parallel_training(config, setup, plan, fake=True, name=name)
        reports.append(rank_report(name, setup, run))
    tick("done", 1.0)
    return combined_report(name, setup, plan, reports)


def rank_entry(report: Report) -> dict[str, Any]:
    """One traced rank as an entry of ``ranks`` (the analytic report's shape)."""
    rank = int(report.scalars["rank"])
    steady = [p for p in report.phases if "/" not in p.name]
    return {
        "ranks": [rank],
        "stage": 0,
        "peak_bytes": report.scalars["peak_bytes"],
        "peak_phase": report.scalars["peak_phase"],
        "breakdown": report.breakdown.to_dict(),
        "phases": [
            {"name": p.name, "bytes": p.bytes, "breakdown": dict(p.breakdown)} for p in steady
        ],
        "communication": report.sections["communication"].to_dict()
        if "communication" in report.sections
        else {},
        "first_step_peak_bytes": report.scalars["first_step_peak_bytes"],
        "trace_seconds": report.scalars["trace_seconds"],
    }


def combined_report(
    name: str, setup: TrainingSetup, plan: ParallelPlan, reports: list[Report]
) -> Report:
    """The ``training/parallel`` report of the traced ranks (module docstring)."""
    from memplan.estimate.dist_report import plan_dict
    from memplan.trace.assemble import setup_dict

    worst = max(reports, key=lambda r: r.scalars["peak_bytes"])
    info = setup_dict(setup)
    info["gpus"] = plan.world_size
    report = Report(
        kind="training/parallel",
        model=name,
        breakdown=worst.breakdown,
        setup=info,
        phases=[p for p in worst.phases if "/" not in p.name],
    )
    report.scalars = {
        "peak_bytes": worst.scalars["peak_bytes"],
        "peak_phase": worst.scalars["peak_phase"],
        "worst_rank": worst.scalars["rank"],
        "method": "trace",
        "ranks": [rank_entry(r) for r in reports],
        "plan": plan_dict(plan),
        "micro_batches": plan.resolved_micro_batches(setup.batch),
        "global_batch": plan.global_batch_size(setup.batch),
        "communication": [],
        "trace_seconds": round(sum(r.scalars["trace_seconds"] for r in reports), 3),
    }
    report.notes = [
        f"traced under a fake process group of {plan.world_size} ranks (torchtitan's "
        "estimation recipe): ranks " + ", ".join(str(r.scalars["rank"]) for r in reports),
        *worst.notes,
    ]
    return report
