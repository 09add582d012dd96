"""The feasible plans a chart of step time against per-GPU peak memory draws (issue 10).

``memplan plan`` ranks every plan that fits but shows only the top K. A chart of step time
against the worst rank's peak shows the whole trade-off: :func:`chart_points` picks which
feasible plans it draws. Every feasible plan when there are at most :data:`MAX_POINTS`;
otherwise a sample that keeps what matters: the top K, the Pareto front (no other feasible
plan is both faster and lighter) and plans evenly spaced in rank order for the rest, so the
cloud keeps its shape. :attr:`PlanPoints.selection` says which ("all" or "sample").
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = ["MAX_POINTS", "PlanPoints", "chart_points", "pareto_mask"]

MAX_POINTS = 400
"""Most points a chart draws (a browser draws thousands, but the JSON carries each one)."""


@dataclass(frozen=True, slots=True)
class PlanPoints:
    """Feasible plans for the chart, in rank order (best first)."""

    rows: list[Any]
    """Each point's plan (a ``plan_grid.PlanRow``)."""
    peak_bytes: list[int]
    """The worst rank's peak, as the plan's own ``peak_bytes``."""
    step_seconds: list[float]
    rank: list[int]
    """Each point's place in the ranking (1: the best)."""
    pareto: list[bool]
    """On the Pareto front of step time and peak memory among all feasible plans."""
    selection: str
    """"all", or "sample": the top K, the Pareto front and an even sample by rank."""


def _front_in_order(second: Any) -> Any:
    """For points sorted by (first, second): whether each one's ``second`` is below every
    ``second`` before it (equal pairs keep only the first)."""
    import numpy as np

    before = np.minimum.accumulate(np.concatenate(([np.inf], second[:-1])))
    return second < before


def _lexicographic(first: Any, second: Any) -> bool:
    """Whether the points are sorted by ``first``, ties by ``second`` (one pass, no sort)."""
    import numpy as np

    d1, d2 = np.diff(first), np.diff(second)
    return bool(np.all((d1 > 0) | ((d1 == 0) & (d2 >= 0))))


def pareto_mask(peak: Any, step: Any) -> Any:
    """For each plan, whether no other is at least as fast and light and better in one.

    Sorted by step time (then peak), a plan is on the front when its peak is below every
    peak before it; equal (step, peak) pairs keep only the first. A ranking by time (or by
    memory: the same with the roles swapped) is already in that order: no sort then, which a
    million plans would spend most of this function's time on."""
    import numpy as np

    peak, step = np.asarray(peak), np.asarray(step)
    if len(step) == 0:
        return np.zeros(0, dtype=bool)
    if _lexicographic(step, peak):
        return _front_in_order(peak)
    if _lexicographic(peak, step):
        return _front_in_order(step)
    order = np.lexsort((peak, step))
    mask = np.zeros(len(step), dtype=bool)
    mask[order] = _front_in_order(peak[order])
    return mask


def _even(n: int, k: int) -> Any:
    """``k`` positions of ``range(n)`` evenly spaced, first and last included."""
    import numpy as np

    return np.unique(np.linspace(0, n - 1, max(k, 2)).round().astype(np.int64))


def chart_points(
    row: Callable[[int], Any], peak: Any, step: Any, ranked: Any, top: int,
    limit: int = MAX_POINTS,
) -> PlanPoints:  # fmt: skip
    """The points of the chart (module docstring). ``ranked``: indices of the feasible plans
    into ``peak`` and ``step`` (the grid's arrays), best first; ``row(i)``: plan ``i``."""
    import numpy as np

    ranked = np.asarray(ranked, dtype=np.int64)
    n = len(ranked)
    front = pareto_mask(np.asarray(peak)[ranked], np.asarray(step)[ranked])
    if n <= limit:
        keep, selection = np.arange(n), "all"
    else:
        on_front = np.flatnonzero(front)
        if len(on_front) > limit // 2:
            on_front = on_front[_even(len(on_front), limit // 2)]
        chosen = np.union1d(np.arange(min(top, limit // 4)), on_front)
        spare = max(limit - len(chosen), 2)
        keep, selection = np.union1d(chosen, _even(n, spare)), "sample"
    picked = [int(ranked[i]) for i in keep]
    return PlanPoints(
        rows=[row(i) for i in picked],
        peak_bytes=[int(peak[i]) for i in picked],
        step_seconds=[float(step[i]) for i in picked],
        rank=[int(i) + 1 for i in keep],
        pareto=[bool(front[i]) for i in keep],
        selection=selection,
    )
