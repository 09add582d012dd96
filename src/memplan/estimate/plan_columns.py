"""The tables of a plan grid as arrays, and a batch's plan structures as arrays.

:mod:`memplan.estimate.plan_tables` keeps the scalar constants as lists of Python objects; the
array evaluation (:mod:`memplan.estimate.plan_grid`) gathers them by index. Here each table is
stacked once into matrices (one per dtype, a column per table entry: gathering rows for many
plans is one ``np.take``), and the structures of a batch (its plans without micro-batch and
checkpointing) are laid out as arrays with look-up tables for what varies with the
micro-batch and the checkpointing (the local model, the micro-batches per step, the FLOPs).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from memplan.estimate.dist_rank import LocalNumbers, StateNumbers
from memplan.estimate.dist_states import activation_precision
from memplan.estimate.plan_tables import (
    CHECKPOINTINGS,
    CONST_FIELDS,
    DP_SLOTS,
    Tables,
    local_model_index,
    micro_batch_flops,
    plan_consts,
    rank_group_rows,
)
from memplan.specs.parallel import ParallelPlan

__all__ = [
    "Structures",
    "cell_flops",
    "cell_locals",
    "cell_micro_batches",
    "local_arrays",
    "stacked",
    "state_arrays",
    "structures_of",
]


def _stack(values: list[Any], index: Any, np: Any) -> Any:
    """``values[index]`` as an array (nested dicts stacked key by key)."""
    first = values[0]
    if isinstance(first, dict):
        keys: dict[str, None] = {}
        for v in values:
            keys.update(dict.fromkeys(v))
        return {k: _stack([v.get(k, 0) for v in values], index, np) for k in keys}
    return np.asarray(values)[index]


def stacked(t: Tables, name: str, np: Any) -> Any:
    """Table ``name`` (``locals``, ``local_widths`` or ``states``) as arrays, rebuilt only when
    the table has grown since (chunks of one grid share the tables)."""
    tables: dict[str, list[Any]] = {"locals": t.locals_, "local_widths": t.local_widths,
                                    "states": t.states}  # fmt: skip
    table = tables[name]
    hit = t.stacked.get(name)
    if hit is not None and hit[0] == len(table):
        return hit[1]
    everything = np.arange(len(table))
    if name == "locals":
        columns = {f.name: _stack([getattr(x, f.name) for x in table], everything, np)
                   for f in dataclasses.fields(LocalNumbers)
                   if f.name not in ("parts", "layer_groups", "n_layers", "round_to",
                                     "layers_grad")}  # fmt: skip
        columns["parts"] = _collapsed([x.parts for x in table], np)
        parts = {"parts": columns.pop("parts")}
        same = _same_part(t, np)
        value: Any = (_Columns.of(columns, same, np), _Columns.of(parts, same, np))
    elif name == "local_widths":
        value = np.asarray(table, dtype=np.int64)
    else:
        value = _state_table(table, np)
    t.stacked[name] = (len(table), value)
    return value


def _same_part(t: Tables, np: Any) -> tuple[Any, Any]:
    """Per local model of the tables, the first one of its (tp, cp, sp, cast) part, and the
    first one of its part and micro-batch."""
    parts: dict[tuple[Any, ...], int] = {}
    batches: dict[tuple[Any, ...], int] = {}
    part = np.empty(len(t.locals_), dtype=np.int64)
    batch = np.empty(len(t.locals_), dtype=np.int64)
    for key, i in t.local_index.items():  # key: (*part, micro-batch, checkpointing)
        part[i] = parts.setdefault(key[:-2], i)
        batch[i] = batches.setdefault(key[:-1], i)
    return part, batch


_STATE_CATEGORIES = ("parameters", "optimizer_states", "gradients")
"""The categories ``train_step.with_states`` sets in every phase (the model states)."""


def _collapsed(parts: list[dict[str, dict[str, int]]], np: Any) -> dict[str, dict[str, Any]]:
    """The local models' ``parts`` stacked, each phase's categories other than the model
    states summed into ``temporaries`` (the grid needs the phases' totals only: the totals,
    and so the peak and the backward high point ``first_max`` picks, are the same; integers,
    so exactly). A phase a model does not have is 0."""
    names = list(dict.fromkeys(name for p in parts for name in p))

    def other(cats: dict[str, int] | None) -> int:
        if cats is None:
            return 0
        return sum(cats.values()) - sum(cats.get(k, 0) for k in _STATE_CATEGORIES)

    totals = np.asarray([[other(p.get(name)) for name in names] for p in parts], dtype=np.int64)
    return {name: {"temporaries": totals[:, j]} for j, name in enumerate(names)}


@dataclass(frozen=True, slots=True)
class _Columns:
    """Nested dicts of equal-length arrays as one matrix per (dtype, spread) (column = table
    entry), so that gathering rows is one ``np.take`` per matrix, not one per leaf. A leaf's
    spread: ``cell`` (it varies with the checkpointing: gathered at every cell), ``batch``
    (the same for every local model of one part and micro-batch: gathered at each row's first
    checkpointing), ``part`` (the same for every local model of one (tp, cp, sp, cast) part:
    gathered once per row, a column that broadcasts) or ``one`` (one value in the whole
    table: that number)."""

    paths: tuple[tuple[tuple[str, ...], tuple[str, str], int], ...]
    """(keys to the leaf, (dtype, spread), row in that matrix) per leaf."""
    matrices: dict[tuple[str, str], Any]

    @classmethod
    def of(cls, value: dict[str, Any], same: tuple[Any, Any], np: Any) -> _Columns:
        """``value``'s leaves; ``same``: per table entry, the first entry of its part, and of
        its part and micro-batch (:func:`_same_part`)."""
        leaves: list[tuple[tuple[str, ...], Any]] = []

        def walk(v: Any, path: tuple[str, ...]) -> None:
            if isinstance(v, dict):
                for k, x in v.items():
                    walk(x, (*path, k))
            else:
                leaves.append((path, v))

        walk(value, ())
        by_kind: dict[tuple[str, str], list[Any]] = {}
        paths = []
        for path, v in leaves:
            spread = (
                "one" if (v == v[0]).all()
                else "part" if (v == v[same[0]]).all()
                else "batch" if (v == v[same[1]]).all()
                else "cell"
            )  # fmt: skip
            rows = by_kind.setdefault((v.dtype.str, spread), [])
            paths.append((path, (v.dtype.str, spread), len(rows)))
            rows.append(v)
        return cls(tuple(paths), {k: np.stack(v) for k, v in by_kind.items()})

    def gather(self, index: Any, np: Any) -> dict[str, Any]:
        """The nested dicts at ``index`` (rows, B, C): the cells of one row share their part,
        those along C their micro-batch (``plan_layout.Layout``)."""
        taken = {}
        for (dtype, spread), m in self.matrices.items():
            if spread == "one":
                taken[dtype, spread] = [x.item() for x in m[:, 0]]
            else:
                at = {"part": index[:, :1, :1], "batch": index[..., :1]}.get(spread, index)
                taken[dtype, spread] = np.take(m, at, axis=1)
        out: dict[str, Any] = {}
        for path, kind, row in self.paths:
            into = out
            for k in path[:-1]:
                into = into.setdefault(k, {})
            into[path[-1]] = taken[kind][row]
        return out


def local_arrays(t: Tables, index: Any, np: Any, *, parts: bool = True) -> LocalNumbers:
    """A :class:`LocalNumbers` of the local models at ``index`` (rows, B, C): each field an
    array of that shape, a column that broadcasts over it, or a number, as its spread
    (:class:`_Columns`); ``parts=False`` leaves the phases out (a pipeline stage does not read
    them)."""
    numbers, phases = stacked(t, "locals", np)
    first = t.locals_[0]
    fields = numbers.gather(index, np)
    fields["parts"] = phases.gather(index, np)["parts"] if parts else {}
    # layer_groups is unused (the rank's layer gradients come precomputed); the rest are
    # the same for every local model of one spec
    for k in ("layer_groups", "n_layers", "round_to", "layers_grad"):
        fields[k] = getattr(first, k)
    return LocalNumbers(**fields)


@dataclass
class Structures:
    """A batch's structures (``PlanBatch.plans``) as arrays, built once per tuple of them; the
    look-up tables grow as micro-batches and checkpointings first appear."""

    plans: tuple[ParallelPlan, ...]
    consts: dict[str, Any]
    """:data:`~memplan.estimate.plan_tables.CONST_FIELDS` per structure."""
    local_key: Any
    """Index in ``local_parts`` of each structure's local-model part (tp, cp, sp, cast)."""
    local_parts: list[tuple[Any, ...]]
    batches_key: Any
    """Index in ``batches_plans`` of a structure resolving micro-batches as each one does."""
    batches_plans: list[ParallelPlan]
    group_counts: Any
    group_offsets: Any
    group_rows: Any
    """Every structure's rank groups, one after another (``plan_tables.rank_group_rows``)."""
    local_lut: Any
    """Local model index per (local part, micro-batch, checkpointing); -1: not built yet."""
    batches_lut: Any
    """Micro-batches per step per (``batches_key``, micro-batch); -1: not looked up yet."""
    flops_lut: Any
    """One micro-batch's forward FLOPs per micro-batch; NaN: not computed yet."""


