"""Benchmark of the trace engine: Llama-2-7B training step (batch 1, seq 2048, bf16
parameters, AdamW, sdpa, two iterations), in fresh processes, beside PyTorch's MemTracker.

    python bench/bench_trace.py                 # split, fresh process, floor: 3 runs each
    python bench/bench_trace.py --runs 5
    python bench/bench_trace.py --memtracker    # also torch's MemTracker on the same step (~1 min)
    python bench/bench_trace.py --model llama-3.1-8b --seq 4096

Prints, over N fresh Python processes each:

- the split of one trace: ``import`` (torch, transformers, torch._dynamo, the model's module),
  ``build`` (the model on fake tensors), ``trace`` (two training iterations), ``assemble`` (the
  report); wall-clock and CPU seconds of each stage, median over the runs;
- the fresh-process time of the command a user types,
  ``memplan trace MODEL --train --batch B --seq S --precision bf16 --json``: wall-clock
  seconds, CPU seconds (user + system of the child) and peak RSS, each run and the median;
- the floor under it: a fresh process that only imports what a trace needs (torch,
  transformers, torch._dynamo, the model's module) and exits as ``memplan`` exits, with the CPU
  seconds of each of those imports; then the fresh-process figure less the floor (what memplan
  itself costs: its imports, the build, the trace, the report);
- the load average before and after.

On a shared machine the wall-clock figures move with the load; the CPU figures much less.
"""

from __future__ import annotations

import argparse
import gc
import itertools
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

STAGES = ("import", "build", "trace", "assemble")


def child_split(model: str, batch: int, seq: int) -> None:
    """One trace in this (fresh) process, timed stage by stage; prints one JSON line."""
    marks = [(time.perf_counter(), time.process_time())]

    def mark() -> None:
        marks.append((time.perf_counter(), time.process_time()))

    import transformers
    from torch._subclasses.fake_tensor import FakeTensorMode

    from memplan.catalog import resolve
    from memplan.specs.training import Optimizer, Precision, TrainingSetup
    from memplan.trace.assemble import training_report
    from memplan.trace.build import config_of
    from memplan.trace.training import run_training

    spec = resolve(model)
    name, config = config_of(spec)
    FakeTensorMode()  # imports torch._dynamo
    getattr(transformers, (config.get("architectures") or ["LlamaForCausalLM"])[0])
    mark()
    setup = TrainingSetup(batch=batch, seq=seq, precision=Precision.BF16, optimizer=Optimizer.ADAMW)
    run = run_training(config, setup, name=name)
    mark()
    report = training_report(name, setup, run.session, run)
    mark()
    (w0, c0), (w1, c1), (w2, c2), (w3, c3) = marks
    out = {
        "wall": [w1 - w0, run.build_seconds, w2 - w1 - run.build_seconds, w3 - w2],
        "cpu": [c1 - c0, run.build_cpu_seconds, c2 - c1 - run.build_cpu_seconds, c3 - c2],
        "n_ops": report.scalars["n_ops"],
        "peak_bytes": report.scalars["peak_bytes"],
    }
    print(json.dumps(out))


