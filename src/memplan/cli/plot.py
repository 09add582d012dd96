"""Images of a report (``--plot FILE``) and of a sweep (``memplan sweep --plot FILE``).

Everything is drawn from the report's JSON (``Report.to_dict()``, the same data the web page
draws), in two steps: ``*_plot_data`` picks the numbers to draw (pure Python, tested against the
CLI's JSON), ``draw_*`` draws exactly those numbers with matplotlib. matplotlib is imported only
here, and this module only when a plot is asked for, so the CLI's start-up does not change.
The format follows the file's extension: ``.png`` or ``.svg``.

A report with per-rank results (a ``ranks`` list, each with ``breakdown`` and ``phases``) gets
one bar per rank; a single-GPU report is the one-rank case.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from memplan.errors import SetupError
from memplan.units import GIB

__all__ = [
    "draw_report",
    "draw_sweep",
    "plot_report",
    "plot_sweep",
    "report_plot_data",
    "sweep_plot_data",
]

FORMATS = (".png", ".svg")
UNIT_SCALES = {"bytes": (GIB, "GiB"), "params": (1e9, "billion parameters"),
               "flops": (1e12, "TFLOP"), "s": (1.0, "s")}  # fmt: skip
"""Axis unit per Report unit (memory in GiB = 2^30 bytes, as everywhere in memplan)."""
LIMIT_KEYS = (("usable_bytes", "usable GPU memory"), ("gpu_memory_bytes", "GPU memory"))
"""The memory line drawn across the bars, first found wins (the fit verdict's budget)."""


def _check_path(path: str | Path) -> Path:
    out = Path(path)
    if out.suffix.lower() not in FORMATS:
        raise SetupError(f"--plot {path}: give a file name ending in .png or .svg")
    if not out.parent.is_dir():
        raise SetupError(f"--plot {path}: the folder {out.parent} does not exist")
    return out


def _columns(data: dict[str, Any]) -> list[tuple[str, dict[str, Any], list[dict[str, Any]]]]:
    """(label, breakdown, phases) per rank; a report without ``ranks`` is one column."""
    ranks = data.get("ranks")
    if isinstance(ranks, list) and ranks:
        return [
            (
                str(r.get("name") or r.get("label") or f"rank {i}"),
                r["breakdown"],
                r.get("phases", []),
            )
            for i, r in enumerate(ranks)
        ]
    return [("", data["breakdown"], data.get("phases", []))]


def _limit(data: dict[str, Any]) -> tuple[str, int] | None:
    for key, label in LIMIT_KEYS:
        if isinstance(data.get(key), int | float) and data[key] > 0:
            return label, int(data[key])
    return None


def report_plot_data(data: dict[str, Any]) -> dict[str, Any]:
    """The numbers a report's plot shows, in the report's base unit (bytes, FLOPs, ...).

    ``bars``: per column, the breakdown's top-level children ``(key, total)``; ``phases``: per
    timeline (``steady state``, ``first step``), per phase, ``(name, {category: bytes})``
    (``{"total": bytes}`` when the engine gives no categories); ``limit``: the GPU line.
    """
    columns = _columns(data)
    unit = columns[0][1].get("unit", "bytes")
    bars = []
    for label, tree, _ in columns:
        children = tree.get("children") or [tree]
        bars.append((label, [(c["key"], c["total"]) for c in children]))
    timelines: list[tuple[str, list[tuple[str, dict[str, int]]]]] = []
    for label, _, phases in columns:
        if phases:
            timelines.append(((label + " " if label else "") + "steady state", _phase_rows(phases)))
    first = data.get("first_step_phases")
    if first and "ranks" not in data:
        timelines.append(("first step", _phase_rows(first)))
    return {"unit": unit, "bars": bars, "phases": timelines, "limit": _limit(data)}


def _phase_rows(phases: list[dict[str, Any]]) -> list[tuple[str, dict[str, int]]]:
    return [(p["name"], dict(p.get("breakdown") or {"total": p["bytes"]})) for p in phases]


def _require_matplotlib() -> None:
    try:
        import matplotlib.figure  # noqa: F401
    except ImportError:
        raise SetupError(
            "--plot needs matplotlib: pip install 'memplan[plot]' (or make setup)"
        ) from None


def _new_figure(n_axes: int) -> tuple[Any, list[Any]]:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6 + 5 * (n_axes - 1), 4.8), layout="constrained")
    axes = fig.subplots(1, n_axes, squeeze=False)[0]
    return fig, list(axes)


def _key_order(groups: list[list[dict[str, float]]]) -> list[str]:
    """Every non-zero key, in first-seen order: one colour per category across the figure."""
    keys: list[str] = []
    for rows in groups:
        for row in rows:
            keys.extend(k for k in row if k not in keys and row[k])
    return keys


def _stack(ax: Any, labels: list[str], rows: list[dict[str, float]], scale: float,
           colors: dict[str, Any]) -> None:  # fmt: skip
    """Stacked bars: one bar per label, one colour per key."""
    bottoms = [0.0] * len(rows)
    for key in colors:
        heights = [row.get(key, 0) / scale for row in rows]
        if any(heights):
            ax.bar(labels, heights, bottom=bottoms, color=colors[key], width=0.6)
            bottoms = [b + h for b, h in zip(bottoms, heights, strict=True)]
    ax.set_ylim(0, max([*bottoms, 1e-9]) * 1.08)
    ax.set_xlim(-0.5 - 0.5 / len(rows), len(rows) - 0.5 + 0.5 / len(rows))


