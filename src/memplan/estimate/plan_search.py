"""``memplan plan``: every parallel plan of a cluster, judged, filtered and ranked (issue 10).

:func:`enumerate_plans` lists the plans of a cluster for a model, sequence and global batch:
tensor x pipeline x context x expert x data parallelism (every factorisation of the GPU count),
sequence parallelism, the data-parallel runtime (DDP, DeepSpeed ZeRO 1-3, FSDP2 full /
shard-grad-op / hybrid), offload, the pipeline schedule (1F1B, GPipe, interleaved with 2 or 4
virtual stages), the micro-batch (every divisor of the per-rank batch; gradient accumulation
fills the global batch) and checkpointing (none, selective, full). A plan that breaks a rule
(a degree that does not divide the heads, a batch that does not split) is counted under that
rule. :func:`search` evaluates the rest on arrays (:mod:`memplan.estimate.plan_grid`: the
per-plan engine's own functions), removes those whose worst rank does not fit, and ranks by
the objective.
"""

from __future__ import annotations

import dataclasses
import itertools
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from memplan.errors import MemplanError, SetupError
from memplan.estimate.dist_local import local_step_fast
from memplan.estimate.fit import training_usable_bytes
from memplan.estimate.plan_grid import (
    CHECKPOINTINGS,
    GridResult,
    PlanBatch,
    PlanRow,
    evaluate_grid,
    fill_tables,
    new_tables,
)
from memplan.estimate.plan_points import PlanPoints, chart_points
from memplan.specs.hardware import Gpu
from memplan.specs.model import ModelSpec
from memplan.specs.parallel import (
    DeepSpeedConfig,
    Offload,
    ParallelPlan,
    Schedule,
    Sharding,
    validate_plan,
)
from memplan.specs.training import Checkpointing, Optimizer, TrainingSetup

__all__ = [
    "FEATURES",
    "OBJECTIVES",
    "PlanResult",
    "SearchResult",
    "SearchSpace",
    "enumerate_batch",
    "enumerate_plans",
    "plan_args",
    "search",
]

FEATURES = ("zero", "fsdp", "tp", "sp", "pp", "cp", "ep", "offload", "recompute")
"""What ``--only`` may allow (plain DDP data parallelism is always allowed)."""
OBJECTIVES = ("time", "cost", "memory")
SHARDINGS = (
    Sharding.DDP,
    Sharding.ZERO_1,
    Sharding.ZERO_2,
    Sharding.ZERO_3,
    Sharding.FSDP_FULL,
    Sharding.FSDP_SHARD_GRAD_OP,
    Sharding.FSDP_HYBRID,
)
"""ZeRO stage 0 and FSDP2 no-shard are left out: DDP's memory in another runtime."""
CHUNK = 30_000
"""Plans per array evaluation: a progress report after each, one task each with ``--jobs``.
A multiple of ``len(CHECKPOINTINGS)``, so that a chunk keeps the plans of a micro-batch
together (``plan_layout``). A chunk's arrays peak at 12.5 MiB for Llama-3.1-70B on 64 GPUs
(0.4 KiB a plan; ``tracemalloc``) and at most 24 MiB for the 405B on 16,384 (more rank groups
a plan); bench/bench_plan.py's 405B question ran fastest at 30,000 (21,000: 8 % slower,
60,000: 40 % slower, its arrays past the CPU caches), the 70B one at 60,000 (30,000: 14 %
slower)."""
VIRTUAL_STAGES = (2, 4)
"""Model chunks per pipeline rank tried with the interleaved schedule."""
_FSDP_FLAG = {
    Sharding.FSDP_FULL: "full",
    Sharding.FSDP_SHARD_GRAD_OP: "shard-grad-op",
    Sharding.FSDP_HYBRID: "hybrid",
}