def run_child(argv: list[str]) -> tuple[float, float, str]:
    """(wall s, user+sys CPU s, stdout) of one fresh process."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed:\n{done.stderr}")
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    return wall, cpu, done.stdout


def children_peak_rss_gib() -> float:
    """Largest resident set of the child processes so far."""
    scale = 1 if sys.platform == "darwin" else 1024
    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * scale / 2**30


def bench_split(model: str, batch: int, seq: int, runs: int) -> None:
    rows = []
    for _ in range(runs):
        argv = [sys.executable, __file__, "--child-split", "--model", model]
        argv += ["--batch", str(batch), "--seq", str(seq)]
        _, _, stdout = run_child(argv)
        rows.append(json.loads(stdout.strip().splitlines()[-1]))
    print(f"split of one trace, median of {runs} fresh processes (wall s / CPU s):")
    for index, stage in enumerate(STAGES):
        wall = statistics.median(r["wall"][index] for r in rows)
        cpu = statistics.median(r["cpu"][index] for r in rows)
        print(f"  {stage:<9} {wall:6.2f} / {cpu:6.2f}")
    print(f"  ops traced: {rows[0]['n_ops']:,}, peak {rows[0]['peak_bytes']:,} B")


def bench_fresh(model: str, batch: int, seq: int, runs: int) -> tuple[float, float]:
    """Median (wall s, CPU s) of the command a user types, each in a fresh process."""
    memplan = str(Path(sys.executable).with_name("memplan"))
    argv = [memplan, "trace", model, "--train", "--batch", str(batch), "--seq", str(seq)]
    argv += ["--precision", "bf16", "--json"]
    print(f"fresh process: {' '.join(argv[1:])}")
    walls, cpus = [], []
    for index in range(runs):
        wall, cpu, stdout = run_child(argv)
        scalars = json.loads(stdout)
        walls.append(wall)
        cpus.append(cpu)
        print(
            f"  run {index + 1}: wall {wall:6.2f} s, CPU {cpu:6.2f} s, "
            f"trace_seconds {scalars['trace_seconds']:.2f}, {scalars['n_ops']:,} ops"
        )
    print(
        f"  median of {runs}: wall {statistics.median(walls):.2f} s, "
        f"CPU (user+sys) {statistics.median(cpus):.2f} s, peak RSS {children_peak_rss_gib():.2f} GiB"
    )
    return statistics.median(walls), statistics.median(cpus)


FLOOR_STEPS = ("torch", "transformers", "torch._dynamo", "transformers.models", "model module")
FLOOR_WHY = {
    "torch": "import torch",
    "transformers": "the package: its lazy import table, read off every models/ file",
    "torch._dynamo": "FakeTensorMode() imports torch._dynamo.config; the model module would too",
    "transformers.models": "the models package: the same table again (its lru_cache holds 128)",
    "model module": "the model class's module and what it imports at module level",
}
"""Why each import is there. The model module needs torch._dynamo without the fake mode:
transformers 5.23's ``generation/continuous_batching/cache.py`` decorates a method with
``torch.compiler.disable``, which imports ``torch._dynamo``; ``distributed/sharding_utils.py``
imports ``torch.distributed.tensor``, and with it ``sympy``. ``transformers.models`` builds the lazy import table a second
time because ``create_import_structure_from_path``'s ``lru_cache`` keeps 128 entries, fewer than
the folders under ``models/``."""


def child_floor(architecture: str) -> None:
    """Import only what a trace needs, step by step; print the CPU seconds of each (JSON)."""
    cpu = [time.process_time()]
    import torch  # noqa: F401

    cpu.append(time.process_time())
    import transformers

    cpu.append(time.process_time())
    from torch._subclasses.fake_tensor import FakeTensorMode

    FakeTensorMode()
    cpu.append(time.process_time())
    import transformers.models

    cpu.append(time.process_time())
    getattr(transformers, architecture)
    cpu.append(time.process_time())
    print(json.dumps([b - a for a, b in itertools.pairwise(cpu)]))
    sys.stdout.flush()
    gc.freeze()  # exits as `memplan` does (memplan.cli.main.exit_quickly)


def bench_import_floor(model: str, runs: int) -> tuple[float, float]:
    """Median (wall s, CPU s) of a fresh process that imports what a trace needs and exits."""
    from memplan.catalog import resolve

    config = resolve(model).hf_config or {}
    architecture = (config.get("architectures") or ["LlamaForCausalLM"])[0]
    walls, cpus, steps = [], [], []
    for _ in range(runs):
        argv = [sys.executable, __file__, "--child-floor", "--model", architecture]
        wall, cpu, stdout = run_child(argv)
        walls.append(wall)
        cpus.append(cpu)
        steps.append(json.loads(stdout.strip().splitlines()[-1]))
    print(
        f"import floor: a fresh process that imports what a trace of {architecture} needs and "
        f"exits, nothing traced; median of {runs}: wall {statistics.median(walls):.2f} s, "
        f"CPU {statistics.median(cpus):.2f} s; CPU s of each import, in this order:"
    )
    for index, step in enumerate(FLOOR_STEPS):
        seconds = statistics.median(row[index] for row in steps)
        print(f"  {step:<20} {seconds:5.2f}  {FLOOR_WHY[step]}")
    return statistics.median(walls), statistics.median(cpus)


def load_line(when: str) -> str:
    """The machine's load: the wall-clock figures are only comparable at the same load."""
    one, five, _ = os.getloadavg()
    return (
        f"load average {when}: {one:.1f} (1 min), {five:.1f} (5 min) on {os.cpu_count()} CPUs; "
        "wall-clock figures move with it, CPU figures much less"
    )


def bench_memtracker(model: str, batch: int, seq: int) -> None:
    """torch.distributed._tools.mem_tracker.MemTracker on the same fake step."""
    import torch
    from torch._subclasses.fake_tensor import FakeTensorMode

    try:
        from torch.distributed._tools.mem_tracker import MemTracker
    except ImportError:
        print("MemTracker: not available in this torch")
        return
    from memplan.catalog import resolve
    from memplan.trace.build import build_model

    spec = resolve(model)
    started = time.perf_counter()
    with FakeTensorMode():
        net = build_model(
            spec.hf_config or {}, dtype=torch.bfloat16, attention="sdpa", dropout=None
        )
        optimizer = torch.optim.AdamW(net.parameters(), foreach=True)
        ids = torch.randint(0, spec.vocab_size, (batch, seq))
        tracker = MemTracker()
        tracker.track_external(net, optimizer)
        with tracker:
            for _ in range(2):
                loss = net(input_ids=ids, labels=ids).loss
                loss.backward()
                optimizer.step()
                optimizer.zero_grad()
                tracker.reset_mod_stats()
    peak = max(tracker.get_tracker_snapshot("peak")[torch.device("cpu")].values())
    print(f"MemTracker: {time.perf_counter() - started:.2f} s, peak {peak:,} B (CPU semantics)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="meta-llama/Llama-2-7b-hf")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--seq", type=int, default=2048)
    parser.add_argument("--runs", type=int, default=3, help="fresh processes per measurement")
    parser.add_argument("--memtracker", action="store_true", help="also run torch's MemTracker")
    parser.add_argument("--child-split", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--child-floor", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child_split:
        child_split(args.model, args.batch, args.seq)
        return
    if args.child_floor:
        child_floor(args.model)
        return
    print(load_line("at the start"))
    bench_split(args.model, args.batch, args.seq, args.runs)
    fresh = bench_fresh(args.model, args.batch, args.seq, args.runs)
    floor = bench_import_floor(args.model, args.runs)
    print(
        f"fresh process above the import floor: wall {fresh[0] - floor[0]:.2f} s, CPU "
        f"{fresh[1] - floor[1]:.2f} s (memplan's own imports, the build, the trace, the report)"
    )
    print(load_line("at the end"))
    if args.memtracker:
        bench_memtracker(args.model, args.batch, args.seq)


if __name__ == "__main__":
    main()
