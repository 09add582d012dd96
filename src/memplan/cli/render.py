"""Rendering a Report: a readable terminal table, or JSON. Shared by every command."""

from __future__ import annotations

import json
import sys
from typing import Any, TextIO

from memplan.report import Item, Report
from memplan.units import format_bytes, format_count, format_flops, format_seconds

__all__ = ["add_output_flags", "format_value", "print_report", "render_tree"]


def add_output_flags(parser: Any) -> None:
    """``--json`` and ``--decimal``, for every command that prints a Report."""
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument(
        "--decimal", action="store_true", help="show memory in GB (10^9) instead of GiB (2^30)"
    )


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
    root: Item, *, decimal: bool = False, max_depth: int = 3, show_formula: bool = True
) -> list[str]:
    """The tree as indented rows: name, value, share of the root, formula."""
    rows: list[tuple[str, str, str, str]] = []
    grand = root.total or 1

    def walk(item: Item, depth: int) -> None:
        name = "  " * depth + item.key
        share = f"{100 * item.total / grand:5.1f}%" if item.unit in ("bytes", "params") else ""
        formula = item.formula if show_formula and not item.children else ""
        rows.append((name, format_value(item.total, item.unit, decimal=decimal), share, formula))
        if depth < max_depth:
            for child in item.children:
                walk(child, depth + 1)

    walk(root, 0)
    w0 = max(len(r[0]) for r in rows)
    w1 = max(len(r[1]) for r in rows)
    return [f"{a:<{w0}}  {b:>{w1}}  {c:>6}  {d}".rstrip() for a, b, c, d in rows]


def print_report(report: Report, args: Any, out: TextIO | None = None) -> None:
    """Print ``report`` as JSON (``--json``) or as a table with notes."""
    out = out or sys.stdout
    if getattr(args, "json", False):
        # strict JSON: a NaN or an infinity anywhere is a bug to surface, not to print
        json.dump(report.to_dict(), out, indent=2, allow_nan=False)
        out.write("\n")
        return
    decimal = getattr(args, "decimal", False)
    out.write(f"{report.model}: {report.kind}\n")
    for key, value in report.setup.items():
        out.write(f"  {key}: {value}\n")
    out.write("\n")
    for line in render_tree(report.breakdown, decimal=decimal):
        out.write(line + "\n")
    for name, section in report.sections.items():
        out.write(f"\n{name}\n")
        for line in render_tree(section, decimal=decimal):
            out.write(line + "\n")
    if report.phases:
        out.write("\nphases\n")
        width = max(len(phase.name) for phase in report.phases)
        for phase in report.phases:
            note = f"  ({phase.note})" if phase.note else ""
            size = format_bytes(phase.bytes, decimal=decimal)
            out.write(f"  {phase.name:<{width}}  {size:>12}{note}\n")
    for note in report.notes:
        out.write(f"note: {note}\n")