def structures_of(t: Tables, plans: tuple[ParallelPlan, ...], np: Any) -> Structures:
    """``plans`` as :class:`Structures` (the tables keep the last batch's: chunks of one batch
    share its tuple of structures)."""
    hit = t.structures
    if hit is not None and hit.plans is plans:
        return hit
    table = np.asarray([plan_consts(t, p) for p in plans], dtype=np.float64)
    consts = {k: table.reshape(-1, len(CONST_FIELDS))[:, j] for j, k in enumerate(CONST_FIELDS)}
    for k in CONST_FIELDS:
        if k not in ("nvlink", "network"):
            consts[k] = consts[k].astype(np.int64)
    local_keys: dict[tuple[Any, ...], int] = {}
    batch_keys: dict[tuple[Any, ...], int] = {}
    batch_plans: list[ParallelPlan] = []
    local_key, batches_key = [], []
    for p in plans:
        precision = activation_precision(t.setup, p)  # the local model's, as local_step_fast
        part = (p.tp_degree, p.cp_degree, p.sequence_parallel, precision)
        local_key.append(local_keys.setdefault(part, len(local_keys)))
        # what ParallelPlan.resolved_micro_batches reads
        bkey = (p.micro_batches, p.global_batch, p.dp, p.pp_degree)
        if bkey not in batch_keys:
            batch_keys[bkey] = len(batch_plans)
            batch_plans.append(p)
        batches_key.append(batch_keys[bkey])
    groups = [rank_group_rows(t, p) for p in plans]
    counts = np.asarray([len(g) for g in groups], dtype=np.int64)
    out = Structures(
        plans, consts, np.asarray(local_key, dtype=np.int64), list(local_keys),
        np.asarray(batches_key, dtype=np.int64), batch_plans, counts,
        np.r_[0, np.cumsum(counts)[:-1]],
        np.asarray([x for g in groups for x in g], dtype=np.int64).reshape(-1, 6),
        np.full((len(local_keys), 1, len(CHECKPOINTINGS)), -1, dtype=np.int64),
        np.full((len(batch_plans), 1), -1, dtype=np.int64), np.full(1, np.nan),
    )  # fmt: skip
    t.structures = out
    return out


