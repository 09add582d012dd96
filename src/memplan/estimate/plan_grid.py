"""A grid of parallel plans evaluated on NumPy arrays with the per-plan engine's own functions.

``memplan plan`` (issue 10) judges every plan of a cluster. The per-plan engine
(:func:`memplan.estimate.distributed.rank_groups`, :func:`memplan.estimate.dist_time.step_time`)
splits a plan into constants and arithmetic:

- constants, computed by the same scalar code once per distinct key and kept in tables
  (:mod:`memplan.estimate.plan_tables`, stacked into arrays by
  :mod:`memplan.estimate.plan_columns`): the rank-local models' numbers, the rank groups'
  model states, data-parallel collectives and offload transfers;
- arithmetic, run here on arrays over every (rank group, plan) of the grid:
  :func:`~memplan.estimate.dist_rank.single_stage_phases`,
  :func:`~memplan.estimate.dist_rank.pipeline_stage_phases`,
  :func:`~memplan.estimate.dist_rank.comm_lines`,
  :func:`~memplan.estimate.dist_time.model_parallel_terms`,
  :func:`~memplan.estimate.dist_time.offload_seconds` and
  :func:`~memplan.estimate.dist_time.step_numbers`.

Plans come as a :class:`PlanBatch` (a list of :class:`PlanRow` is turned into one), laid out
by :func:`memplan.estimate.plan_layout.layout` as (rank groups, plans of one structure)
arrays: what depends on the rank group alone is a column computed once per rank group and
broadcast over the structure's micro-batches and checkpointings.

The result equals ``memplan train`` / ``memplan time`` of each plan to the byte and to the
bit of the float (tests/test_plan_search.py draws 10,000 plans and compares).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from memplan.estimate.dist_rank import (
    ALL_PHASES,
    RankShape,
    comm_lines,
    pipeline_stage_phases,
    single_stage_phases,
)
from memplan.estimate.dist_time import (
    CollectiveTerm,
    model_parallel_terms,
    offload_seconds,
    pcie_bytes_per_s,
    step_numbers,
)
from memplan.estimate.plan_columns import local_arrays, stacked, state_arrays
from memplan.estimate.plan_layout import Layout, PlanBatch, PlanRow, layout
from memplan.estimate.plan_tables import CHECKPOINTINGS, Tables, new_tables
from memplan.formulas.time import DEFAULT_COMPUTE_EFFICIENCY
from memplan.specs.hardware import Gpu
from memplan.specs.model import ModelSpec
from memplan.specs.training import TrainingSetup

__all__ = [
    "CHECKPOINTINGS",
    "GridResult",
    "PlanBatch",
    "PlanRow",
    "evaluate_grid",
    "fill_tables",
    "new_tables",
]


@dataclass(frozen=True, slots=True)
class GridResult:
    """Per plan (arrays in the order of the rows given): the worst rank's peak, the stage of
    that rank, and the step's parts (``dist_time.StepNumbers`` fields)."""

    peak_bytes: Any
    worst_stage: Any
    compute_s: Any
    bubble_s: Any
    exposed_comm_s: Any
    offload_s: Any
    step_s: Any
    mfu: Any
    comm_s: dict[str, Any]
    """The slowest stage's seconds per parallelism (dp, tp, cp, ep, pp)."""


def evaluate_grid(
    spec: ModelSpec,
    setup: TrainingSetup,
    gpu: Gpu,
    rows: list[PlanRow] | PlanBatch,
    *,
    dtype: str = "bf16",
    efficiency: float = DEFAULT_COMPUTE_EFFICIENCY,
    tables: Any = None,
) -> GridResult:
    """Worst-rank peak and step time of every plan in ``rows`` (module docstring). ``setup``:
    the fixed part (precision, optimizer, sequence); every row gives its micro-batch and
    checkpointing. Plans must be valid (``validate_plan``); the caller filters. Rows sharing
    a plan object share its constants (``enumerate_plans`` gives them so). ``tables``: a
    ``new_tables(...)`` shared by the chunks of one grid (its scalar constants built once)."""
    import numpy as np

    _reuse_freed_memory(np)
    t = tables if tables is not None else new_tables(spec, setup, gpu)
    batch = rows if isinstance(rows, PlanBatch) else PlanBatch.of(rows)
    if not len(batch):
        none, count = np.zeros(0), np.zeros(0, dtype=np.int64)
        comm = {k: none for k in ("dp", "tp", "cp", "ep", "pp")}
        return GridResult(count, count, none, none, none, none, none, none, comm)
    return _evaluate_arrays(t, layout(t, batch, np), dtype, efficiency, np)


