"""Real distributed runs on the cpu: torch.distributed with gloo, W processes, small models.

:func:`run_gloo` starts ``world_size`` Python processes (``python -m memplan.trace.gloo``),
which join one gloo process group through a file store (no port to pick) and run every case
in turn, one thread each (``torch.set_num_threads(1)``). Each rank measures each case twice:

- with PyTorch's own tracker, ``MemTracker`` (``FSDPMemTracker`` under FSDP2; both in
  ``torch/distributed/_tools``), at the phase boundaries of the second iteration: live bytes by
  PyTorch's categories, and the peak of each peak phase (:class:`MemTrackerProbe`);
- with memplan's tracker (:mod:`memplan.trace.distributed`, ``fake=False``): the per-rank
  report of the same code that traces at full size under a fake process group.

The processes are killed if they outlive ``timeout_s``, or if any of them fails; their stderr
is then part of the error. Nothing here needs a GPU or the network (loopback only).
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
import pickle
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from copy import deepcopy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["GlooCase", "MemTrackerProbe", "SettledProbe", "run_gloo"]

GLOO_TIMEOUT_S = 600
"""Longest a set of gloo runs may take before its processes are killed."""


@dataclass(frozen=True, slots=True)
class GlooCase:
    """One setup run on every rank: a config.json dict, the step and the plan."""

    name: str
    config: dict[str, Any]
    setup: Any
    """A :class:`~memplan.specs.training.TrainingSetup`."""
    plan: Any
    """A :class:`~memplan.specs.parallel.ParallelPlan` (its ``world_size`` is the run's)."""
    plain: bool = False
    """Also run the step once more without PyTorch's tracker (result ``plain``): MemTracker
    keeps the autograd nodes of custom ops alive (transformers' grouped-mm fallback for MoE
    experts, with their ``offs`` argument), which changes what it measures."""


def run_gloo(
    world_size: int,
    cases: list[GlooCase],
    *,
    fake: bool = False,
    timeout_s: float = GLOO_TIMEOUT_S,
) -> dict[str, list[dict[str, Any]]]:
    """Run ``cases`` on ``world_size`` gloo processes; per case name, one result per rank.

    A rank's result: ``memtracker`` (see :meth:`MemTrackerProbe.result`), ``report`` (the
    per-rank report's JSON from memplan's tracker), ``seconds``, and ``plain`` for the cases
    that ask for it; with ``fake``, also ``fake``: the same rank traced under a fake process
    group, by the same process once its gloo group is gone (each run starts with DTensor's
    caches emptied, so nothing of the real run's process groups carries over).
    """
    for case in cases:
        if case.plan.world_size != world_size:
            raise ValueError(
                f"{case.name}: a plan for {case.plan.world_size} ranks, not {world_size}"
            )
    mode = "real+fake" if fake else "real"
    with tempfile.TemporaryDirectory(prefix="memplan-gloo-") as tmp:
        work = Path(tmp)
        (work / "cases.pkl").write_bytes(pickle.dumps(cases))
        env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
        procs = []
        try:
            for rank in range(world_size):
                log = open(work / f"rank{rank}.log", "wb")  # noqa: SIM115 (closed below)
                command = [sys.executable, "-m", "memplan.trace.gloo", str(work), str(rank),
                           str(world_size), mode]  # fmt: skip
                process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
                procs.append((process, log, f"rank{rank}"))
            _wait(procs, work, timeout_s)
        finally:
            for process, log, _ in procs:
                if process.poll() is None:
                    process.kill()
                process.wait()
                log.close()
        results = _collect(work, world_size, fake)
    return {case.name: [results[r][case.name] for r in range(world_size)] for case in cases}


def _collect(work: Path, world_size: int, fake: bool) -> list[dict[str, Any]]:
    results = []
    for rank in range(world_size):
        result = json.loads((work / f"real{rank}.json").read_text())
        if fake:
            for name, report in json.loads((work / f"fake{rank}.json").read_text()).items():
                result[name]["fake"] = report
        results.append(result)
    return results


def _wait(
    procs: list[tuple[subprocess.Popen[bytes], Any, str]], work: Path, timeout_s: float
) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        codes = [process.poll() for process, _, _ in procs]
        failed = [i for i, code in enumerate(codes) if code not in (None, 0)]
        if failed or time.monotonic() > deadline:
            index = failed[0] if failed else 0
            name = procs[index][2]
            tail = (work / f"{name}.log").read_text(errors="replace")[-6000:]
            why = f"{name} exited with {codes[index]}" if failed else f"timed out ({timeout_s} s)"
            raise RuntimeError(f"gloo run failed: {why}\n{tail}")
        if all(code == 0 for code in codes):
            return
        time.sleep(0.05)


class SettledProbe:
    """For a real gloo run: before each phase mark, wait for gloo to let go (:meth:`settle`)."""

    def start(self) -> Any:
        import contextlib

        return contextlib.nullcontext()

    def attach(self, model: Any, optimizer: Any, batch: dict[str, Any]) -> Any:
        import contextlib

        return contextlib.nullcontext()

    def mark(self, iteration: int, point: str) -> None:
        """Nothing to read here."""

    def settle(self) -> None:
        """Wait until gloo has let go of the tensors of the collectives before this point
        (called before each phase mark and after each collective).

        gloo runs collectives on worker threads that keep a reference to their tensors a moment
        after ``wait()`` returns, so a tensor whose last Python reference is dropped early can
        outlive it by a moment, at random. Each process group here has one worker thread
        (:func:`init_serial_gloo`); a barrier queued behind a collective runs once that thread
        has let the collective go.
        """
        settle_groups()


class MemTrackerProbe(SettledProbe):
    """PyTorch's MemTracker (FSDPMemTracker under FSDP2) read at the step's phase boundaries.

    ``result()``: per phase of iteration 2 (memplan's names) the live bytes (or, for
    ``peak_backward`` and ``optimizer_step``, the peak bytes within the phase) and PyTorch's
    categories at that point; ``peak_bytes`` (the iteration's peak). Devices other than the
    cpu (transformers' tensor-parallel styles leave ``meta`` tensors) are left out.
    """

    def __init__(self, fsdp: bool) -> None:
        self.fsdp = fsdp
        self.tracker: Any = None
        self.points: list[dict[str, Any]] = []

    def start(self) -> Any:
        import contextlib

        if self.fsdp:
            return contextlib.nullcontext()
        from torch.distributed._tools.mem_tracker import MemTracker

        self.tracker = MemTracker()
        return self.tracker

    def attach(self, model: Any, optimizer: Any, batch: dict[str, Any]) -> Any:
        import contextlib

        if not self.fsdp:
            self.tracker.track_external(model, optimizer)
            return contextlib.nullcontext()
        from torch.distributed._tools.fsdp2_mem_tracker import FSDPMemTracker

        self.tracker = FSDPMemTracker(model, optimizer)
        self.tracker.track_inputs(tuple(batch.values()))
        return self.tracker

    def _snapshot(self, kind: str) -> dict[str, int]:
        snap = self.tracker.get_tracker_snapshot(kind)
        out: dict[str, int] = {}
        for device, categories in snap.items():
            if getattr(device, "type", str(device)) != "cpu":
                continue
            for name, value in categories.items():
                key = name.value if hasattr(name, "value") else str(name)
                out[key] = out.get(key, 0) + int(value)
        return out

    def mark(self, iteration: int, point: str) -> None:
        current = self._snapshot("current")
        peak = self._snapshot("peak")
        self.points.append(
            {"iteration": iteration, "point": point, "current": current, "peak": peak}
        )
        # the peak restarts from here: the next point reads the peak of the span in between
        tracker = self.tracker
        tracker._peak_mem_snap = deepcopy(tracker._curr_mem_snap)
        tracker._peak_mem = {dev: snap["Total"] for dev, snap in tracker._curr_mem_snap.items()}
        if point in ("after_zero_grad", "micro_batch"):
            tracker.reset_mod_stats()  # the root module runs again

    def result(self) -> dict[str, Any]:
        at = {p["point"]: p for p in self.points if p["iteration"] == 1}
        spans = {
            "after_load": at["start"]["current"],
            "end_of_forward": at["end_of_forward"]["current"],
            "peak_backward": at["after_backward"]["peak"],
            "after_backward": at["after_backward"]["current"],
            "optimizer_step": at["after_step"]["peak"],
            "after_zero_grad": at["after_zero_grad"]["current"],
        }
        ends = ("end_of_forward", "after_backward", "after_step", "after_zero_grad")
        categories = {
            name: {k: v for k, v in snap.items() if k != "Total" and v}
            for name, snap in spans.items()
        }
        return {
            "phases": {name: snap.get("Total", 0) for name, snap in spans.items()},
            "categories": categories,
            "peak_bytes": max(at[p]["peak"].get("Total", 0) for p in ends),
        }


SERIAL_GLOO = "memplan_gloo"
"""The name of gloo with one worker thread per process group (:func:`init_serial_gloo`)."""


def _serial_gloo(store: Any, rank: int, size: int, timeout: Any) -> Any:
    from torch._C._distributed_c10d import ProcessGroupGloo

    options = ProcessGroupGloo._Options()
    options._timeout = timeout
    options._threads = 1
    options._devices = [ProcessGroupGloo.create_default_device()]
    return ProcessGroupGloo(store, rank, size, options)


def init_serial_gloo(init_method: str, rank: int, world_size: int) -> None:
    """``init_process_group`` with gloo whose process groups run collectives in order, on one
    worker thread each (gloo's default is two), so that :func:`settle_groups` can wait for them."""
    import torch.distributed as dist

    if SERIAL_GLOO.upper() not in dist.Backend._plugins:
        dist.Backend.register_backend(SERIAL_GLOO, _serial_gloo, devices=["cpu"])
    dist.init_process_group(SERIAL_GLOO, init_method=init_method, rank=rank, world_size=world_size)


def settle_groups() -> None:
    """A barrier on every process group of this process, in the order they were made, out of
    sight of the trackers (a barrier allocates a one-element tensor)."""
    import torch.distributed as dist
    from torch.utils._python_dispatch import _disable_current_modes

    with _disable_current_modes():
        for group in list(dist.distributed_c10d._world.pg_map):
            dist.barrier(group=group)


@contextlib.contextmanager
def _no_automatic_gc() -> Iterator[None]:
    """No cyclic garbage collection while two trackers watch one run.

    PyTorch's MemTracker keeps the autograd nodes of custom ops alive in reference cycles
    (transformers' grouped-mm fallback for MoE experts, with what they saved), which only the
    cyclic collector frees; it runs whenever Python allocates, at moments that vary from run
    to run, and can fall between one op's bookkeeping by MemTracker and by memplan's tracker
    (both allocate Python objects there), so that one counts the freed tensors at that op's
    high point and the other not. Seen: collections freeing tracked storages in every Mixtral
    run under MemTracker (none in the Llama runs), and once rank 0 of mixtral/fsdp-full at
    peak_backward measured 3,174,492 B by memplan's tracker against 3,425,372 B by MemTracker.
    Without automatic collections that garbage stays until the run ends, the same for both
    trackers in every run.
    """
    gc.collect()
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _worker(work: Path, rank: int, world_size: int) -> None:
    """One gloo rank: every case for real, measured twice (MemTracker, memplan's tracker)."""
    import torch
    import torch.distributed as dist

    from memplan.trace.dist_report import rank_report
    from memplan.trace.distributed import run_parallel_training
    from memplan.trace.layout import is_fsdp

    torch.set_num_threads(1)
    cases: list[GlooCase] = pickle.loads((work / "cases.pkl").read_bytes())
    init_serial_gloo(f"file://{work / 'store'}", rank, world_size)
    results: dict[str, Any] = {}
    try:
        for case in cases:
            started = time.perf_counter()
            probe = MemTrackerProbe(fsdp=is_fsdp(case.plan))
            with _no_automatic_gc():
                run = run_parallel_training(
                    case.config, case.setup, case.plan, fake=False, name=case.name, probe=probe
                )
            results[case.name] = {
                "memtracker": probe.result(),
                "report": rank_report(case.name, case.setup, run).to_dict(),
                "seconds": round(time.perf_counter() - started, 3),
            }
            dist.barrier()
            if case.plain:
                run = run_parallel_training(
                    case.config, case.setup, case.plan, fake=False, probe=SettledProbe()
                )
                results[case.name]["plain"] = rank_report(case.name, case.setup, run).to_dict()
                dist.barrier()
    finally:
        dist.destroy_process_group()
    (work / f"real{rank}.json").write_text(json.dumps(results))


def _fake_worker(work: Path, rank: int, world_size: int) -> None:
    """The same rank of every case, traced under a fake process group."""
    import torch

    from memplan.trace.dist_report import rank_report
    from memplan.trace.distributed import fake_process_group, run_parallel_training

    torch.set_num_threads(1)
    cases: list[GlooCase] = pickle.loads((work / "cases.pkl").read_bytes())
    results = {}
    for case in cases:
        with fake_process_group(rank, world_size):
            run = run_parallel_training(case.config, case.setup, case.plan, name=case.name)
        results[case.name] = rank_report(case.name, case.setup, run).to_dict()
    (work / f"fake{rank}.json").write_text(json.dumps(results))


if __name__ == "__main__":
    _work, _rank, _world = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    _worker(_work, _rank, _world)
    if sys.argv[4] == "real+fake":
        _fake_worker(_work, _rank, _world)
