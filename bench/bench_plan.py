"""Speed of ``memplan plan``: plans judged per second on one core (issue 10 asks 1,000,000/s).

The question is the issue's: Llama-3.1-70B on 64 x H100 (8 nodes x 8), seq 4096, global batch
512, every layout (``estimate.plan_search``). A *plan* is one candidate layout that passed the
divisibility rules: tensor, pipeline, context and expert degrees, sequence parallelism, the
data-parallel runtime, offload, pipeline schedule and virtual stages, micro-batch and
checkpointing; evaluating it means the peak of every distinct rank group (pipeline stage x
data-parallel class) and the step time, as ``memplan train`` / ``memplan time`` give them.
Plans removed by a rule before evaluation are not counted.

Figures, CPU time (``time.process_time``, one process, one core; a loaded machine skews it less
than wall time), the median of ``--runs`` runs:

- ``search, cold``: the whole ``search()`` in a fresh process (importing NumPy; enumeration;
  the scalar tables the grid gathers from, built for the whole grid before its chunks; the
  arrays; the ranking);
- ``tables, cold``: of the cold search, ``plan_grid.fill_tables``: the per-plan engine run
  once per distinct key (rank-local models per (tp, cp, sp, cast, micro-batch,
  checkpointing); rank states, data-parallel classes and collectives per (tp, ep, dp x cp,
  runtime, stage kind)) and the plans' structures laid out on arrays;
- ``enumeration``: ``enumerate_batch`` alone (rules per structure, plans laid out on arrays);
- ``evaluation, tables built``: ``evaluate_grid`` over the ``PlanBatch`` in the search's chunks
  (``plan_search.CHUNK`` plans) once the scalar tables exist (gathering them by index, every rank's phases, communication buffers,
  collectives and step time): what each further plan costs;
- ``array arithmetic``: ``plan_grid._evaluate_arrays`` alone (the evaluation less the lookups
  that index plans into the tables).

Run: ``python bench/bench_plan.py [--runs N]``.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from typing import Any

from memplan.catalog import resolve
from memplan.catalog.gpus import resolve_gpu
from memplan.estimate import plan_grid
from memplan.estimate.plan_search import CHUNK, SearchSpace, enumerate_batch, search
from memplan.specs.training import TrainingSetup

TARGET_PER_S = 1_000_000


def _question() -> tuple[Any, Any, TrainingSetup, SearchSpace]:
    spec = resolve("meta-llama/Llama-3.1-70B")
    gpu = resolve_gpu("H100")
    return spec, gpu, TrainingSetup(batch=1, seq=4096), SearchSpace(nodes=8, gpus_per_node=8,
                                                                    global_batch=512)  # fmt: skip


def _cold() -> None:
    """One cold search in this (fresh) process: prints CPU seconds (the search, the tables),
    then the counts."""
    from memplan.estimate import plan_search

    spec, gpu, setup, space = _question()
    fill, tables = plan_search.fill_tables, []

    def timed(*a: Any) -> None:
        begin = time.process_time()
        fill(*a)
        tables.append(time.process_time() - begin)

    plan_search.fill_tables = timed  # type: ignore[assignment]
    start = time.process_time()
    r = search(spec, setup, gpu, space)
    cpu = time.process_time() - start
    print(cpu, sum(tables), r.plans_considered, r.plans_evaluated, r.plans_feasible)


def _cpu(fn: Any, runs: int) -> float:
    times = []
    for _ in range(runs):
        start = time.process_time()
        fn()
        times.append(time.process_time() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--cold", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.cold:
        _cold()
        return
    colds, fills = [], []
    for _ in range(max(1, args.runs // 2)):
        out = subprocess.run([sys.executable, __file__, "--cold"], capture_output=True,
                             text=True, check=True).stdout.split()  # fmt: skip
        colds.append(float(out[0]))
        fills.append(float(out[1]))
        considered, n, feasible = (int(x) for x in out[2:])
    cold, fill = statistics.median(colds), statistics.median(fills)
    spec, gpu, setup, space = _question()
    enum = _cpu(lambda: enumerate_batch(spec, setup, space), args.runs)
    batch, _, _ = enumerate_batch(spec, setup, space)
    tables = plan_grid.new_tables(spec, setup, gpu)
    plan_grid.evaluate_grid(spec, setup, gpu, batch, tables=tables)  # builds the tables
    chunks = [batch.take(slice(i, i + CHUNK)) for i in range(0, len(batch), CHUNK)]

    def evaluate() -> None:  # in the search's chunks
        for c in chunks:
            plan_grid.evaluate_grid(spec, setup, gpu, c, tables=tables)

    evaluation = _cpu(evaluate, args.runs)
    arrays: list[float] = []
    inner = plan_grid._evaluate_arrays

    def timed(*a: Any, **k: Any) -> Any:
        start = time.process_time()
        out = inner(*a, **k)
        arrays.append(time.process_time() - start)
        return out

    plan_grid._evaluate_arrays = timed  # type: ignore[assignment]
    runs = []
    for _ in range(args.runs):
        arrays.clear()
        evaluate()
        runs.append(sum(arrays))
    plan_grid._evaluate_arrays = inner  # type: ignore[assignment]
    arith = statistics.median(runs)
    print(f"memplan plan {spec.name}, 64 x {gpu.name}, seq 4096, global batch 512")
    print(f"  plans: {considered:,} considered, {n:,} evaluated (a plan: a layout that passed "
          f"the rules, every rank group judged), {feasible:,} fit")  # fmt: skip
    print(f"  CPU time, one core, median of {args.runs} runs ({len(colds)} for the cold search):")
    for label, secs in (("search, cold", cold), ("tables, cold", fill), ("enumeration", enum),
                        ("evaluation, tables built", evaluation), ("array arithmetic", arith)):  # fmt: skip
        print(f"  {label:<26} {secs:8.3f} s {n / secs:>12,.0f} plans/s")
    for label, secs in (("search end to end", cold), ("evaluation", evaluation)):
        verdict = "meets" if n / secs >= TARGET_PER_S else "misses"
        print(f"  target {TARGET_PER_S:,} plans/s, {label}: {verdict}")


if __name__ == "__main__":
    main()
