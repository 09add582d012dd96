"""A batch of plans on arrays, and its layout for the array evaluation: slots x cells x rows.

A :class:`PlanBatch` holds plans without a Python object per plan: the distinct structures
(plans without micro-batch and checkpointing) and, per plan, its structure, micro-batch and
checkpointing. :func:`layout` arranges a batch for :mod:`memplan.estimate.plan_grid`:

- a *slot* is a run of consecutive plans of one structure (at most :data:`SLOT_CELLS`); its
  plans are the *cells* of one (B, C) block of (slots, B, C) arrays: C is the number of
  checkpointings when the plans come in runs of every checkpointing, one micro-batch each (as
  ``plan_search.enumerate_batch`` gives them), else 1; B is the most micro-batches (runs) of a
  slot (a shorter slot's spare cells repeat its last plan and are dropped from the result);
- a *row* is one rank group (pipeline stage x data-parallel class) of a slot's structure: the
  memory and the collectives are evaluated on (rows, B, C) arrays; what depends on the rank
  group only (its states, stage, the plan's degrees) is a (rows, 1, 1) column, what depends
  on the micro-batch but not the checkpointing (the micro-batches per step, the transfer
  sizes, the collectives' seconds) is (rows, B, 1), and only what the checkpointing changes
  (the local model's activations) is (rows, B, C).

So the arithmetic runs once per rank group, or per micro-batch, where that decides it, not once
per plan; the values are the same, element by element (NumPy broadcasting repeats the
operands). Single-stage slots come first, so that the two kinds of rank
(``single_stage_phases``, ``pipeline_stage_phases``) are two row ranges, not two gathers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from memplan.estimate.plan_columns import (
    cell_flops,
    cell_locals,
    cell_micro_batches,
    structures_of,
)
from memplan.estimate.plan_tables import CHECKPOINTINGS, Tables
from memplan.specs.parallel import ParallelPlan
from memplan.specs.training import Checkpointing

__all__ = ["SLOT_CELLS", "Layout", "PlanBatch", "PlanRow", "layout"]

SLOT_CELLS = 63
"""Plans in one slot at most: a structure has one plan per micro-batch and checkpointing (21
with micro-batches up to 64); a longer run of one structure takes several slots, so that one
long run does not widen every slot's line. A multiple of ``len(CHECKPOINTINGS)``."""


@dataclass(frozen=True, slots=True)
class PlanRow:
    """One plan of the grid: a structure (the plan without micro-batch and checkpointing), its
    micro-batch and its checkpointing."""

    plan: ParallelPlan
    micro_batch: int
    checkpointing: Checkpointing


@dataclass(frozen=True, slots=True)
class PlanBatch:
    """Plans as arrays: the distinct structures (plans without micro-batch and checkpointing),
    and per plan the index of its structure, its micro-batch and the index of its
    checkpointing in :data:`CHECKPOINTINGS` (what ``memplan plan`` enumerates without a
    Python object per plan)."""

    plans: tuple[ParallelPlan, ...]
    structure: Any
    micro_batch: Any
    checkpointing: Any

    def __len__(self) -> int:
        return len(self.structure)

    def row(self, i: int) -> PlanRow:
        """Plan ``i`` as a :class:`PlanRow`."""
        return PlanRow(self.plans[int(self.structure[i])], int(self.micro_batch[i]),
                       CHECKPOINTINGS[int(self.checkpointing[i])])  # fmt: skip

    def take(self, index: Any) -> PlanBatch:
        """The plans ``index`` (a slice or an index array), sharing the structures."""
        return PlanBatch(self.plans, self.structure[index], self.micro_batch[index],
                         self.checkpointing[index])  # fmt: skip

    @classmethod
    def of(cls, rows: list[PlanRow]) -> PlanBatch:
        """The batch of ``rows`` (rows sharing a plan object share its structure)."""
        import numpy as np

        index: dict[int, int] = {}
        plans: list[ParallelPlan] = []
        structure = []
        for r in rows:
            si = index.get(id(r.plan))
            if si is None or plans[si] is not r.plan:
                si = index[id(r.plan)] = len(plans)
                plans.append(r.plan)
            structure.append(si)
        ckpt = {c: i for i, c in enumerate(CHECKPOINTINGS)}
        return cls(tuple(plans), np.asarray(structure, dtype=np.int64),
                   np.asarray([r.micro_batch for r in rows], dtype=np.int64),
                   np.asarray([ckpt[r.checkpointing] for r in rows], dtype=np.int64))  # fmt: skip


