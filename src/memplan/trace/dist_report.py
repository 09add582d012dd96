"""From one traced (or real) rank to a :class:`~memplan.report.Report`, phases with categories.

The shape is a single-GPU training report's (``memplan.trace`` docstring): ``breakdown`` root
``peak`` with the categories of :data:`memplan.report.TRAINING_CATEGORIES` plus
``communication`` (children from :data:`~memplan.trace.dist_tracker.COMM_KEYS`: FSDP2's
unsharded parameters and gradients, its flat all-gather and reduce-scatter buffers, DDP's
buckets), and ``phases`` (steady state, then ``first_step/...``), each phase with its
``breakdown`` by category. At a peak phase the categories are those live at the peak.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from memplan.estimate.dist_rank import DIST_CATEGORIES as RANK_CATEGORIES
from memplan.report import TRAINING_PHASES, Item, Phase, Report
from memplan.trace.assemble import IterationMarks, setup_dict, sizes_of
from memplan.trace.dist_tracker import COMM_KEYS, dist_category_of
from memplan.trace.timeline import Timeline

__all__ = ["RANK_CATEGORIES", "phase_points", "rank_report"]

_PHASE_NOTES = {
    "after_load": "before forward",
    "end_of_forward": "before backward",
    "optimizer_step": "peak during the step",
    "after_zero_grad": "after clearing gradients",
}


def phase_points(timeline: Timeline, marks: IterationMarks) -> dict[str, int]:
    """Event positions of the six phases (peak phases: where their peak is reached)."""
    backward = timeline.peak_between(marks.end_of_forward, marks.after_backward)[1]
    step = timeline.peak_between(marks.after_backward, marks.after_step)[1]
    return {
        "after_load": marks.start,
        "end_of_forward": marks.end_of_forward,
        "peak_backward": backward,
        "after_backward": marks.after_backward,
        "optimizer_step": step,
        "after_zero_grad": marks.after_zero_grad,
    }


def _peak(timeline: Timeline, marks: IterationMarks) -> tuple[int, int, str]:
    """(bytes, position, phase) of the iteration's highest point."""
    spans = (
        ("forward", marks.start, marks.end_of_forward),
        ("backward", marks.end_of_forward, marks.after_backward),
        ("optimizer_step", marks.after_backward, marks.after_step),
        ("zero_grad", marks.after_step, marks.after_zero_grad),
    )
    best = (-1, 0, "forward")
    for phase, start, stop in spans:
        value, where = timeline.peak_between(start, stop)
        if value > best[0]:
            best = (value, where, phase)
    return best


def category_totals(
    tracker: Any, live: set[int], sizes: list[int]
) -> tuple[dict[str, int], dict[str, int]]:
    """(bytes per category, bytes per communication line) of the ``live`` storages."""
    totals: dict[str, int] = defaultdict(int)
    comm: dict[str, int] = defaultdict(int)
    for key in live:
        category, line = dist_category_of(tracker.flags[key])
        if sizes[key]:
            totals[category] += sizes[key]
            if line:
                comm[line] += sizes[key]
    return dict(totals), dict(comm)


def _breakdown(totals: dict[str, int], comm: dict[str, int]) -> Item:
    root = Item("peak")
    for name in RANK_CATEGORIES:
        if name == "communication":
            if comm:
                node = root.add(Item("communication"))
                for _, line in COMM_KEYS:
                    if comm.get(line):
                        node.leaf(line, comm[line])
        elif totals.get(name) or name in ("parameters", "activations"):
            root.leaf(name, totals.get(name, 0))
    return root


def _phases(
    session: Any, timeline: Timeline, marks: IterationMarks, sizes: list[int], prefix: str
) -> tuple[list[Phase], Item]:
    """The six phases with their categories, and the communication lines of each phase."""
    points = phase_points(timeline, marks)
    phases = []
    lines = Item("communication")
    for name in TRAINING_PHASES:
        live = timeline.live_at(points[name])
        totals, comm = category_totals(session.tracker, live, sizes)
        breakdown = {k: totals[k] for k in RANK_CATEGORIES if totals.get(k)}
        phases.append(
            Phase(
                f"{prefix}{name}",
                timeline.at(points[name]),
                _PHASE_NOTES.get(name, ""),
                breakdown=breakdown,
            )
        )
        node = lines.add(Item(f"{prefix}{name}"))
        for _, line in COMM_KEYS:
            if comm.get(line):
                node.leaf(line, comm[line])
    return phases, lines


def rank_report(name: str, setup: Any, run: Any) -> Report:
    """The Report of one rank (``run``: a :class:`~memplan.trace.distributed.ParallelRun`)."""
    session = run.session
    sizes = sizes_of(session, rounded=True)
    timeline = Timeline.build(sizes, session.tracker.events)
    steady, first = run.iterations[1], run.iterations[0]
    peak, where, peak_phase = _peak(timeline, steady)
    totals, comm = category_totals(session.tracker, timeline.live_at(where), sizes)
    report = Report(
        kind="trace/training/rank",
        model=name,
        breakdown=_breakdown(totals, comm),
        setup=setup_dict(setup),
    )
    phases, lines = _phases(session, timeline, steady, sizes, "")
    report.phases = phases + _phases(session, timeline, first, sizes, "first_step/")[0]
    report.sections["communication"] = lines
    report.scalars = {
        "rank": run.rank,
        "world_size": run.plan.world_size,
        "peak_bytes": peak,
        "peak_phase": peak_phase,
        "first_step_peak_bytes": _peak(timeline, first)[0],
        "total_params": run.n_params,
        "local_params": run.n_local_params,
        "trace_seconds": round(run.seconds, 3),
        "n_ops": session.tracker.n_ops,
    }
    report.notes.extend(run.notes)
    if not session.cuda:
        report.notes.append("CPU target: what the CPU kernels allocate (no rounding)")
    return report
