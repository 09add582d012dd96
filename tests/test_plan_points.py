"""The points of the plan chart: the Pareto front and the sample (estimate/plan_points.py)."""

from __future__ import annotations

import pytest

from memplan.estimate.plan_points import MAX_POINTS, chart_points, pareto_mask

np = pytest.importorskip("numpy")


def _dominated(peak: list[int], step: list[float], i: int) -> bool:
    return any(
        peak[j] <= peak[i] and step[j] <= step[i] and (peak[j] < peak[i] or step[j] < step[i])
        for j in range(len(peak))
    )


def test_pareto_mask_is_the_brute_force_front() -> None:
    rng = np.random.default_rng(7)
    peak = rng.integers(1, 40, 600)  # small ranges: many ties and duplicates; faster plans
    step = (40 - peak + rng.integers(0, 8, 600)).astype(float)  # need more memory: a long front
    mask = pareto_mask(peak, step)
    front = {(int(peak[i]), float(step[i])) for i in range(600) if not _dominated(peak, step, i)}
    chosen = [(int(peak[i]), float(step[i])) for i in np.flatnonzero(mask)]
    assert sorted(chosen) == sorted(front)  # one point per (peak, step) on the front
    assert len(chosen) == len(set(chosen)) > 10


@pytest.mark.parametrize("by", ["time", "memory"])
def test_a_ranked_order_needs_no_sort_and_gives_the_same_front(by: str) -> None:
    """The search's rankings (time: by step then peak; memory: by peak then step) take the
    one-pass path; the front is the one the sorting path finds."""
    rng = np.random.default_rng(11)
    peak = rng.integers(1, 30, 2_000)
    step = (30 - peak + rng.integers(0, 6, 2_000)).astype(float)
    order = np.lexsort((peak, step) if by == "time" else (step, peak))
    p, t = peak[order], step[order]
    fast = pareto_mask(p, t)  # in rank order: the one-pass path
    slow = pareto_mask(peak, step)  # the draw's order: the sorting path
    assert sorted(zip(p[fast], t[fast], strict=True)) == sorted(
        zip(peak[slow], step[slow], strict=True)
    )
    assert fast.sum() == slow.sum() > 10


def test_every_feasible_plan_when_few() -> None:
    peak, step = np.array([5, 3, 9, 4]), np.array([1.0, 2.0, 0.5, 2.5])
    ranked = np.array([2, 0, 1, 3])  # best first
    points = chart_points(["a", "b", "c", "d"].__getitem__, peak, step, ranked, top=2)
    assert points.selection == "all"
    assert points.rows == ["c", "a", "b", "d"] and points.rank == [1, 2, 3, 4]
    assert points.peak_bytes == [9, 5, 3, 4] and points.step_seconds == [0.5, 1.0, 2.0, 2.5]
    assert points.pareto == [True, True, True, False]  # d: b is lighter and faster


def test_a_sample_keeps_the_top_and_the_front() -> None:
    rng = np.random.default_rng(3)
    n = 20_000
    peak = rng.integers(1, 10**11, n)
    step = rng.random(n)
    ranked = np.lexsort((peak, step))
    points = chart_points(int, peak, step, ranked, top=10)
    assert points.selection == "sample"
    assert len(points.rows) <= MAX_POINTS
    assert points.rank[:10] == list(range(1, 11))
    assert points.rank == sorted(points.rank) and points.rank[-1] == n  # the worst is kept
    front = set(np.flatnonzero(pareto_mask(peak, step)).tolist())
    assert front <= set(points.rows) and sum(points.pareto) == len(front)