@dataclass(frozen=True, slots=True)
class Layout:
    """A batch laid out as slots x (B, C) cells (plans) and rows (rank groups) x cells
    (module docstring)."""

    structure: Any
    """(S,) The structure of each slot, single-stage ones first."""
    single_slots: int
    single_rows: int
    """Slots, and rows, of single-stage structures (the first ones)."""
    micro_batch: Any
    """(S, B, 1) Each cell's micro-batch."""
    recompute: Any
    """(S, B, C) 1 with full checkpointing."""
    local: Any
    """(S, B, C) Each cell's local model (index in the tables)."""
    micro_batches: Any
    """(S, B, 1) Micro-batches per step."""
    forward_flops: Any
    """(S, B, 1) One micro-batch's forward FLOPs."""
    flat: Any
    """(N,) Where each plan of the batch sits in the (S, B, C) cells, flattened."""
    row_slot: Any
    """(G,) The slot of each row."""
    row_group: Any
    """(G, 6) Each row's rank group (``plan_tables.rank_group_rows``)."""
    slot_rows: tuple[tuple[Any, Any], ...]
    """(slots, their rows): every slot and its first row, the slots with a second row and
    that row, ..., as many as the most rows a slot has: the largest over each slot's rows is
    the largest of these gathers (faster than ``np.maximum.reduceat`` over runs of 1 to 12
    rows)."""


def _slots(structure: Any, widest: int, np: Any) -> tuple[Any, Any]:
    """(first unit, units) of each slot: runs of one structure, cut every ``widest``."""
    n = len(structure)
    change = np.ones(n, dtype=bool)
    change[1:] = structure[1:] != structure[:-1]
    run = np.flatnonzero(change)
    pos = np.arange(n) - np.repeat(run, np.diff(np.r_[run, n]))
    first = np.flatnonzero(pos % widest == 0)
    return first, np.diff(np.r_[first, n])


def _checkpointings(batch: PlanBatch, np: Any) -> int:
    """C of the layout: ``len(CHECKPOINTINGS)`` when the plans come in runs of every
    checkpointing in :data:`CHECKPOINTINGS` order, each run one micro-batch of one structure
    (``plan_search.enumerate_batch`` lays them out so), else 1."""
    c = len(CHECKPOINTINGS)
    if len(batch) % c:
        return 1
    ckpt = batch.checkpointing.reshape(-1, c)
    if not (ckpt == np.arange(c)).all():
        return 1
    for x in (batch.structure.reshape(-1, c), batch.micro_batch.reshape(-1, c)):
        if not (x == x[:, :1]).all():
            return 1
    return c


def layout(t: Tables, batch: PlanBatch, np: Any) -> Layout:
    """``batch`` as a :class:`Layout`, the tables' constants it needs built where missing."""
    st = structures_of(t, batch.plans, np)
    width = _checkpointings(batch, np)
    structures, micro = batch.structure[::width], batch.micro_batch[::width]  # per unit
    first, size = _slots(structures, SLOT_CELLS // width, np)
    structure = structures[first]
    single = st.consts["pp"][structure] == 1
    if (single[1:] > single[:-1]).any():  # a single-stage slot after a pipelined one
        order = np.r_[np.flatnonzero(single), np.flatnonzero(~single)]
        first, size, structure, single = first[order], size[order], structure[order], single[order]
    col = np.arange(int(size.max(initial=1)))
    unit = first[:, None] + np.minimum(col, size[:, None] - 1)  # spare cells: the last plan
    cell = unit[:, :, None] * width + np.arange(width)  # (S, B, C) plan index
    valid = np.broadcast_to((col < size[:, None])[:, :, None], cell.shape)
    flat = np.empty(len(batch), dtype=np.int64)
    flat[cell[valid]] = np.flatnonzero(valid)
    b, c = micro[unit][:, :, None], batch.checkpointing[cell]
    counts = st.group_counts[structure]
    starts = np.r_[0, np.cumsum(counts)[:-1]]
    more = (np.flatnonzero(counts > j) for j in range(1, int(counts.max())))
    slot_rows = ((slice(None), starts), *((k, starts[k] + j) for j, k in enumerate(more, 1)))
    row_slot = np.repeat(np.arange(len(structure)), counts)
    rows = np.repeat(st.group_offsets[structure] - starts, counts) + np.arange(len(row_slot))
    full = CHECKPOINTINGS.index(Checkpointing.FULL)
    n_single = int(single.sum())
    return Layout(
        structure, n_single, int(counts[:n_single].sum()), b, (c == full).astype(np.int64),
        cell_locals(t, st, structure, b, c, np), cell_micro_batches(st, structure, b, np),
        cell_flops(t, st, b, np), flat, row_slot, st.group_rows[rows], slot_rows,
    )  # fmt: skip
