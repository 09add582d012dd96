"""Speed of ``memplan plan``: plans judged per second on one core (issue 10 asks 1,000,000/s).

Two questions (``--question``):

- ``70b``, the issue's: Llama-3.1-70B on 64 x H100 (8 nodes x 8), seq 4096, global batch 512;
- ``405b``, a large search: the Llama 3 paper's pre-training of Llama-3.1-405B on 16,384 H100
  (2,048 nodes x 8), seq 8,192, global batch 2,048 sequences (16M tokens; Dubey et al. 2024,
  The Llama 3 Herd of Models, Table 4, as docs/plan-layouts.md cites it).

Every layout (``estimate.plan_search``). A *plan* is one candidate layout that passed the
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
- ``array arithmetic``: ``plan_grid._evaluate_arrays`` alone (the evaluation less
  ``plan_layout.layout``, which lays the plans out and looks them up in the tables).

Run: ``python bench/bench_plan.py [--runs N] [--question 70b|405b|all]``.
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


QUESTIONS = {
    "70b": ("meta-llama/Llama-3.1-70B", 8, 4096, 512),
    "405b": ("meta-llama/Llama-3.1-405B", 2048, 8192, 2048),
}
"""Per question: model, nodes of 8 H100, sequence, global batch (sequences)."""


def _question(name: str) -> tuple[Any, Any, TrainingSetup, SearchSpace]:
    model, nodes, seq, global_batch = QUESTIONS[name]
    space = SearchSpace(nodes=nodes, gpus_per_node=8, global_batch=global_batch)
    return resolve(model), resolve_gpu("H100"), TrainingSetup(batch=1, seq=seq), space


def _cold(name: str) -> None:
    """One cold search in this (fresh) process: prints CPU seconds (the search, the tables),
    then the counts."""
    from memplan.estimate import plan_search

    spec, gpu, setup, space = _question(name)
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


def _bench(name: str, runs: int) -> None:
    """Print the figures of question ``name`` (module docstring)."""
    colds, fills = [], []
    for _ in range(max(1, runs // 2)):
        out = subprocess.run([sys.executable, __file__, "--cold", name], capture_output=True,
                             text=True, check=True).stdout.split()  # fmt: skip
        colds.append(float(out[0]))
        fills.append(float(out[1]))
        considered, n, feasible = (int(x) for x in out[2:])
    cold, fill = statistics.median(colds), statistics.median(fills)
    spec, gpu, setup, space = _question(name)
    enum = _cpu(lambda: enumerate_batch(spec, setup, space), runs)
    batch, _, _ = enumerate_batch(spec, setup, space)
    tables = plan_grid.new_tables(spec, setup, gpu)
    plan_grid.fill_tables(tables, batch)
    chunks = [batch.take(slice(i, i + CHUNK)) for i in range(0, len(batch), CHUNK)]

    def evaluate() -> None:  # in the search's chunks
        for c in chunks:
            plan_grid.evaluate_grid(spec, setup, gpu, c, tables=tables)

    evaluation = _cpu(evaluate, runs)
    arrays: list[float] = []
    inner = plan_grid._evaluate_arrays

    def timed(*a: Any, **k: Any) -> Any:
        start = time.process_time()
        out = inner(*a, **k)
        arrays.append(time.process_time() - start)
        return out

    plan_grid._evaluate_arrays = timed  # type: ignore[assignment]
    per_run = []
    for _ in range(runs):
        arrays.clear()
        evaluate()
        per_run.append(sum(arrays))
    plan_grid._evaluate_arrays = inner  # type: ignore[assignment]
    arith = statistics.median(per_run)
    print(f"memplan plan {spec.name}, {space.world:,} x {gpu.name}, seq {setup.seq}, "
          f"global batch {space.global_batch:,}")  # fmt: skip
    print(f"  plans: {considered:,} considered, {n:,} evaluated (a plan: a layout that passed "
          f"the rules, every rank group judged), {feasible:,} fit")  # fmt: skip
    print(f"  CPU time, one core, median of {runs} runs ({len(colds)} for the cold search):")
    for label, secs in (("search, cold", cold), ("tables, cold", fill), ("enumeration", enum),
                        ("evaluation, tables built", evaluation), ("array arithmetic", arith)):  # fmt: skip
        print(f"  {label:<26} {secs:8.3f} s {n / secs:>12,.0f} plans/s")
    for label, secs in (("search end to end", cold), ("evaluation", evaluation)):
        verdict = "meets" if n / secs >= TARGET_PER_S else "misses"
        print(f"  target {TARGET_PER_S:,} plans/s, {label}: {verdict}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--question", choices=[*QUESTIONS, "all"], default="all")
    parser.add_argument("--cold", choices=list(QUESTIONS), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.cold:
        _cold(args.cold)
        return
    for name in QUESTIONS if args.question == "all" else (args.question,):
        _bench(name, args.runs)


if __name__ == "__main__":
    main()
