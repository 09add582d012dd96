"""``memplan compare MODEL --gpus N ...``: the analytic per-rank estimate beside the per-rank trace.

Rows per distinct rank group of the analytic report: its peak, each category at the peak and
each phase, beside the trace's figure for the group's first rank. The trace of a plan comes from
``memplan.trace.parallel.trace_parallel_training(spec, setup, plan) -> Report`` (a
``training/parallel`` report with the same ``ranks`` entries); ``--no-trace`` skips it.
``--methods`` adds the published per-GPU formulas (``zero-paper``, ``korthikanti-tp``,
``deepspeed``) beside the worst rank.
"""

from __future__ import annotations

from typing import Any, TextIO

from memplan.cli.compare import Row, _fmt_error, compare_report
from memplan.cli.render import print_report
from memplan.errors import MissingExtraError
from memplan.report import Report
from memplan.specs.parallel import ParallelPlan
from memplan.units import format_bytes

__all__ = ["parallel_rows", "run_parallel"]


def _by_first_rank(report: Report) -> dict[int, dict[str, Any]]:
    return {group["ranks"][0]: group for group in report.scalars["ranks"]}


def _categories(group: dict[str, Any]) -> dict[str, int]:
    return {c["key"]: int(c["total"]) for c in group["breakdown"].get("children", [])}


def parallel_rows(analytic: Report, trace: Report | None) -> list[Row]:
    """Per rank group: peak, categories at the peak, phases (trace None: analytic only)."""
    theirs = _by_first_rank(trace) if trace is not None else {}
    rows = []
    for group in analytic.scalars["ranks"]:
        rank = group["ranks"][0]
        other = theirs.get(rank)
        tag = f"rank {rank}"
        rows.append(Row(f"{tag}/peak", other["peak_bytes"] if other else None, group["peak_bytes"]))
        mine_cats = _categories(group)
        their_cats = _categories(other) if other else {}
        for key, value in mine_cats.items():
            rows.append(Row(f"{tag}/peak/{key}", their_cats.get(key) if other else None, value))
        their_phases = {p["name"]: p["bytes"] for p in other["phases"]} if other else {}
        for phase in group["phases"]:
            rows.append(Row(f"{tag}/phase/{phase['name']}", their_phases.get(phase["name"]),
                            phase["bytes"]))  # fmt: skip
    return rows


def _trace(spec: Any, setup: Any, plan: ParallelPlan) -> Report:
    try:
        from memplan.trace.parallel import trace_parallel_training  # type: ignore[import-not-found]
    except ImportError as exc:
        raise MissingExtraError(
            "tracing a parallel plan needs memplan.trace.parallel, which this build lacks "
            f"({exc}); the analytic per-rank estimate: memplan train (or compare --no-trace)"
        ) from None
    return trace_parallel_training(spec, setup, plan)  # type: ignore[no-any-return]


def run_parallel(args: Any, spec: Any, setup: Any, plan: ParallelPlan, out: TextIO) -> int:
    from memplan.estimate.dist_report import parallel_training_report
    from memplan.formulas.methods_parallel import PARALLEL_METHODS, parallel_method_report

    analytic = parallel_training_report(spec, setup, plan)
    trace = None if args.no_trace else _trace(spec, setup, plan)
    rows = parallel_rows(analytic, trace)
    methods: list[dict[str, Any]] = []
    if args.methods:
        exact = int(analytic.scalars["peak_bytes"])
        for name in PARALLEL_METHODS:
            value = int(parallel_method_report(spec, setup, plan, name).scalars["peak_bytes"])
            methods.append({"method": name, "bytes": value, "error": (value - exact) / exact})
    decimal = getattr(args, "decimal", False)
    if getattr(args, "json", False):
        report = compare_report(
            analytic, trace, rows, methods, None, kind="compare/parallel-training"
        )
        print_report(report, args, out)
        return 0
    out.write(f"{spec.name}: training on {plan.world_size} GPUs, per rank group\n\n")
    width = max(len(r.line) for r in rows)
    out.write(f"{'line':<{width}}  {'trace':>13}  {'analytic':>13}  {'error':>8}\n")
    for r in rows:
        their = format_bytes(r.trace, decimal=decimal) if r.trace is not None else "-"
        mine = format_bytes(r.analytic, decimal=decimal)
        out.write(f"{r.line:<{width}}  {their:>13}  {mine:>13}  {_fmt_error(r.error):>8}\n")
    for m in methods:
        shown = format_bytes(m["bytes"], decimal=decimal)
        out.write(f"method {m['method']:<15} {shown:>13}  {_fmt_error(m['error']):>8} vs exact\n")
    return 0