_REUSE_BYTES = 16 << 20
"""The size of the array :func:`_reuse_freed_memory` frees (16 MiB: over any temporary of a
chunk, under glibc's largest dynamic mmap threshold, 32 MiB on 64-bit)."""
_reused: list[bool] = []


def _reuse_freed_memory(np: Any) -> None:
    """Once per process, allocate and free one :data:`_REUSE_BYTES` array (untouched: no page
    is mapped). glibc serves an allocation above its mmap threshold (128 KiB at start) with
    fresh pages and unmaps them on free, unless a block that large was freed before: the
    threshold then rises to that block's size and the trim threshold to twice it (mallopt(3),
    M_MMAP_THRESHOLD). The grid's (rows, B, C) temporaries (hundreds of KiB each) then reuse
    heap memory. Measured on bench/bench_plan.py's grids in ``plan_search.CHUNK`` chunks, CPU
    time per evaluation without / with: 70B 0.045 s (7,311 page faults, 21 ms of it system
    time) / 0.023 s (none); 405B 0.238 s (39,252 faults) / 0.132 s. Elsewhere than glibc: one
    harmless allocation."""
    if not _reused:
        _reused.append(True)
        np.empty(_REUSE_BYTES, dtype=np.uint8)


def fill_tables(tables: Any, batch: PlanBatch) -> None:
    """Build every scalar constant ``batch`` needs into ``tables`` (a search calls this on the
    whole grid before its chunks, so that the tables are stacked into arrays once)."""
    import numpy as np

    if len(batch):
        layout(tables, batch, np)
        for name in ("locals", "local_widths", "states"):
            stacked(tables, name, np)


def _evaluate_arrays(t: Tables, lay: Layout, dtype: str, efficiency: float, np: Any) -> GridResult:
    """The grid's numbers from its layout (``plan_layout``): every row's peak and seconds on
    (rows, B, C) arrays, the largest per slot, then the step per plan."""
    st = t.structures
    slot = {k: v[lay.structure][:, None, None] for k, v in st.consts.items()}  # (S, 1, 1)
    rs = lay.row_slot
    row = {k: v[rs] for k, v in slot.items()}  # (G, 1, 1)
    stage, state_idx, first_class, layers, moe_layers, sends = (
        np.ascontiguousarray(x)[:, None, None] for x in lay.row_group.T
    )
    m = lay.micro_batches[rs]  # (G, B, 1)
    state, other = state_arrays(t, state_idx, np)
    shape = RankShape(
        micro_batches=m, stage=stage, pp=row["pp"], virtual=row["virtual"],
        gpipe=row["gpipe"], stage_layers=layers, first=(stage == 0).astype(np.int64),
        last=(stage == row["pp"] - 1).astype(np.int64), fsdp_reshard=row["fsdp_reshard"],
        fsdp_keep=row["fsdp_keep"], zero3=row["zero3"], prefetch_bytes=row["prefetch"],
        cp=row["cp_on"], ep=row["ep_on"], pipelined=(row["pp"] > 1).astype(np.int64),
    )  # fmt: skip
    peak_rows = _memory(t, lay, lay.local[rs], state, other, shape, np)
    sizes = {k: v[rs] for k, v in _transfer_bytes(t, slot, lay, np).items()}
    seconds = _row_seconds(t, row, other, sizes, layers, moe_layers, sends, m, np)
    if not first_class.all():  # the other data-parallel classes join the same collectives
        seconds = {k: v * first_class for k, v in seconds.items()}
    peak, worst_row = _slot_peak(peak_rows, lay.slot_rows, np)  # (S, B, C)
    cells = peak.shape
    # the slowest rank group's seconds, every parallelism in one (rows, B, 6) array
    per_row = m.shape
    together = np.concatenate([np.broadcast_to(v, per_row) for v in seconds.values()], axis=2)
    slowest = _slot_max(together, lay.slot_rows, np)
    worst = {k: slowest[..., j : j + 1] for j, k in enumerate(seconds)}
    numbers = step_numbers(
        forward_flops=lay.forward_flops, recompute=lay.recompute, micro_batches=lay.micro_batches,
        tp=slot["tp"], pp=slot["pp"], cp=slot["cp"], dp=slot["dp"], world=slot["world"],
        virtual=slot["virtual"], peak_flops_per_s=t.gpu.peak_flops_per_s(dtype),
        efficiency=efficiency, dp_s=worst["dp"],
        other_s=(worst["tp"], worst["cp"], worst["ep"], worst["pp"]), offload_s=worst["offload"],
    )  # fmt: skip

    def per_plan(x: Any) -> Any:
        return np.broadcast_to(x, cells).reshape(-1)[lay.flat]

    return GridResult(
        per_plan(peak), per_plan(stage[worst_row, 0, 0]), per_plan(numbers.compute_s),
        per_plan(numbers.bubble_s), per_plan(numbers.exposed_comm_s),
        per_plan(numbers.offload_s), per_plan(numbers.step_s), per_plan(numbers.mfu),
        {k: per_plan(v) for k, v in worst.items() if k != "offload"},
    )  # fmt: skip


