"""Speed of ``memplan plan``: plans judged per second on one core (issue 10 asks 1,000,000/s).

The question is the issue's: Llama-3.1-70B on 64 x H100 (8 nodes x 8), seq 4096, global batch
512, every layout (``estimate.plan_search``). Three figures, CPU time (``time.process_time``) so
a loaded machine skews them less:

- ``search``: the whole ``search()`` from a cold start (enumeration, the scalar tables the grid
  reads: local models, rank states, data-parallel collectives; the arrays; the ranking);
- ``grid, warm``: ``evaluate_grid`` again on the same plans, the engine's own caches warm (the
  tables are still rebuilt from them);
- ``arrays``: the array arithmetic alone (``plan_grid._evaluate_arrays``: every rank's phases,
  communication buffers, collectives and step time over all plans).

Run: ``python bench/bench_plan.py [--jobs N]``.
"""

from __future__ import annotations

import argparse
import time

from memplan.catalog import resolve
from memplan.catalog.gpus import resolve_gpu
from memplan.estimate import plan_grid
from memplan.estimate.plan_search import SearchSpace, enumerate_plans, search
from memplan.specs.training import TrainingSetup

TARGET_PER_S = 1_000_000


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=1)
    jobs = parser.parse_args().jobs
    spec = resolve("meta-llama/Llama-3.1-70B")
    gpu = resolve_gpu("H100")
    setup = TrainingSetup(batch=1, seq=4096)
    space = SearchSpace(nodes=8, gpus_per_node=8, global_batch=512)
    start, wall = time.process_time(), time.perf_counter()
    result = search(spec, setup, gpu, space, jobs=jobs)
    cold, cold_wall = time.process_time() - start, time.perf_counter() - wall
    rows, _, _ = enumerate_plans(spec, setup, space)
    arrays: list[float] = []
    inner = plan_grid._evaluate_arrays

    def timed(*args: object, **kwargs: object) -> object:
        t0 = time.process_time()
        out = inner(*args, **kwargs)  # type: ignore[arg-type]
        arrays.append(time.process_time() - t0)
        return out

    plan_grid._evaluate_arrays = timed  # type: ignore[assignment]
    start = time.process_time()
    plan_grid.evaluate_grid(spec, setup, gpu, rows)
    warm = time.process_time() - start
    n = result.plans_evaluated
    print(f"memplan plan {spec.name}, 64 x {gpu.name}, seq 4096, global batch 512")
    print(f"  plans: {result.plans_considered:,} considered, {n:,} evaluated, "
          f"{result.plans_feasible:,} fit")  # fmt: skip
    print(f"  search, cold (jobs={jobs}):  {cold:7.2f} s CPU ({cold_wall:.2f} s wall) "
          f"{n / cold:>12,.0f} plans/s")  # fmt: skip
    print(f"  grid, warm caches:       {warm:7.2f} s CPU {n / warm:>12,.0f} plans/s")
    print(f"  array arithmetic alone:  {sum(arrays):7.2f} s CPU {n / sum(arrays):>12,.0f} plans/s")
    verdict = "meets" if n / cold >= TARGET_PER_S else "MISSES"
    print(f"  target {TARGET_PER_S:,} plans/s end to end: {verdict}")


if __name__ == "__main__":
    main()
