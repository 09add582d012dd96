"""``memplan compare MODEL [setup flags] [--methods]``: the analytic engine beside the trace.

Both engines answer the same question (same setup flags as ``memplan train``); the table puts
them side by side line by line — the peak, each category at the peak, the activations by
section, each phase — with each line's error. ``--methods`` adds the textbook methods beside
the exact number and says why each differs, and seed 004's question (the largest batch on an
80 GB device). ``--no-trace`` skips the trace (no torch needed).
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from typing import Any, TextIO

from memplan.cli.common import add_gpu_flags, cuda_context_from_args, gpu_from_args
from memplan.cli.parallel import add_parallel_flags, plan_from_args
from memplan.cli.render import add_output_flags, print_report
from memplan.cli.train import add_training_flags, setup_from_args
from memplan.report import Report
from memplan.units import GB, format_bytes

__all__ = ["Row", "compare_report", "compare_rows", "methods_rows", "register", "run"]

EPILOG = """\
examples:
  memplan compare llama-3.2-1b --batch 1 --seq 2048
  memplan compare ./config.json --precision bf16 --checkpointing full
  memplan compare gpt2-xl --precision fp32 --seq 1024 --methods --no-trace
  memplan compare llama-2-7b --gpus 8 --fsdp full --seq 4096 --no-trace --methods
"""
_SECTIONS = ("embedding", "layers", "final_norm", "lm_head", "loss", "other")


@dataclass(frozen=True, slots=True)
class Row:
    """One line of the comparison: its name, the trace's value and the analytic one."""

    line: str
    trace: int | None
    analytic: int

    @property
    def error(self) -> float | None:
        """Relative error of the analytic value (None when the trace has no such line)."""
        if self.trace is None:
            return None
        if self.trace == 0:
            return 0.0 if self.analytic == 0 else float("inf")
        return (self.analytic - self.trace) / self.trace

    def to_dict(self) -> dict[str, Any]:
        """The row in JSON: ``error`` is None where the trace has no such line or 0 B on it
        (a relative error without a finite value); ``difference_bytes`` is always exact."""
        error = self.error
        return {
            "line": self.line,
            "trace": self.trace,
            "analytic": self.analytic,
            "difference_bytes": None if self.trace is None else self.analytic - self.trace,
            "error": error if error is not None and error != float("inf") else None,
        }


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "compare",
        help="the analytic estimate beside the trace (and the textbook methods)",
        description="Run the analytic engine and the trace engine on the same setup and print "
        "them side by side, line by line, with each line's error.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("model", help="catalog name, Hugging Face id, config.json or folder")
    add_training_flags(parser)
    parser.add_argument("--methods", action="store_true", help="add the textbook methods")
    parser.add_argument("--no-trace", action="store_true", help="skip the trace (no torch)")
    add_gpu_flags(parser)
    add_parallel_flags(parser)
    add_output_flags(parser)
    parser.set_defaults(func=run)


def _sections(item: Any) -> dict[str, int]:
    out = {}
    for child in item.children:
        out[child.key] = int(child.total)
    return out


def compare_rows(analytic: Report, trace: Report) -> list[Row]:
    """Line-by-line rows: peak, categories, activation sections, phases, first step."""
    rows = [Row("peak", int(trace.scalars["peak_bytes"]), int(analytic.scalars["peak_bytes"]))]
    a_cats, t_cats = _sections(analytic.breakdown), _sections(trace.breakdown)
    for key in (
        "parameters", "gradients", "optimizer_states", "activations", "autocast_cache",
        "temporaries", "inputs", "buffers",
    ):  # fmt: skip
        if key in a_cats or key in t_cats:
            rows.append(Row(f"peak/{key}", t_cats.get(key, 0), a_cats.get(key, 0)))
    a_acts = _child_sections(analytic.breakdown)
    t_acts = _child_sections(trace.breakdown)
    for key in _SECTIONS:
        if key in a_acts or key in t_acts:
            rows.append(Row(f"peak/activations/{key}", t_acts.get(key, 0), a_acts.get(key, 0)))
    t_phases = {p.name: p.bytes for p in trace.phases}
    for phase in analytic.phases:
        rows.append(Row(f"phase/{phase.name}", t_phases.get(phase.name), phase.bytes))
    first = trace.scalars.get("first_step_peak_bytes")
    rows.append(Row("first_step_peak", first, int(analytic.scalars["first_step_peak_bytes"])))
    return rows


def _child_sections(root: Any) -> dict[str, int]:
    try:
        acts = root.child("activations")
    except KeyError:
        return {}
    return _sections(acts)


def methods_rows(spec: Any, setup: Any, exact_peak: int) -> list[tuple[str, int, float, str]]:
    """(method, bytes, error vs exact, why) for each textbook method."""
    from memplan.formulas.methods_training import METHODS, method_result

    out = []
    for name in METHODS:
        result = method_result(spec, setup, name)
        error = (result.total_bytes - exact_peak) / exact_peak if exact_peak else 0.0
        out.append((name, result.total_bytes, error, result.why))
    return out