def _slot_max(x: Any, slot_rows: tuple[tuple[Any, Any], ...], np: Any) -> Any:
    """The largest of each slot's rows (``Layout.slot_rows``) of ``x`` (rows, ...)."""
    out = x[slot_rows[0][1]]
    for slots, rows in slot_rows[1:]:
        out[slots] = np.maximum(out[slots], x[rows])
    return out


def _slot_peak(x: Any, slot_rows: tuple[tuple[Any, Any], ...], np: Any) -> tuple[Any, Any]:
    """:func:`_slot_max`, and the first row holding it (the worst rank group)."""
    out = x[slot_rows[0][1]]
    row = np.repeat(slot_rows[0][1], out[0].size).reshape(out.shape)
    for slots, rows in slot_rows[1:]:
        v, best = x[rows], out[slots]
        row[slots] = np.where(v > best, rows[:, None, None], row[slots])
        out[slots] = np.maximum(best, v)
    return out, row


def _sliced(obj: Any, rows: slice) -> Any:
    """A dataclass of arrays over rows restricted to ``rows`` (views: no copy)."""
    return dataclasses.replace(obj, **{f.name: _slice(getattr(obj, f.name), rows)
                                       for f in dataclasses.fields(obj)})  # fmt: skip


def _slice(v: Any, rows: slice) -> Any:
    if isinstance(v, dict):
        return {k: _slice(x, rows) for k, x in v.items()}
    if isinstance(v, tuple):
        return tuple(_slice(x, rows) for x in v)
    return v[rows] if getattr(v, "ndim", 0) else v


def _memory(
    t: Tables, lay: Layout, local_rows: Any, state: Any, other: dict[str, Any], shape: RankShape,
    np: Any,
) -> Any:  # fmt: skip
    """Peak bytes of every row and cell: its phases with their communication buffers, the
    largest total. Single-stage rows are the first ``lay.single_rows``."""
    peak = np.empty(local_rows.shape, dtype=np.int64)
    split = lay.single_rows
    for rows, pipelined in ((slice(0, split), False), (slice(split, len(peak)), True)):
        if rows.start == rows.stop:
            continue
        every = rows.stop - rows.start == len(peak)
        # a pipeline stage reads no phase of the local model (``parts``)
        loc = local_arrays(t, local_rows if every else local_rows[rows], np, parts=not pipelined)
        st, sh = (state, shape) if every else (_sliced(state, rows), _sliced(shape, rows))
        cols = other if every else {k: other[k][rows] for k in _MEMORY_COLUMNS}
        if pipelined:
            phases = pipeline_stage_phases(loc, st, sh)
        else:
            grads = (cols["layer_grads"], cols["first_layer_grads"])
            phases = single_stage_phases(loc, st, sh.micro_batches, layer_grads=grads)
        lines = comm_lines(loc, st, sh, {"persistent": cols["persistent"]})
        peak[rows] = _largest_total(phases, lines, np)
    return peak


_MEMORY_COLUMNS = ("layer_grads", "first_layer_grads", "persistent")


def _largest_total(
    phases: dict[str, dict[str, Any]], lines: dict[str, dict[str, Any]], np: Any
) -> Any:
    """The largest of the phases' totals (each phase's categories plus its communication
    lines, as ``distributed._group`` adds them), per element."""
    return _largest_sum([[*phases[n].values(), *lines[n].values()] for n in ALL_PHASES], np)