@dataclass(frozen=True, slots=True, kw_only=True)
class SearchSpace:
    """The cluster, the batch, and the limits of the search."""

    nodes: int
    gpus_per_node: int
    global_batch: int
    max_tp: int | None = None
    """Largest tensor-parallel degree; None: the GPUs of one node (TP inside NVLink)."""
    max_pp: int | None = None
    max_cp: int | None = None
    max_ep: int | None = None
    max_micro_batch: int = 64
    only: frozenset[str] = frozenset(FEATURES)
    reserve_bytes: int = 0
    """Memory each GPU keeps free beyond the fit's own margin."""
    network_bytes_per_s: float | None = None
    intra_node_bytes_per_s: float | None = None

    @property
    def world(self) -> int:
        return self.nodes * self.gpus_per_node


@lru_cache(maxsize=256)
def _divisors(n: int) -> tuple[int, ...]:
    return tuple(d for d in range(1, n + 1) if n % d == 0)


def _tp_rule(spec: ModelSpec, tp: int) -> str | None:
    widths = [spec.n_heads, spec.intermediate_size]
    if spec.moe is not None:
        widths.append(spec.moe.expert_intermediate_size)
        if spec.moe.shared_intermediate_size:
            widths.append(spec.moe.shared_intermediate_size)
    kv = spec.n_kv_heads
    if any(w % tp for w in widths) or (kv % tp and tp % kv):
        return "tp must divide the attention heads and the MLP widths"
    return None


@dataclass(frozen=True, slots=True)
class _Structure:
    """A plan without its micro-batch and checkpointing (the degrees and the runtime)."""

    tp: int
    pp: int
    cp: int
    ep: int
    sp: bool
    sharding: Sharding
    offload: Offload
    schedule: Schedule
    virtual: int


def _structures(spec: ModelSpec, space: SearchSpace) -> list[_Structure]:
    """Every combination of degrees and runtime the limits allow (rules not yet applied)."""
    only, world = space.only, space.world
    max_tp = space.max_tp or space.gpus_per_node
    divs = _divisors(world)
    tps = [d for d in divs if d <= max_tp and (d == 1 or "tp" in only)]
    pps = [d for d in divs if d <= (space.max_pp or world) and (d == 1 or "pp" in only)]
    cps = [d for d in divs if d <= (space.max_cp or world) and (d == 1 or "cp" in only)]
    shardings = [
        s for s in SHARDINGS
        if s is Sharding.DDP or ("zero" if s.is_deepspeed else "fsdp") in only
    ]  # fmt: skip
    offloads = {s: _offloads(s, only) for s in shardings}
    out = []
    for tp in tps:
        for pp in pps:
            for cp in cps:
                if world % (tp * pp * cp):
                    continue
                dp = world // (tp * pp * cp)
                eps = [1]
                if spec.moe is not None and "ep" in only:
                    eps = [e for e in _divisors(dp * cp) if e <= (space.max_ep or world)]
                sps = (False, True) if tp > 1 and "sp" in only else (False,)
                schedules = [(Schedule.ONE_F_ONE_B, 1)]
                if pp > 1:
                    schedules.append((Schedule.GPIPE, 1))
                    schedules += [(Schedule.INTERLEAVED, v) for v in VIRTUAL_STAGES]
                for ep in eps:
                    for sp in sps:
                        for sharding in shardings:
                            for off in offloads[sharding]:
                                for sched, v in schedules:
                                    out.append(_Structure(tp, pp, cp, ep, sp, sharding, off,
                                                          sched, v))  # fmt: skip
    return out


def _offloads(sharding: Sharding, only: frozenset[str]) -> list[Offload]:
    """The offloads a runtime offers (``specs.parallel`` rejects the others)."""
    out = [Offload.NONE]
    if "offload" not in only:
        return out
    if sharding.is_deepspeed:
        out.append(Offload.OPTIMIZER)
    if sharding in (Sharding.ZERO_3, Sharding.FSDP_FULL):
        out.append(Offload.PARAMS)
    return out


def _checkpointings(only: frozenset[str]) -> tuple[Checkpointing, ...]:
    if "recompute" in only:
        return (Checkpointing.NONE, Checkpointing.SELECTIVE, Checkpointing.FULL)
    return (Checkpointing.NONE,)