def run(args: Any, out: TextIO | None = None) -> int:
    from memplan.catalog import resolve
    from memplan.estimate.training import estimate_training

    out = out or sys.stdout
    spec = resolve(args.model)
    setup = setup_from_args(args, spec)
    plan = plan_from_args(args, spec, micro_batch=setup.batch, seq=setup.seq)
    if plan is not None:
        from memplan.cli.compare_parallel import run_parallel

        return run_parallel(args, spec, setup, plan, out)
    analytic = estimate_training(spec, setup)
    trace = None
    if not args.no_trace:
        from memplan.trace import require_torch

        require_torch()
        from memplan.trace.training import trace_training

        trace = trace_training(spec, setup)
    rows = compare_rows(analytic, trace) if trace is not None else []
    methods = methods_rows(spec, setup, int(analytic.scalars["peak_bytes"])) if args.methods else []
    question = _seed004_question(spec, setup, args) if args.methods else None
    method_dicts = [{"method": m, "bytes": b, "error": e, "why": w} for m, b, e, w in methods]
    report = compare_report(analytic, trace, rows, method_dicts, question)
    if getattr(args, "json", False):
        print_report(report, args, out)
        return 0
    _print(out, spec, analytic, rows, methods, question, getattr(args, "decimal", False))
    return 0


def compare_report(
    analytic: Report,
    trace: Report | None,
    rows: list[Row],
    methods: list[dict[str, Any]],
    question: dict[str, Any] | None,
    *,
    kind: str = "compare/training",
) -> Report:
    """The comparison as a Report (``kind``): the analytic estimate's tree, setup and phases,
    with scalars ``rows`` (line by line), ``lines_identical``, the two engines' own reports
    (``analytic``, ``trace``), and with ``--methods`` the textbook ``methods`` (and, for one
    GPU, ``seed004_question``)."""
    report = Report(
        kind=kind,
        model=analytic.model,
        breakdown=analytic.breakdown,
        setup=dict(analytic.setup),
        phases=list(analytic.phases),
    )
    report.scalars["rows"] = [row.to_dict() for row in rows]
    if trace is not None:
        identical = sum(1 for row in rows if row.trace == row.analytic)
        report.scalars["lines_identical"] = identical
        report.notes.append(f"{identical} of {len(rows)} lines identical to the byte")
    report.scalars["analytic"] = analytic.to_dict()
    if trace is not None:
        report.scalars["trace"] = trace.to_dict()
    if methods:
        report.scalars["methods"] = methods
    if question is not None:
        report.scalars["seed004_question"] = question
    return report


def _seed004_question(spec: Any, setup: Any, args: Any) -> dict[str, Any]:
    """Seed 004's question for this model: the largest batch on the GPU (80 GB by default)."""
    from memplan.estimate.fit import fit_training
    from memplan.formulas.methods_training import seed004_max_batch
    from memplan.specs.hardware import custom_gpu

    gpu = gpu_from_args(args) or custom_gpu(memory_bytes=80 * GB, name="80 GB")
    found = fit_training(spec, setup, gpu, cuda_context_bytes=cuda_context_from_args(args))
    return {
        "memory_bytes": gpu.memory_bytes,
        "seq": setup.seq,
        "seed004_max_batch": seed004_max_batch(spec, setup.seq, gpu.memory_bytes),
        "exact_max_batch": found.max_batch_size,
    }


def _fmt_error(error: float | None) -> str:
    if error is None:
        return "-"
    if error == float("inf"):
        return "new"
    return f"{100 * error:+.2f}%"


def _print(
    out: TextIO,
    spec: Any,
    analytic: Report,
    rows: list[Row],
    methods: list[tuple[str, int, float, str]],
    question: dict[str, Any] | None,
    decimal: bool,
) -> None:
    setup = ", ".join(f"{k} {v}" for k, v in analytic.setup.items())
    out.write(f"{spec.name}: training ({setup})\n\n")
    if rows:
        width = max(len(r.line) for r in rows)
        out.write(f"{'line':<{width}}  {'trace':>13}  {'analytic':>13}  {'error':>8}\n")
        for r in rows:
            trace = format_bytes(r.trace, decimal=decimal) if r.trace is not None else "-"
            out.write(
                f"{r.line:<{width}}  {trace:>13}  "
                f"{format_bytes(r.analytic, decimal=decimal):>13}  {_fmt_error(r.error):>8}\n"
            )
        exact = sum(1 for r in rows if r.trace is not None and r.trace == r.analytic)
        out.write(f"\n{exact} of {len(rows)} lines identical to the byte\n")
    else:
        peak = int(analytic.scalars["peak_bytes"])
        out.write(f"exact (analytic): {format_bytes(peak, decimal=decimal)} (trace skipped)\n")
    if methods:
        out.write("\ntextbook methods beside exact\n")
        exact_peak = int(analytic.scalars["peak_bytes"])
        name_width = max(len("exact"), *(len(m[0]) for m in methods))
        out.write(f"  {'exact':<{name_width}} {format_bytes(exact_peak, decimal=decimal):>13}\n")
        for name, value, error, why in methods:
            out.write(
                f"  {name:<{name_width}} {format_bytes(value, decimal=decimal):>13}  "
                f"{_fmt_error(error):>8}  {why}\n"
            )
    if question:
        mem = format_bytes(question["memory_bytes"], decimal=True)
        out.write(
            f"\nseed 004's question (largest batch at seq {question['seq']} on {mem}): "
            f"its formula says {question['seed004_max_batch']}, memplan exact says "
            f"{question['exact_max_batch']}\n"
        )
