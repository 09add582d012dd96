"""Rendering a Report: a readable terminal table, or JSON. Shared by every command."""

from __future__ import annotations

import json
import sys
from typing import Any, TextIO

from memplan.report import Item, Report
from memplan.units import (
    format_bytes,
    format_count,
    format_flops,
    format_seconds,
    render_marks,
)

__all__ = [
    "OUTSIDE_LINES",
    "add_output_flags",
    "add_plot_flag",
    "fit_phrase",
    "format_value",
    "none_if_zero",
    "outside_lines",
    "plot_if_asked",
    "print_report",
    "render_tree",
    "report_json",
    "verdict_line",
]


FOLD_SHARE = 0.001
"""Rows under 0.1 % of the root's total fold into their parent in the text table (``--all``
shows them)."""


def add_output_flags(parser: Any) -> None:
    """``--json``, ``--decimal`` and ``--all``, for every command that prints a Report."""
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument(
        "--decimal",
        action="store_true",
        help="show memory in GB (10^9) instead of GiB (2^30), notes included",
    )
    parser.add_argument(
        "--all", action="store_true", help="show every row (rows under 0.1 %% of the total fold)"
    )


def add_plot_flag(parser: Any) -> None:
    """``--plot FILE``: the breakdown bar and the phase timeline as a PNG or SVG image."""
    parser.add_argument(
        "--plot",
        metavar="FILE",
        help="also draw the breakdown and the phases to FILE (.png or .svg; needs the plot extra)",
    )


def plot_if_asked(report: Report, args: Any) -> None:
    """Draw ``report`` to ``args.plot`` when given; matplotlib is imported only then."""
    path = getattr(args, "plot", None)
    if path:
        from memplan.cli.plot import plot_report

        plot_report(report.to_dict(), path)


def report_json(report: Report, *, decimal: bool = False) -> str:
    """The report's JSON text, exactly as ``--json`` prints it (the web API returns the same).

    Strict JSON: a NaN or an infinity anywhere is a bug to surface (ValueError), not to print.
    """
    return json.dumps(report.to_dict(decimal=decimal), indent=2, allow_nan=False) + "\n"


def format_value(value: float, unit: str, *, decimal: bool = False) -> str:
    if unit == "bytes":
        return format_bytes(value, decimal=decimal)
    if unit == "params":
        return format_count(value)
    if unit == "flops":
        return format_flops(value)
    if unit == "s":
        return format_seconds(value)
    return f"{value:,} {unit}"


def render_tree(
    root: Item,
    *,
    decimal: bool = False,
    max_depth: int = 3,
    show_formula: bool = True,
    fold: bool = True,
) -> list[str]:
    """The tree as indented rows: name, value, share of the root, formula.

    With ``fold``, rows under :data:`FOLD_SHARE` of the root's total fold into their parent:
    one ``(N rows under 0.1 %)`` line per parent carries their sum (none where every child
    is that small: the parent's row is their sum)."""
    rows: list[tuple[str, str, str, str]] = []
    grand = root.total or 1
    shares = root.unit in ("bytes", "params")

    def walk(item: Item, depth: int) -> None:
        name = "  " * depth + item.key
        share = f"{100 * item.total / grand:5.1f}%" if shares else ""
        formula = item.formula if show_formula and not item.children else ""
        rows.append((name, format_value(item.total, item.unit, decimal=decimal), share, formula))
        if depth >= max_depth:
            return
        small = [c for c in item.children if fold and abs(c.total) < FOLD_SHARE * abs(grand)]
        for child in item.children:
            if child not in small:
                walk(child, depth + 1)
        if small and len(small) < len(item.children):  # all small: the parent row says it
            total = sum(c.total for c in small)
            label = "  " * (depth + 1) + f"({len(small)} row{'s' * (len(small) > 1)} under 0.1%)"
            value = format_value(total, item.unit, decimal=decimal)
            rows.append((label, value, f"{100 * total / grand:5.1f}%" if shares else "", ""))

    walk(root, 0)
    w0 = max(len(r[0]) for r in rows)
    w1 = max(len(r[1]) for r in rows)
    return [f"{a:<{w0}}  {b:>{w1}}  {c:>6}  {d}".rstrip() for a, b, c, d in rows]


def print_report(report: Report, args: Any, out: TextIO | None = None) -> None:
    """Print ``report`` as JSON (``--json``) or as a table with notes."""
    out = out or sys.stdout
    decimal = getattr(args, "decimal", False)
    if getattr(args, "json", False):
        out.write(report_json(report, decimal=decimal))
        return
    fold = not getattr(args, "all", False)
    out.write(f"{report.model}: {report.kind}\n")
    for key, value in report.setup.items():
        if value is not None:
            out.write(f"  {key}: {value}\n")
    out.write("\n")
    for line in render_tree(report.breakdown, decimal=decimal, fold=fold):
        out.write(line + "\n")
    for name, section in report.sections.items():
        out.write(f"\n{name}\n")
        for line in render_tree(section, decimal=decimal, fold=fold):
            out.write(line + "\n")
    if report.phases:
        out.write("\nphases\n")
        width = max(len(phase.name) for phase in report.phases)
        for phase in report.phases:
            note = f"  ({phase.note})" if phase.note else ""
            size = format_bytes(phase.bytes, decimal=decimal)
            out.write(f"  {phase.name:<{width}}  {size:>12}{note}\n")
    for note in report.notes:
        out.write(f"note: {render_marks(note, decimal=decimal)}\n")


def fit_phrase(gpu: str, memory_bytes: int, headroom_bytes: int, *, decimal: bool = False,
               usable_bytes: int | None = None) -> str:  # fmt: skip
    """``fits on H100-SXM-80GB (79.65 GiB): 12.30 GiB to spare`` or ``does not fit on ...:
    short by ...``; ``usable_bytes`` when the budget is less than the GPU's memory."""
    size = format_bytes(memory_bytes, decimal=decimal)
    if usable_bytes is not None and usable_bytes != memory_bytes:
        size += f", {format_bytes(usable_bytes, decimal=decimal)} usable"
    if headroom_bytes >= 0:
        return f"fits on {gpu} ({size}): {format_bytes(headroom_bytes, decimal=decimal)} to spare"
    return (
        f"does not fit on {gpu} ({size}): short by {format_bytes(-headroom_bytes, decimal=decimal)}"
    )


def verdict_line(question: str, answer: str, fit: str = "") -> str:
    """The one line every command ends with: what was asked, the answer, and the fit."""
    return f"verdict: {question}: {answer}" + (f"; {fit}" if fit else "")


def none_if_zero(value: int) -> str:
    """A largest-that-fits count: ``none`` when not even one fits."""
    return f"{value:,}" if value else "none"


OUTSIDE_LINES = ("cuda_context", "cublas_workspace", "allocator_reserved")
"""The named lines outside the tensors that a fit verdict counts (memplan.estimate.fit)."""


def outside_lines(scalars: dict[str, Any], *, decimal: bool = False) -> list[str]:
    """What the verdict counts beside the tensors' peak, by name, and what holds the peak."""
    if "usable_bytes" not in scalars:
        return []
    parts = [
        f"{name} {format_bytes(scalars[name + '_bytes'], decimal=decimal)}"
        for name in OUTSIDE_LINES
        if name + "_bytes" in scalars
    ]
    usable = format_bytes(scalars["usable_bytes"], decimal=decimal)
    lines = [f"outside the tensors: {', '.join(parts)} ({usable} usable for tensors)"]
    if scalars.get("limit"):
        lines.append(f"limited by: {scalars['limit']}")
    return lines