def _grown(lut: Any, axis: int, span: int, fill: Any, np: Any) -> Any:
    """``lut`` extended along ``axis`` to ``span`` entries (new ones ``fill``: not built)."""
    if lut.shape[axis] >= span:
        return lut
    shape = list(lut.shape)
    shape[axis] = span
    grown = np.full(shape, fill, dtype=lut.dtype)
    grown[(slice(None),) * axis + (slice(0, lut.shape[axis]),)] = lut
    return grown


def cell_locals(t: Tables, st: Structures, structure: Any, b: Any, c: Any, np: Any) -> Any:
    """The local model's index of every plan (``structure`` per slot, shape (S,); micro-batches
    ``b`` and checkpointings ``c`` per cell, shapes broadcasting to (S, B, C)), the missing
    ones built (one per distinct key)."""
    span = int(b.max(initial=0)) + 1
    st.local_lut = _grown(st.local_lut, 1, span, -1, np)
    key = st.local_key[structure][:, None, None]
    index = st.local_lut[key, b, c]
    if index.min(initial=0) < 0:
        keys = np.broadcast_arrays(key, b, c)
        for i in _first_missing(index, keys, np):
            k, bi, ci = (int(x[i]) for x in keys)
            plan = st.plans[structure[i[0]]]
            st.local_lut[k, bi, ci] = local_model_index(t, plan, bi, CHECKPOINTINGS[ci],
                                                        st.local_parts[k])  # fmt: skip
        index = st.local_lut[key, b, c]
    return index


