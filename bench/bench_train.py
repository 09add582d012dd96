"""Speed of the analytic training engine: estimates per second on one core.

Three paths, each over a sweep of (batch, seq) for Llama-3.1-8B in bf16-mixed with AdamW:

- ``peak``: ``training_peak_bytes(spec, setup)`` — the number a search needs (plan cached);
- ``evaluate``: every phase and category for a cached plan (``evaluate(plan, B, S)``);
- ``report``: the full ``estimate_training`` Report (breakdown tree, phases, notes).

Run: ``python bench/bench_train.py``. The issue asks for at least 10,000 estimates per second
(llm-analysis manages about 2,000, Calculon about 290).
"""

from __future__ import annotations

import dataclasses
import time

from memplan.catalog import resolve
from memplan.estimate.training import (
    estimate_training,
    evaluate,
    training_peak_bytes,
    training_plan,
)
from memplan.specs.training import TrainingSetup

TARGET_PER_S = 10_000


def _setups(n: int) -> list[TrainingSetup]:
    base = TrainingSetup(batch=1, seq=2048)
    out = []
    for i in range(n):
        out.append(dataclasses.replace(base, batch=1 + i % 8, seq=256 * (1 + i % 32)))
    return out


def _rate(fn, items) -> float:  # type: ignore[no-untyped-def]
    start = time.perf_counter()
    for item in items:
        fn(item)
    return len(items) / (time.perf_counter() - start)


def main() -> None:
    spec = resolve("meta-llama/Llama-3.1-8B")
    setups = _setups(20_000)
    training_peak_bytes(spec, setups[0])  # build and cache the plan once
    peak_rate = _rate(lambda s: training_peak_bytes(spec, s), setups)
    plan = training_plan(spec, dataclasses.replace(setups[0], batch=1, seq=1, allow_long_seq=True))
    pairs = [(s.batch, s.seq) for s in setups]
    eval_rate = _rate(lambda bs: evaluate(plan, *bs), pairs)
    report_rate = _rate(lambda s: estimate_training(spec, s), setups[:2000])
    print(f"memplan train, {spec.name}, bf16-mixed, AdamW, one core")
    print(f"  peak only (training_peak_bytes): {peak_rate:>10,.0f} estimates/s")
    print(f"  all phases (evaluate):           {eval_rate:>10,.0f} estimates/s")
    print(f"  full report (estimate_training): {report_rate:>10,.0f} estimates/s")
    verdict = "meets" if peak_rate >= TARGET_PER_S else "MISSES"
    print(f"  target {TARGET_PER_S:,}/s: {verdict}")


if __name__ == "__main__":
    main()