def _structure_rule(
    spec: ModelSpec, space: SearchSpace, seq: int, s: _Structure, tp_rules: dict[int, str | None]
) -> str | None:
    """The first rule ``s`` breaks (None: a valid structure); ``tp_rules``: :func:`_tp_rule`
    per tensor-parallel degree, filled as degrees come."""
    dp = space.world // (s.tp * s.pp * s.cp)
    if s.tp not in tp_rules:
        tp_rules[s.tp] = _tp_rule(spec, s.tp)
    rule = tp_rules[s.tp]
    if rule:
        return rule
    if s.pp * s.virtual > spec.n_layers:
        return "pp x virtual stages must not exceed the layers"
    if s.cp > 1 and seq % (2 * s.cp):
        return "seq must be divisible by 2 x cp"
    if s.sp and (seq // s.cp) % s.tp:
        return "sequence parallelism needs seq / cp divisible by tp"
    if spec.moe is not None and spec.moe.n_experts % s.ep:
        return "ep must divide the experts"
    if space.global_batch % dp:
        return "the global batch must be divisible by dp"
    if s.pp > 1 and _ZERO_STAGE[s.sharding] >= 2:
        return "DeepSpeed's pipeline engine runs ZeRO 0 or 1 only"
    if s.sharding is Sharding.FSDP_HYBRID and dp == 1:
        return "FSDP hybrid needs data parallelism"
    return None


_ZERO_STAGE = {s: s.zero_stage for s in Sharding}
"""``Sharding.zero_stage`` of each runtime, looked up once."""


def _plan(space: SearchSpace, s: _Structure) -> ParallelPlan:
    extra: dict[str, Any] = {}
    if space.network_bytes_per_s is not None:
        extra["network_bytes_per_s"] = space.network_bytes_per_s
    return ParallelPlan(
        nodes=space.nodes,
        gpus_per_node=space.gpus_per_node,
        tp_degree=s.tp,
        pp_degree=s.pp,
        cp_degree=s.cp,
        ep_degree=s.ep,
        sequence_parallel=s.sp,
        sharding=s.sharding,
        schedule=s.schedule,
        virtual_stages=s.virtual,
        global_batch=space.global_batch,
        offload=s.offload,
        intra_node_bytes_per_s=space.intra_node_bytes_per_s,
        deepspeed=_DEEPSPEED,
        **extra,
    )


_DEEPSPEED = DeepSpeedConfig()
"""DeepSpeed's default sizes, one object the plans share (building one validates it)."""


def enumerate_plans(
    spec: ModelSpec, setup: TrainingSetup, space: SearchSpace
) -> tuple[list[PlanRow], Counter[str], int]:
    """(valid plans, plans removed per rule, plans considered in all)."""
    batch, removed, total = enumerate_batch(spec, setup, space)
    return [batch.row(i) for i in range(len(batch))], removed, total


def enumerate_batch(
    spec: ModelSpec, setup: TrainingSetup, space: SearchSpace
) -> tuple[PlanBatch, Counter[str], int]:
    """:func:`enumerate_plans` as a :class:`PlanBatch`: the rules are checked once per
    structure, its micro-batches and checkpointings laid out on arrays."""
    import numpy as np

    removed: Counter[str] = Counter()
    ckpts = [CHECKPOINTINGS.index(c) for c in _checkpointings(space.only)]
    n_ckpt = len(ckpts)
    misfit: dict[tuple[Any, ...], str | None] = {}
    tp_rules: dict[int, str | None] = {}
    plans: list[ParallelPlan] = []
    batches: list[tuple[int, ...]] = []
    total = 0
    by_dp: dict[int, tuple[int, ...]] = {}  # the micro-batches of a dp
    interleavable: dict[tuple[int, int], tuple[int, ...]] = {}  # of a (dp, pp)
    for s in _structures(spec, space):
        dp = space.world // (s.tp * s.pp * s.cp)
        bs = by_dp.get(dp)
        if bs is None:
            per_rank = space.global_batch // dp if space.global_batch % dp == 0 else 1
            bs = by_dp[dp] = tuple(b for b in _divisors(per_rank) if b <= space.max_micro_batch)
        count = len(bs) * n_ckpt
        total += count
        rule = _structure_rule(spec, space, setup.seq, s, tp_rules)
        plan = None
        if rule is None:
            try:
                plan = _plan(space, s)
                validate_plan(spec, plan, micro_batch=bs[0], seq=setup.seq)
            except SetupError as exc:
                rule = str(exc).split(":")[0]
        if rule is not None or plan is None:
            removed[rule or ""] += count
            continue
        if s.schedule is Schedule.INTERLEAVED:
            kept = interleavable.get((dp, s.pp))
            if kept is None:
                kept = interleavable[dp, s.pp] = tuple(
                    b for b in bs if (space.global_batch // (dp * b)) % s.pp == 0
                )
            if len(kept) < len(bs):
                removed["interleaving needs micro-batches a multiple of pp"] += (
                    len(bs) - len(kept)
                ) * n_ckpt
            bs = kept
        rule = _kernel_rule(spec, setup, plan, misfit) if bs and s.cp > 1 else None
        if rule is not None:
            removed[rule] += len(bs) * n_ckpt
        elif bs:
            plans.append(plan)
            batches.append(bs)
    sizes = np.fromiter(map(len, batches), dtype=np.int64, count=len(batches)) * n_ckpt
    n = int(sizes.sum())
    micro = np.fromiter(itertools.chain.from_iterable(batches), dtype=np.int64, count=n // n_ckpt)
    batch = PlanBatch(
        tuple(plans), np.repeat(np.arange(len(plans)), sizes), np.repeat(micro, n_ckpt),
        np.tile(np.asarray(ckpts, dtype=np.int64), n // n_ckpt),
    )  # fmt: skip
    return batch, removed, total


@dataclass(frozen=True, slots=True)
class PlanResult:
    """One feasible plan, as ``memplan plan`` prints it."""

    row: PlanRow
    peak_bytes: int
    headroom_bytes: int
    worst_stage: int
    step_seconds: float
    compute_seconds: float
    bubble_seconds: float
    exposed_comm_seconds: float
    offload_seconds: float
    comm_seconds: dict[str, float]
    mfu: float
    limit: str


@dataclass(frozen=True, slots=True)
class SearchResult:
    plans: list[PlanResult]
    """The top plans, best first."""
    plans_evaluated: int
    plans_feasible: int
    plans_considered: int
    removed: Counter[str]
    seconds: float
    runner_up: PlanResult | None = None
    """The best feasible plan with a longer step than the first (what the first beats)."""
    points: PlanPoints | None = None
    """The feasible plans a chart of step time against peak draws (``plan_points``)."""


def _limit(r: GridResult, i: int, headroom: int, usable: int) -> str:
    """What holds the plan back: its largest exposed overhead over compute (data-parallel
    collectives count only beyond the backward they overlap), or memory when the worst rank
    keeps under 5 % of the GPU free."""
    step = float(r.step_s[i])
    others = {f"{k} communication": float(v[i]) for k, v in r.comm_s.items() if k != "dp"}
    parts = {"pipeline bubble": float(r.bubble_s[i]), "offload transfers": float(r.offload_s[i]),
             "dp communication": float(r.exposed_comm_s[i]) - sum(others.values()), **others}  # fmt: skip
    name, secs = max(parts.items(), key=lambda kv: kv[1])
    label = "compute" if secs < 0.05 * step else f"{name} ({100 * secs / step:.0f}% of the step)"
    if headroom < 0.05 * usable:
        label += f"; memory ({100 * headroom / usable:.1f}% free)"
    return label


_KEYS: dict[str, Callable[[GridResult, Any], tuple[Any, ...]]] = {
    "time": lambda r, np: (r.peak_bytes, r.step_s),
    "cost": lambda r, np: (r.peak_bytes, r.step_s),
    "memory": lambda r, np: (r.step_s, r.peak_bytes),
}
"""np.lexsort keys, the last the primary one. With one cluster the cost of a token is the step
time times the GPUs' price: cost ranks like time."""


def _evaluate(
    spec: ModelSpec,
    setup: TrainingSetup,
    gpu: Gpu,
    batch: PlanBatch,
    jobs: int,
    progress: Callable[[int], None],
) -> GridResult:
    """The grid in chunks (a progress report after each), over ``jobs`` processes if > 1."""
    import numpy as np

    chunks = [batch.take(slice(i, i + CHUNK)) for i in range(0, len(batch), CHUNK)]
    if jobs > 1 and len(chunks) > 1:
        import multiprocessing

        with multiprocessing.get_context("fork").Pool(jobs) as pool:
            parts = pool.starmap(evaluate_grid, [(spec, setup, gpu, c) for c in chunks])
        progress(len(batch))
    else:
        parts, done = [], 0
        tables = new_tables(spec, setup, gpu)
        fill_tables(tables, batch)  # the tables stacked into arrays once, not per chunk
        for c in chunks:
            parts.append(evaluate_grid(spec, setup, gpu, c, tables=tables))
            done += len(c)
            progress(done)
    fields: dict[str, Any] = {}
    for f in dataclasses.fields(GridResult):
        if f.name == "comm_s":
            keys = parts[0].comm_s
            fields[f.name] = {k: np.concatenate([p.comm_s[k] for p in parts]) for k in keys}
        else:
            fields[f.name] = np.concatenate([getattr(p, f.name) for p in parts])
    return GridResult(**fields)


def search(
    spec: ModelSpec,
    setup: TrainingSetup,
    gpu: Gpu,
    space: SearchSpace,
    *,
    objective: str = "time",
    top: int = 10,
    jobs: int = 1,
    progress: bool = False,
) -> SearchResult:
    """Every plan of ``space`` (module docstring), the ``top`` best by ``objective``."""
    import numpy as np

    if objective not in OBJECTIVES:
        raise SetupError(f"unknown objective {objective!r}: choose {', '.join(OBJECTIVES)}")
    start = time.perf_counter()
    batch, removed, total = enumerate_batch(spec, setup, space)
    report = _progress_bar(start, len(batch)) if progress else (lambda done: None)
    grid = _evaluate(spec, setup, gpu, batch, jobs, report) if len(batch) else None
    usable = training_usable_bytes(gpu) - space.reserve_bytes
    if grid is None:
        return SearchResult([], 0, 0, total, removed, time.perf_counter() - start)
    fits = grid.peak_bytes <= usable
    _count_memory_misfits(batch, grid, ~fits, removed, np)
    order = np.lexsort(_KEYS[objective](grid, np))
    feasible = order[fits[order]]
    best = [int(i) for i in feasible[:top]]
    plans = [_result(batch.row(i), grid, i, usable) for i in best]
    runner_up = None
    if len(feasible):
        slower = feasible[grid.step_s[feasible] > grid.step_s[feasible[0]]]
        if len(slower):
            runner_up = _result(batch.row(int(slower[0])), grid, int(slower[0]), usable)
    points = chart_points(batch.row, grid.peak_bytes, grid.step_s, feasible, top)
    return SearchResult(plans, len(batch), int(fits.sum()), total, removed,
                        time.perf_counter() - start, runner_up, points)  # fmt: skip


def _count_memory_misfits(
    batch: PlanBatch, grid: GridResult, misfit: Any, removed: Counter[str], np: Any
) -> None:
    """Count the plans that do not fit under :func:`_memory_rule`'s rule of their worst rank
    (in the order the rules first occur, as a loop over the plans would)."""
    pp = np.asarray([p.pp_degree for p in batch.plans], dtype=np.int64)[batch.structure]
    stage = np.asarray(grid.worst_stage, dtype=np.int64)
    where = np.select([pp == 1, stage == 0, stage == pp - 1], [0, 1, 2], 3)[misfit]
    kinds, first, counts = np.unique(where, return_index=True, return_counts=True)
    for j in np.argsort(first, kind="stable"):
        removed[_MEMORY_RULES[int(kinds[j])]] += int(counts[j])


_MEMORY_RULES = tuple(
    f"memory: does not fit on {where}"
    for where in ("the ranks (no pipeline)", "the first pipeline stage",
                  "the last pipeline stage", "a middle pipeline stage")
)  # fmt: skip
"""Where the worst rank of a plan that does not fit sits: no pipeline, first, last, middle."""


def _kernel_rule(
    spec: ModelSpec,
    setup: TrainingSetup,
    plan: ParallelPlan,
    seen: dict[tuple[Any, ...], str | None],
) -> str | None:
    """Context parallelism needs a fused attention kernel: the rule a plan whose local model
    cannot run one breaks (``dist_local`` raises), None otherwise; ``seen`` caches it. Only
    plans with context parallelism are asked."""
    key = (plan.tp_degree, plan.cp_degree, plan.sharding is Sharding.DDP)
    if key not in seen:
        seen[key] = None
        try:
            local_step_fast(spec, dataclasses.replace(setup, batch=1), plan)
        except MemplanError as exc:
            seen[key] = str(exc).split(":")[0]
    return seen[key]


def _progress_bar(start: float, total: int) -> Callable[[int], None]:
    """A progress line on stderr, shown once the search has run for a second."""

    def report(done: int) -> None:
        if time.perf_counter() - start < 1.0 or not sys.stderr.isatty():
            return
        end = "\n" if done >= total else ""
        print(f"\rmemplan plan: {done:,} of {total:,} plans ({100 * done / total:.0f}%)",
              end=end, file=sys.stderr, flush=True)  # fmt: skip

    return report


def _result(row: PlanRow, g: GridResult, i: int, usable: int) -> PlanResult:
    peak = int(g.peak_bytes[i])
    return PlanResult(
        row=row,
        peak_bytes=peak,
        headroom_bytes=usable - peak,
        worst_stage=int(g.worst_stage[i]),
        step_seconds=float(g.step_s[i]),
        compute_seconds=float(g.compute_s[i]),
        bubble_seconds=float(g.bubble_s[i]),
        exposed_comm_seconds=float(g.exposed_comm_s[i]),
        offload_seconds=float(g.offload_s[i]),
        comm_seconds={k: float(v[i]) for k, v in g.comm_s.items()},
        mfu=float(g.mfu[i]),
        limit=_limit(g, i, usable - peak, usable),
    )


def plan_args(model: str, setup: TrainingSetup, row: PlanRow, gpu: str) -> dict[str, list[str]]:
    """The ``memplan train`` and ``memplan time`` flags that reproduce ``row``."""
    p = row.plan
    common = [model, "--gpu", gpu, "--nodes", str(p.nodes), "--gpus-per-node",
              str(p.gpus_per_node), "--seq", str(setup.seq), "--precision",
              setup.precision.value]  # fmt: skip
    if setup.allow_long_seq:
        common.append("--allow-long-seq")
    layout: list[str] = []
    for flag, value in (("--tp", p.tp_degree), ("--pp", p.pp_degree), ("--cp", p.cp_degree),
                        ("--ep", p.ep_degree)):  # fmt: skip
        if value > 1:
            layout += [flag, str(value)]
    if p.sequence_parallel:
        layout.append("--sp")
    if p.sharding.is_deepspeed:
        layout += ["--zero", str(p.sharding.zero_stage)]
    elif p.sharding.is_fsdp:
        layout += ["--fsdp", _FSDP_FLAG[p.sharding]]
    if p.pp_degree > 1 and p.schedule is not Schedule.ONE_F_ONE_B:
        layout += ["--schedule", p.schedule.value]
        if p.virtual_stages > 1:
            layout += ["--virtual-stages", str(p.virtual_stages)]
    if p.offload is not Offload.NONE:
        layout += ["--offload", p.offload.value]
    if p.network_bytes_per_s != ParallelPlan.__dataclass_fields__["network_bytes_per_s"].default:
        layout += ["--network", f"{p.network_bytes_per_s:.6g}B/s"]
    if p.intra_node_bytes_per_s is not None:
        layout += ["--nvlink", f"{p.intra_node_bytes_per_s:.6g}B/s"]
    b, gb = str(row.micro_batch), str(p.global_batch)
    train = [*common, "--batch", b, "--global-batch", gb, *layout,
             "--checkpointing", row.checkpointing.value]  # fmt: skip
    if setup.optimizer is not Optimizer.ADAMW:
        train += ["--optimizer", setup.optimizer.value]
    time_ = [*common, "--batch", gb, "--micro-batch", b, *layout]
    if row.checkpointing is Checkpointing.FULL:
        time_.append("--recompute")
    return {"train": train, "time": time_}
