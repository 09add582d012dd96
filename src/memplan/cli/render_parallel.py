"""Text rendering of a per-rank report: one column per distinct rank group, the communication
table, the verdict per rank group and the computed advice."""

from __future__ import annotations

from typing import Any, TextIO

from memplan.estimate.dist_rank import DIST_CATEGORIES
from memplan.report import Report
from memplan.units import format_bytes, format_seconds

__all__ = ["print_parallel_report"]


def _rank_label(ranks: list[int]) -> str:
    if len(ranks) == 1:
        return f"rank {ranks[0]}"
    if ranks == list(range(ranks[0], ranks[0] + len(ranks))):
        return f"ranks {ranks[0]}-{ranks[-1]}"
    return f"rank {ranks[0]} +{len(ranks) - 1}"


def _table(rows: list[list[str]], out: TextIO) -> None:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        cells = [row[0].ljust(widths[0])] + [
            c.rjust(w) for c, w in zip(row[1:], widths[1:], strict=True)
        ]
        out.write("  ".join(cells).rstrip() + "\n")


def _rank_table(groups: list[dict[str, Any]], decimal: bool, out: TextIO) -> None:
    header = ["", *(f"stage {g['stage']}: {_rank_label(g['ranks'])}" for g in groups)]
    rows = [header]
    peaks = [
        {child["key"]: child["total"] for child in g["breakdown"].get("children", [])}
        for g in groups
    ]
    for cat in DIST_CATEGORIES:
        values = [at.get(cat, 0) for at in peaks]
        if any(values):
            rows.append([cat, *(format_bytes(v, decimal=decimal) for v in values)])
    rows.append(["peak", *(format_bytes(g["peak_bytes"], decimal=decimal) for g in groups)])
    rows.append(["peak phase", *(g["peak_phase"] for g in groups)])
    _table(rows, out)


def _comm_table(comm: list[dict[str, Any]], decimal: bool, out: TextIO) -> None:
    rows = [
        [
            "stage",
            "parallelism",
            "collective",
            "what",
            "buffer",
            "calls",
            "group",
            "link",
            "time/step",
        ]
    ]
    for c in comm:
        rows.append(
            [
                str(c["stage"]), c["parallelism"], c["op"], c["what"],
                format_bytes(c["bytes"], decimal=decimal), str(c["calls_per_step"]),
                str(c["group_size"]), c["link"],
                format_seconds(c["seconds_per_step"]) if c["seconds_per_step"] else "-",
            ]
        )  # fmt: skip
    _table(rows, out)


def print_parallel_report(report: Report, args: Any, out: TextIO) -> None:
    """The text form of a ``training/parallel`` report."""
    decimal = getattr(args, "decimal", False)
    s = report.scalars
    plan = s["plan"]
    out.write(f"{report.model}: training on {plan['world_size']} GPUs ")
    out.write(
        f"(dp {plan['dp_degree']}, tp {plan['tp_degree']}, pp {plan['pp_degree']}, "
        f"cp {plan['cp_degree']}, ep {plan['ep_degree']}, {plan['sharding']}"
        f"{', sp' if plan['sequence_parallel'] else ''})\n"
    )
    for key, value in report.setup.items():
        out.write(f"  {key}: {value}\n")
    out.write(
        f"  micro-batches per step: {s['micro_batches']}, global batch: {s['global_batch']}\n\n"
    )
    _rank_table(s["ranks"], decimal, out)
    if s["communication"]:
        out.write("\ncommunication per rank and step\n")
        _comm_table(s["communication"], decimal, out)
    if "host_bytes_per_node" in s:
        host = format_bytes(s["host_bytes_per_node"], decimal=decimal)
        out.write(f"\noffloaded: {host} per node ({plan['offload_device']})")
    out.write(f"\npeak: {format_bytes(s['peak_bytes'], decimal=decimal)} on rank {s['worst_rank']}")
    out.write(f" ({s['peak_phase']})\n")
    if "gpu" in s:
        usable = format_bytes(s["usable_bytes"], decimal=decimal)
        for g in s["ranks"]:
            label = f"stage {g['stage']} ({_rank_label(g['ranks'])})"
            room = format_bytes(abs(g["headroom_bytes"]), decimal=decimal)
            verdict = (
                f"fits with {room} to spare" if g["fits"] else f"does NOT fit: short by {room}"
            )
            out.write(f"  {label}: {verdict} of {usable} usable on {s['gpu']}\n")
        for line in s.get("advice", []):
            out.write(f"  advice: {line}\n")
    if "step_seconds" in s:
        out.write(
            f"\nstep: {format_seconds(s['step_seconds'])} (compute "
            f"{format_seconds(s['compute_seconds'])}, bubble {format_seconds(s['bubble_seconds'])}, "
            f"exposed communication {format_seconds(s['exposed_comm_seconds'])}"
            + (
                f", offload {format_seconds(s['offload_seconds'])}"
                if s.get("offload_seconds")
                else ""
            )
            + "); "
            f"MFU {100 * s['mfu']:.1f}%, {s['tokens_per_s']:,.0f} tokens/s\n"
        )
    for note in report.notes:
        out.write(f"note: {note}\n")