def _largest_sum(phases: list[list[Any]], np: Any) -> Any:
    """The largest of the sums of ``phases`` (lists of integers and integer arrays that
    broadcast together), per element.

    Integers add exactly in any order, so each sum is taken from its widest terms down: the
    phases are grouped by the arrays they hold of the widest shape (per (rank group,
    micro-batch, checkpointing), say); within a group the largest of the rest is found first
    (the same way, one shape narrower) and the group's wide arrays added to it once; the wide
    sums are extended in place from one group to the next where one's arrays include the
    other's (the end of the forward, then the backward's transients)."""
    arrays = [v for terms in phases for v in terms if getattr(v, "ndim", 0)]
    if not arrays:
        return max(sum(terms) for terms in phases)
    wide = max(arrays, key=lambda v: v.size).shape
    order: dict[int, int] = {}
    terms_at: list[Any] = []
    groups: dict[tuple[int, ...], list[list[Any]]] = {}
    for terms in phases:
        ids, rest = [], []
        for v in terms:
            if getattr(v, "shape", None) == wide:
                if id(v) not in order:
                    order[id(v)] = len(terms_at)
                    terms_at.append(v)
                ids.append(order[id(v)])
            else:
                rest.append(v)
        groups.setdefault(tuple(sorted(ids)), []).append(rest)
    best: Any = None
    acc: Any = None
    done: tuple[int, ...] = ()
    for key in sorted(groups, key=len):
        if not key:
            total = _largest_sum(groups[key], np)
        else:
            if acc is None or key[: len(done)] != done:
                acc, done = terms_at[key[0]].copy(), key[:1]
            for j in key[len(done) :]:
                np.add(acc, terms_at[j], out=acc)
            done = key
            total = acc + _largest_sum(groups[key], np)
        if best is None:
            best = total
        elif np.shape(best) == np.shape(total):
            np.maximum(best, total, out=best)
        else:
            best = np.maximum(best, total)
    return best


def _transfer_bytes(t: Tables, slot: dict[str, Any], lay: Layout, np: Any) -> dict[str, Any]:
    """Per plan, one micro-batch's bytes the model-parallel collectives move (the arguments of
    ``dist_time.model_parallel_terms``, as ``collective_terms`` computes them)."""
    widths = stacked(t, "local_widths", np)
    part = lay.local[:, :1, :1]  # the widths are the local part's
    compute, kv = widths[:, 0][part], widths[:, 1][part]
    b, s, h = lay.micro_batch, t.setup.seq // slot["cp"], t.spec.hidden_size
    top_k = t.spec.moe.top_k if t.spec.moe is not None else 0
    return {
        "act_bytes": b * s * h * compute,
        "kv_bytes": 2 * b * s * kv * t.spec.head_dim * compute,
        "routed_bytes": b * s * top_k * h * compute,
    }


def _row_seconds(
    t: Tables,
    row: dict[str, Any],
    other: dict[str, Any],
    sizes: dict[str, Any],
    layers: Any,
    moe_layers: Any,
    sends: Any,
    m: Any,
    np: Any,
) -> dict[str, Any]:
    """Seconds per step of each parallelism's collectives, and of the offload transfers, for
    every row (``dist_time.step_time``'s loop body, on arrays)."""
    gpn, nvlink, network = row["gpus_per_node"], row["nvlink"], row["network"]
    dp_s: Any = 0.0
    for wire, fixed, per_micro, group, stride in other["dp_slots"]:
        term = CollectiveTerm("dp", "", "", 0, fixed, per_micro, group, stride, wire)
        dp_s = dp_s + term.seconds(m, gpn, nvlink, network)
    terms = model_parallel_terms(
        **sizes, tp=row["tp"], cp=row["cp"], ep=row["ep"], dp=row["dp"],
        stage_layers=layers, moe_layers=moe_layers, sends=sends, virtual=row["virtual"],
    )  # fmt: skip
    out = {"dp": dp_s if not isinstance(dp_s, float) else np.zeros(m.shape)}
    for term in terms:
        out[term.parallelism] = term.seconds(m, gpn, nvlink, network)
    out["offload"] = offload_seconds(tuple(other["offload"]), m, pcie_bytes_per_s(t.gpu))
    return out