def _first_missing(found: Any, keys: tuple[Any, ...], np: Any) -> list[tuple[int, ...]]:
    """The cells (index tuples) where ``found`` is negative, one per distinct ``keys``
    (arrays shaped as ``found``, non-negative and below 2**20)."""
    cells = np.nonzero(found < 0)
    code = np.zeros(len(cells[0]), dtype=np.int64)
    for k in keys:
        code = code * (1 << 20) + k[cells]
    _, first = np.unique(code, return_index=True)
    return [tuple(int(x[j]) for x in cells) for j in first]


def cell_micro_batches(st: Structures, structure: Any, b: Any, np: Any) -> Any:
    """Micro-batches per step of every plan (``ParallelPlan.resolved_micro_batches``; shapes as
    :func:`cell_locals`)."""
    st.batches_lut = _grown(st.batches_lut, 1, int(b.max(initial=0)) + 1, -1, np)
    key = st.batches_key[structure][:, None, None]
    m = st.batches_lut[key, b]
    if m.min(initial=0) < 0:
        keys = np.broadcast_arrays(key, b)
        for i in _first_missing(m, keys, np):
            k, bi = (int(x[i]) for x in keys)
            st.batches_lut[k, bi] = st.batches_plans[k].resolved_micro_batches(bi)
        m = st.batches_lut[key, b]
    return m


def cell_flops(t: Tables, st: Structures, b: Any, np: Any) -> Any:
    """One micro-batch's forward FLOPs of every plan (micro-batches ``b``)."""
    st.flops_lut = _grown(st.flops_lut, 0, int(b.max(initial=0)) + 1, np.nan, np)
    flops = st.flops_lut[b]
    if np.isnan(flops).any():
        for bi in np.unique(b[np.isnan(flops)]):
            st.flops_lut[bi] = micro_batch_flops(t, int(bi))
        flops = st.flops_lut[b]
    return flops


def _state_table(rows: list[dict[str, Any]], np: Any) -> dict[str, Any]:
    """The states' rows as one int64 matrix (a column per table entry: gathering rows is one
    ``np.take``) and the data-parallel wire bytes (floats) as another."""
    names = [k for k in rows[0] if k not in ("offload", "dp_slots")]
    ints = [[row[k] for k in names] + list(row["offload"])
            + [x for slot in row["dp_slots"] for x in slot[1:]] for row in rows]  # fmt: skip
    wire = [[slot[0] for slot in row["dp_slots"]] for row in rows]
    return {
        "names": names,
        "ints": np.asarray(ints, dtype=np.int64).T.copy(),
        "wire": np.asarray(wire, dtype=np.float64).T.copy(),
    }


def state_arrays(t: Tables, index: Any, np: Any) -> tuple[StateNumbers, dict[str, Any]]:
    """The rank groups' states as a :class:`StateNumbers` of arrays shaped as ``index``, and
    the other columns (the offload transfers; the data-parallel slots, less those no row uses:
    no bytes, 0 seconds)."""
    cols = stacked(t, "states", np)
    names = cols["names"]
    ints = np.take(cols["ints"], index, axis=1)
    wire = np.take(cols["wire"], index, axis=1)
    by_name = dict(zip(names, ints, strict=False))
    state = StateNumbers(**{f.name: by_name[f.name] for f in dataclasses.fields(StateNumbers)})
    n = len(names)
    other = {k: by_name[k] for k in ("persistent", "layer_grads", "first_layer_grads")}
    other["offload"] = tuple(ints[n : n + 4])
    slots = ints[n + 4 :].reshape(DP_SLOTS, 4, *np.shape(index))
    other["dp_slots"] = [(wire[j], *slots[j]) for j in range(DP_SLOTS) if wire[j].any()]
    return state, other