def draw_report(data: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    """The figure of a report's JSON, and the numbers it draws (:func:`report_plot_data`)."""
    _require_matplotlib()
    from matplotlib.patches import Patch

    plot = report_plot_data(data)
    scale, unit_label = UNIT_SCALES.get(plot["unit"], (1.0, plot["unit"]))
    bar_rows = [dict(rows) for _, rows in plot["bars"]]
    phase_labels, phase_rows = [], []
    for timeline, phases in plot["phases"]:
        for name, parts in phases:
            phase_labels.append(f"{timeline}\n{name}" if len(plot["phases"]) > 1 else name)
            phase_rows.append(parts)
    keys = _key_order([bar_rows, phase_rows])
    palette = _palette(len(keys))
    colors = {key: palette[i] for i, key in enumerate(keys)}
    fig, axes = _new_figure(2 if plot["phases"] else 1)
    ax = axes[0]
    _stack(ax, [label or "peak" for label, _ in plot["bars"]], bar_rows, scale, colors)
    handles = [Patch(color=colors[k], label=k) for k in keys]
    if plot["limit"]:
        name, value = plot["limit"]
        handles.append(ax.axhline(value / scale, color="black", linestyle="--",
                                  label=f"{name}: {value / GIB:.2f} GiB"))  # fmt: skip
        ax.set_ylim(0, max(ax.get_ylim()[1], value / scale * 1.08))
    ax.set_ylabel(unit_label)
    ax.set_title(f"{data.get('model', '')}: {data.get('kind', '')}", fontsize=10)
    if plot["phases"]:
        ax = axes[1]
        _stack(ax, phase_labels, phase_rows, GIB, colors)
        ax.set_ylabel("GiB")
        ax.set_title("memory at each phase", fontsize=10)
        ax.tick_params(axis="x", labelrotation=90, labelsize=7)
    fig.legend(handles=handles, loc="outside lower center", ncols=min(len(handles), 5), fontsize=7)
    return fig, plot


def _palette(n: int) -> list[Any]:
    from matplotlib import colormaps

    cmap = colormaps["tab10" if n <= 10 else "tab20"]
    return [cmap(i % cmap.N) for i in range(n)]


def plot_report(data: dict[str, Any], path: str | Path) -> dict[str, Any]:
    """Draw a report's JSON to ``path`` (.png or .svg); returns the numbers drawn."""
    out = _check_path(path)
    fig, plot = draw_report(data)
    fig.savefig(out, dpi=110)
    return plot


def sweep_plot_data(sweep: dict[str, Any]) -> dict[str, Any]:
    """The curves of a sweep (``memplan sweep --json``): x values, one series per metric, which
    points fit, the memory line and the last setting that fits."""
    xs = [p["value"] for p in sweep["points"]]
    series = [(m, [p.get(m) for p in sweep["points"]]) for m in sweep["metrics"]]
    return {
        "x": xs,
        "over": sweep["over"],
        "series": series,
        "fits": [p.get("fits") for p in sweep["points"]],
        "limit": _limit(sweep),
        "last_fit": sweep.get("last_fit"),
        "log_x": sweep.get("spacing") == "doubling",
    }


def draw_sweep(sweep: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    """The figure of a sweep, and the numbers it draws (:func:`sweep_plot_data`)."""
    _require_matplotlib()
    plot = sweep_plot_data(sweep)
    fig, axes = _new_figure(len(plot["series"]))
    for ax, (metric, ys) in zip(axes, plot["series"], strict=True):
        scale, unit = (GIB, "GiB") if metric.endswith("_bytes") else (1.0, "")
        values = [y / scale if y is not None else float("nan") for y in ys]
        ax.plot(plot["x"], values, marker="o", color="tab:blue", label=metric)
        bad = [
            (x, y) for x, y, f in zip(plot["x"], values, plot["fits"], strict=True) if f is False
        ]
        if bad:
            ax.scatter(*zip(*bad, strict=True), color="tab:red", zorder=3, label="does not fit")
        if plot["limit"] and metric.endswith("_bytes"):
            name, value = plot["limit"]
            ax.axhline(value / scale, color="black", linestyle="--", label=name)
        if plot["last_fit"] is not None:
            ax.axvline(plot["last_fit"], color="tab:green", linestyle=":",
                       label=f"largest that fits: {plot['last_fit']}")  # fmt: skip
        if plot["log_x"]:
            ax.set_xscale("log", base=2)
        ax.set_xlabel(plot["over"])
        ax.set_ylabel(f"{metric} ({unit})" if unit else metric)
        ax.legend(fontsize=7)
    fig.suptitle(f"{sweep.get('model', '')}: {sweep['job']} over {plot['over']}", fontsize=10)
    return fig, plot


def plot_sweep(sweep: dict[str, Any], path: str | Path) -> dict[str, Any]:
    """Draw a sweep's JSON to ``path`` (.png or .svg); returns the numbers drawn."""
    out = _check_path(path)
    fig, plot = draw_sweep(sweep)
    fig.savefig(out, dpi=110)
    return plot
