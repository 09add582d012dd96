"""A grid of parallel plans evaluated on NumPy arrays with the per-plan engine's own functions.

``memplan plan`` (issue 10) judges every plan of a cluster. The per-plan engine
(:func:`memplan.estimate.distributed.rank_groups`, :func:`memplan.estimate.dist_time.step_time`)
splits a plan into constants and arithmetic:

- constants, computed here by the same scalar code and kept in tables: the rank-local model's
  numbers per ``(tp, cp, sequence parallelism, micro-batch, checkpointing, cast)``
  (:func:`memplan.estimate.dist_rank.local_numbers`), the model states of each distinct rank
  group (``distributed._static_groups``), its data-parallel collectives
  (:func:`memplan.estimate.dist_time.dp_terms`) and offload transfers;
- arithmetic, run once on arrays over every (plan, rank group) row:
  :func:`~memplan.estimate.dist_rank.single_stage_phases`,
  :func:`~memplan.estimate.dist_rank.pipeline_stage_phases`,
  :func:`~memplan.estimate.dist_rank.comm_lines`,
  :func:`~memplan.estimate.dist_time.model_parallel_terms`,
  :func:`~memplan.estimate.dist_time.offload_seconds` and
  :func:`~memplan.estimate.dist_time.step_numbers`.

Plans come as a :class:`PlanBatch` (the distinct structures, and per plan on arrays its
structure, micro-batch and checkpointing; a list of :class:`PlanRow` is turned into one): the
scalar engine runs once per distinct key, never once per plan, and its numbers are gathered
into the rows by index (one ``np.take`` per dtype for the local models' phases).

The result equals ``memplan train`` / ``memplan time`` of each plan to the byte and to the
bit of the float (tests/test_plan_search.py draws 10,000 plans and compares).
"""

from __future__ import annotations

import dataclasses
import operator
from dataclasses import dataclass
from typing import Any

from memplan.estimate.dist_local import _local_plan, local_step_fast
from memplan.estimate.dist_rank import (
    ALL_PHASES,
    LocalNumbers,
    RankShape,
    StateNumbers,
    add_communication,
    comm_lines,
    local_numbers,
    phase_total,
    pipeline_stage_phases,
    rank_layer_gradients,
    single_stage_phases,
)
from memplan.estimate.dist_states import (
    StageStates,
    _offload,
    _shard_worlds,
    activation_precision,
    stage_layers,
    stage_states,
    static_setup,
)
from memplan.estimate.dist_time import (
    CollectiveTerm,
    dp_terms,
    links,
    model_parallel_terms,
    offload_seconds,
    offload_terms,
    pcie_bytes_per_s,
    step_numbers,
)
from memplan.estimate.distributed import _dp_classes_cached, rank_shape
from memplan.formulas.flops import forward_flops
from memplan.formulas.time import DEFAULT_COMPUTE_EFFICIENCY
from memplan.specs.hardware import Gpu
from memplan.specs.model import ModelSpec
from memplan.specs.parallel import Offload, OffloadDevice, ParallelPlan, Schedule, Sharding
from memplan.specs.training import Checkpointing, TrainingSetup

__all__ = [
    "CHECKPOINTINGS",
    "GridResult",
    "PlanBatch",
    "PlanRow",
    "evaluate_grid",
    "fill_tables",
    "new_tables",
]

DP_SLOTS = 6
"""Data-parallel collectives per stage, at most: 3 for the dense tensors, 3 for the experts."""


@dataclass(frozen=True, slots=True)
class PlanRow:
    """One plan of the grid: a structure (the plan without micro-batch and checkpointing), its
    micro-batch and its checkpointing."""

    plan: ParallelPlan
    micro_batch: int
    checkpointing: Checkpointing


CHECKPOINTINGS = (Checkpointing.NONE, Checkpointing.SELECTIVE, Checkpointing.FULL)
"""The checkpointings a :class:`PlanBatch` indexes."""


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


@dataclass
class _Tables:
    """Scalar constants, each computed once, and the index of each in its table."""

    spec: ModelSpec
    setup: TrainingSetup
    gpu: Gpu
    local_index: dict[tuple[Any, ...], int] = dataclasses.field(default_factory=dict)
    locals_: list[LocalNumbers] = dataclasses.field(default_factory=list)
    local_widths: list[tuple[int, int]] = dataclasses.field(default_factory=list)
    """Per local model: (compute bytes, local KV heads) for the communication sizes."""
    states: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    groups: dict[tuple[Any, ...], list[tuple[int, ...]]] = dataclasses.field(default_factory=dict)
    flops: dict[int, float] = dataclasses.field(default_factory=dict)
    setups: dict[tuple[int, Checkpointing], TrainingSetup] = dataclasses.field(default_factory=dict)
    stage_cache: dict[tuple[Any, ...], list[int]] = dataclasses.field(default_factory=dict)
    state_index: dict[tuple[Any, ...], int] = dataclasses.field(default_factory=dict)
    state_base: dict[tuple[Any, ...], tuple[Any, ...]] = dataclasses.field(default_factory=dict)
    """Per rank's states before offload: (states, data-parallel slots, layer gradients)."""
    stacked: dict[str, tuple[int, Any]] = dataclasses.field(default_factory=dict)
    stage_kinds: dict[tuple[int, int], list[tuple[Any, ...]]] = dataclasses.field(
        default_factory=dict
    )
    dp_classes: dict[tuple[Any, ...], Any] = dataclasses.field(default_factory=dict)
    shapes: dict[tuple[Any, ...], RankShape] = dataclasses.field(default_factory=dict)
    layer_grads: dict[tuple[Any, ...], Any] = dataclasses.field(default_factory=dict)
    state_only: dict[tuple[Any, ...], StageStates] = dataclasses.field(default_factory=dict)
    structures: Any = None
    """The last batch's structures as arrays (:class:`_Structures`)."""
    """Each table as arrays (built once per table length, gathered by row index)."""


def new_tables(spec: ModelSpec, setup: TrainingSetup, gpu: Gpu) -> _Tables:
    """Empty tables for one (model, setup, GPU): pass to :func:`evaluate_grid` for each chunk."""
    return _Tables(spec, dataclasses.replace(setup, batch=1), gpu)


def _setup_for(t: _Tables, micro_batch: int, ckpt: Checkpointing) -> TrainingSetup:
    """The setup at ``micro_batch`` and ``ckpt`` (one per pair: building one validates it)."""
    setup = t.setups.get((micro_batch, ckpt))
    if setup is None:
        setup = dataclasses.replace(t.setup, batch=micro_batch, checkpointing=ckpt)
        t.setups[micro_batch, ckpt] = setup
    return setup


def _local(
    t: _Tables, plan: ParallelPlan, micro_batch: int, ckpt: Checkpointing, part: tuple[Any, ...]
) -> int:
    """Index of the local model's numbers (one per ``part`` = (tp, cp, sp, the precision the
    runtime computes in), micro-batch and checkpointing)."""
    key = (*part, micro_batch, ckpt)
    index = t.local_index.get(key)
    if index is None:
        setup = _setup_for(t, micro_batch, ckpt)
        local = local_step_fast(t.spec, setup, plan)
        t.locals_.append(local_numbers(t.spec, local))
        # the local plan's model is the tensor-parallel rank's (dist_states.local_spec)
        t.local_widths.append((local.plan.regime.compute_bytes, local.plan.spec.n_kv_heads))
        index = t.local_index[key] = len(t.locals_) - 1
    return index


def _state_row(
    t: _Tables, plan: ParallelPlan, states: StageStates, slots: list[Any], grads: _LayerGrads
) -> dict[str, Any]:
    """The numbers of one rank group's states: memory, gradients scaled for the single-stage
    backward, data-parallel collectives (``slots``: :func:`_dp_slots`) and offload transfers
    (``plan``: whether it offloads)."""
    state = StateNumbers.of(states)
    layers, first = rank_layer_gradients(grads, state)
    row = {f.name: getattr(state, f.name) for f in dataclasses.fields(StateNumbers)}
    row.update(
        persistent=sum(states.persistent_comm.values()),
        layer_grads=layers,
        first_layer_grads=first,
        offload=offload_terms(states) if plan.offload is not Offload.NONE else (0, 0, 0, 0),
        dp_slots=slots,
    )
    return row


def _dp_slots(t: _Tables, plan: ParallelPlan, stage: int) -> list[Any]:
    """The data-parallel collectives of pipeline rank ``stage`` as numbers, padded to
    :data:`DP_SLOTS` (wire bytes per call, fixed calls, calls per micro-batch, group, stride)."""
    terms = dp_terms(t.spec, t.setup, plan, stage)
    assert len(terms) <= DP_SLOTS
    slots = [(x.wire_bytes_per_call, x.fixed_calls, x.calls_per_micro_batch, x.group_size,
              x.stride) for x in terms]  # fmt: skip
    return slots + [(0.0, 0, 0, 1, 1)] * (DP_SLOTS - len(slots))


def _layer_grads(t: _Tables, plan: ParallelPlan) -> _LayerGrads:
    """The rank-local model's layer gradients (what :func:`rank_layer_gradients` scales), kept
    per (tp, the precision the runtime computes in): what the local plan depends on."""
    key = (plan.tp_degree, activation_precision(t.setup, plan))
    hit = t.layer_grads.get(key)
    if hit is None:
        tplan = _local_plan(t.spec, t.setup, plan)
        hit = t.layer_grads[key] = _LayerGrads(
            tuple((g.count, g.grad_bytes) for g in tplan.layers),
            next(g for g in tplan.layers if g.first).grad_bytes,
            sum(g.count * g.grad_bytes for g in tplan.layers),
        )
    return hit


@dataclass(frozen=True, slots=True)
class _LayerGrads:
    layer_groups: tuple[tuple[int, int], ...]
    first_layer_grad: int
    layers_grad: int


def _state_index(
    t: _Tables,
    bare: ParallelPlan,
    plan: ParallelPlan,
    stage: int,
    dp_rank: int,
    where: tuple[Any, ...],
) -> int:
    """Index in ``t.states`` of the states of ``dp_rank`` on pipeline rank ``stage`` of
    ``plan`` (``bare``: the plan without offload). Model states and data-parallel collectives
    see data and context parallelism only through ``dp * cp`` (the shard world,
    ``dist_states._shard_worlds``; the collectives' group, ``dist_time.dp_terms``): plans
    differing only in how ``dp * cp`` splits share them, computed once on the plan with that
    product as ``dp`` (:func:`_canonical`), except with expert parallelism: an expert's FSDP
    shard index is ``dp_rank * cp // ep`` (``dist_states.fsdp_shard_index``), so cp is kept.
    ``where``: (shard, offload, device, first stage, last stage, the stage's layer kinds)."""
    n = (bare.dp * bare.cp_degree, bare.cp_degree if bare.ep_degree > 1 else 1)
    key = (bare.tp_degree, bare.ep_degree, n, bare.sharding, dp_rank, *where)
    index = t.state_index.get(key)
    if index is None:
        base_key = (*key[:6], *key[8:])  # without offload: the states before it
        base = t.state_base.get(base_key)
        if base is None:
            canon = _canonical(bare, where[0])
            base = (_states(t, canon, stage, dp_rank, base_key), _dp_slots(t, canon, stage),
                    _layer_grads(t, canon))  # fmt: skip
            t.state_base[base_key] = base
        states, slots, grads = base
        # the states before offload do not depend on it (dist_states._stage_states)
        t.states.append(_state_row(t, plan, _offload(states, plan), slots, grads))
        index = t.state_index[key] = len(t.states) - 1
    return index


def _states(
    t: _Tables, canon: ParallelPlan, stage: int, dp_rank: int, key: tuple[Any, ...]
) -> StageStates:
    """``dist_states.stage_states`` of ``canon`` (``key``: :func:`_state_index`'s without
    offload). FSDP2 shard-grad-op, and hybrid sharding over all ``dp x cp`` ranks, hold the
    states of FSDP2 full (the same shards in the same dtypes; their collectives differ, not their
    states): computed once for the three."""
    sharding, shard = canon.sharding, key[5]
    if sharding is Sharding.FSDP_SHARD_GRAD_OP or (
        sharding is Sharding.FSDP_HYBRID and shard == canon.dp * canon.cp_degree
    ):
        sharding = Sharding.FSDP_FULL
        canon = dataclasses.replace(canon, sharding=sharding, hsdp_shard_degree=None)
        key = (*key[:3], sharding, key[4], 0, *key[6:])
    hit = t.state_only.get(key)
    if hit is None:
        hit = t.state_only[key] = stage_states(t.spec, static_setup(t.setup), canon, stage,
                                               dp_rank)  # fmt: skip
    return hit


def _canonical(plan: ParallelPlan, shard: int) -> ParallelPlan:
    """``plan`` with context parallelism folded into data parallelism (``dp * cp`` data-parallel
    ranks, the same FSDP hybrid shard group): what its model states are computed on; with
    expert parallelism ``plan`` itself (the experts' shard index reads cp, :func:`_state_index`)."""
    if plan.cp_degree == 1 or plan.ep_degree > 1:
        return plan
    return dataclasses.replace(
        plan, cp_degree=1, dp_degree=plan.dp * plan.cp_degree, hsdp_shard_degree=shard or None
    )


_GROUP_FIELDS = tuple(
    f.name for f in dataclasses.fields(ParallelPlan)
    if f.name not in ("sequence_parallel", "global_batch", "micro_batches", "schedule")
)  # fmt: skip
"""The plan's fields its rank groups depend on (the schedule only through virtual stages)."""
_group_fields = operator.attrgetter(*_GROUP_FIELDS)


def _keys(plan: ParallelPlan) -> tuple[ParallelPlan, ParallelPlan]:
    """``plan`` without what its states do not depend on (sequence parallelism, the batch, the
    schedule beyond its virtual stages), and that without offload."""
    key = dataclasses.replace(
        plan, sequence_parallel=False, global_batch=None, micro_batches=None,
        schedule=Schedule.INTERLEAVED if plan.virtual_stages > 1 else Schedule.ONE_F_ONE_B,
    )  # fmt: skip
    return key, dataclasses.replace(key, offload=Offload.NONE, offload_device=OffloadDevice.CPU)


def _dp_classes(
    t: _Tables, plan: ParallelPlan, stage: int, where: tuple[Any, ...]
) -> tuple[tuple[int, ...], ...]:
    """``distributed._dp_classes_cached``: the data-parallel ranks of pipeline rank ``stage``
    grouped by identical states. They depend on the FSDP shard world, dp, cp (an expert's
    shard index) and the stage's tensors (tp, ep, its layers' kinds and ends: ``where``), not
    on the virtual stages or FSDP2's full / shard-grad-op choice; one class of every rank
    without FSDP sharding."""
    fsdp = plan.sharding.is_fsdp and plan.sharding is not Sharding.FSDP_NO_SHARD
    world = _shard_worlds(plan)[0] if fsdp else 0
    key = (plan.dp, plan.cp_degree, world, plan.tp_degree, plan.ep_degree, *where)
    hit = t.dp_classes.get(key)
    if hit is None:
        hit = t.dp_classes[key] = _dp_classes_cached(t.spec, static_setup(t.setup), plan, stage)
    return hit


def _stage_kinds(t: _Tables, plan: ParallelPlan) -> list[tuple[Any, ...]]:
    """(stage, layers, the layers' kinds (MoE or not), stage boundaries sent across) of the
    pipeline ranks of ``plan`` (its stages and virtual chunks), the earliest of those alike in
    all of these and in being first or last (the others are the same rank groups)."""
    pp, virtual = plan.pp_degree, plan.virtual_stages
    hit = t.stage_kinds.get((pp, virtual))
    if hit is not None:
        return hit
    out, seen = [], set()
    for stage in range(pp):
        layers = stage_layers(t.spec, plan, stage)
        kinds = tuple(t.spec.is_moe_layer(i) for i in layers)
        sends = (stage < pp - 1) + (stage > 0)
        sig = (len(layers), kinds, sends, stage == 0, stage == pp - 1)
        if sig not in seen:
            seen.add(sig)
            out.append((stage, len(layers), kinds, sends))
    t.stage_kinds[(pp, virtual)] = out
    return out


def _groups(t: _Tables, plan: ParallelPlan) -> list[tuple[int, ...]]:
    """(stage, state index, first data-parallel class, layers, MoE layers, stage boundaries
    sent across) of every rank group of ``plan``; the states do not depend on the schedule
    beyond the virtual stages, nor on sequence parallelism or the global batch."""
    fast = _group_fields(plan)
    hit = t.groups.get(fast)
    if hit is not None:
        return hit
    out: list[tuple[int, ...]] = []
    seen: set[tuple[int, ...]] = set()
    p = plan.pp_degree
    keys = None  # built when a stage's states are not in the tables yet
    shard = plan.hybrid_shard_degree if plan.sharding is Sharding.FSDP_HYBRID else 0
    base = (plan.tp_degree, plan.cp_degree, plan.ep_degree, plan.dp, plan.sharding, shard,
            plan.offload, plan.offload_device)  # fmt: skip
    for stage, n_layers, kinds, sends in _stage_kinds(t, plan):
        # stages holding the same kinds of layers (and the same ends) hold the same states
        skey = (*base, stage == 0, stage == p - 1, kinds)
        entry = t.stage_cache.get(skey)
        if entry is None:
            keys = keys or _keys(plan)
            key, bare = keys
            entry = [_state_index(t, bare, key, stage, dp_ranks[0], skey[5:])
                     for dp_ranks in _dp_classes(t, bare, stage, skey[8:])]  # fmt: skip
            t.stage_cache[skey] = entry
        for j, index in enumerate(entry):
            row = (stage, index, int(j == 0), n_layers, sum(kinds), sends)
            # a later stage with the same states, layers and sends holds no more micro-batches
            # in flight (formulas.parallel.in_flight_chunks does not grow with the stage) and
            # joins the same collectives: the earliest such stage is the one that can be worst
            if row[1:] not in seen:
                seen.add(row[1:])
                out.append(row)
    t.groups[fast] = out
    return out


def _stack(values: list[Any], index: Any, np: Any) -> Any:
    """``values[index]`` as an array (nested dicts stacked key by key)."""
    first = values[0]
    if isinstance(first, dict):
        keys: dict[str, None] = {}
        for v in values:
            keys.update(dict.fromkeys(v))
        return {k: _stack([v.get(k, 0) for v in values], index, np) for k in keys}
    return np.asarray(values)[index]


def _stacked(t: _Tables, name: str, np: Any) -> Any:
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
        value: Any = (_Columns.of(columns, np), _Columns.of(parts, np))
    elif name == "local_widths":
        value = np.asarray(table, dtype=np.int64)
    else:
        value = _state_table(table, np)
    t.stacked[name] = (len(table), value)
    return value


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
    """Nested dicts of equal-length arrays as one matrix per dtype (column = table entry), so
    that gathering rows is one ``np.take`` per dtype, not one per leaf."""

    paths: tuple[tuple[tuple[str, ...], str, int], ...]
    """(keys to the leaf, dtype, row in that dtype's matrix) per leaf."""
    matrices: dict[str, Any]

    @classmethod
    def of(cls, value: dict[str, Any], np: Any) -> _Columns:
        leaves: list[tuple[tuple[str, ...], Any]] = []

        def walk(v: Any, path: tuple[str, ...]) -> None:
            if isinstance(v, dict):
                for k, x in v.items():
                    walk(x, (*path, k))
            else:
                leaves.append((path, v))

        walk(value, ())
        by_dtype: dict[str, list[Any]] = {}
        paths = []
        for path, v in leaves:
            rows = by_dtype.setdefault(v.dtype.str, [])
            paths.append((path, v.dtype.str, len(rows)))
            rows.append(v)
        return cls(tuple(paths), {k: np.stack(v) for k, v in by_dtype.items()})

    def gather(self, index: Any, np: Any) -> dict[str, Any]:
        """The nested dicts at rows ``index``."""
        taken = {k: np.take(m, index, axis=1) for k, m in self.matrices.items()}
        out: dict[str, Any] = {}
        for path, dtype, row in self.paths:
            into = out
            for k in path[:-1]:
                into = into.setdefault(k, {})
            into[path[-1]] = taken[dtype][row]
        return out


def _local_arrays(t: _Tables, index: Any, np: Any, *, parts: bool = True) -> LocalNumbers:
    """A :class:`LocalNumbers` whose fields are arrays over rows (``index`` into the table);
    ``parts=False`` leaves the phases out (the communication lines do not read them)."""
    numbers, phases = _stacked(t, "locals", np)
    first = t.locals_[0]
    fields = numbers.gather(index, np)
    fields["parts"] = phases.gather(index, np)["parts"] if parts else {}
    # layer_groups is unused (the rank's layer gradients come precomputed); the rest are
    # the same for every local model of one spec
    for k in ("layer_groups", "n_layers", "round_to", "layers_grad"):
        fields[k] = getattr(first, k)
    return LocalNumbers(**fields)


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

    t = tables if tables is not None else new_tables(spec, setup, gpu)
    batch = rows if isinstance(rows, PlanBatch) else PlanBatch.of(rows)
    plan_local, per_plan, rp, row_group = _index(t, batch, np)
    return _evaluate_arrays(t, plan_local, per_plan, rp, row_group, dtype, efficiency, np)


def fill_tables(tables: Any, batch: PlanBatch) -> None:
    """Build every scalar constant ``batch`` needs into ``tables`` (a search calls this on the
    whole grid before its chunks, so that the tables are stacked into arrays once)."""
    import numpy as np

    _index(tables, batch, np)


@dataclass
class _Structures:
    """A batch's structures (``PlanBatch.plans``) as arrays, built once per tuple of them."""

    plans: tuple[ParallelPlan, ...]
    consts: dict[str, Any]
    """:data:`_CONST_FIELDS` per structure."""
    local_key: Any
    """Index in ``local_parts`` of each structure's local-model part (tp, cp, sp, cast)."""
    local_parts: list[tuple[Any, ...]]
    batches_key: Any
    """Index in ``batches_plans`` of a structure resolving micro-batches as each one does."""
    batches_plans: list[ParallelPlan]
    group_counts: Any
    group_offsets: Any
    group_rows: Any
    """Every structure's rank groups, one after another (:func:`_groups` rows)."""
    local_lut: Any
    """Local model index per (local part, micro-batch, checkpointing); -1: not built yet."""


def _structures(t: _Tables, plans: tuple[ParallelPlan, ...], np: Any) -> _Structures:
    hit = t.structures
    if hit is not None and hit.plans is plans:
        return hit
    table = np.asarray([_plan_consts(t, p) for p in plans], dtype=np.float64)
    consts = {k: table.reshape(-1, len(_CONST_FIELDS))[:, j] for j, k in enumerate(_CONST_FIELDS)}
    for k in _CONST_FIELDS:
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
    groups = [_groups(t, p) for p in plans]
    counts = np.asarray([len(g) for g in groups], dtype=np.int64)
    out = _Structures(
        plans, consts, np.asarray(local_key, dtype=np.int64), list(local_keys),
        np.asarray(batches_key, dtype=np.int64), batch_plans, counts,
        np.r_[0, np.cumsum(counts)[:-1]],
        np.asarray([x for g in groups for x in g], dtype=np.int64).reshape(-1, 6),
        np.full((len(local_keys), 1, len(CHECKPOINTINGS)), -1, dtype=np.int64),
    )  # fmt: skip
    t.structures = out
    return out


def _locals(t: _Tables, st: _Structures, ps: Any, b: Any, c: Any, np: Any) -> Any:
    """The local model's index of every plan (structures ``ps``, micro-batches ``b``,
    checkpointings ``c``), the missing ones built (one per distinct key)."""
    span = int(b.max(initial=0)) + 1
    if st.local_lut.shape[1] < span:
        grown = np.full((*st.local_lut.shape[:1], span, len(CHECKPOINTINGS)), -1, np.int64)
        grown[:, : st.local_lut.shape[1]] = st.local_lut
        st.local_lut = grown
    key = st.local_key[ps]
    index = st.local_lut[key, b, c]
    missing = np.flatnonzero(index < 0)
    if len(missing):
        code = (key[missing] * span + b[missing]) * len(CHECKPOINTINGS) + c[missing]
        _, first = np.unique(code, return_index=True)
        for i in missing[first]:
            k, bi, ci = int(key[i]), int(b[i]), int(c[i])
            st.local_lut[k, bi, ci] = _local(t, st.plans[ps[i]], bi, CHECKPOINTINGS[ci],
                                             st.local_parts[k])  # fmt: skip
        index = st.local_lut[key, b, c]
    return index


def _index(t: _Tables, batch: PlanBatch, np: Any) -> tuple[Any, dict[str, Any], Any, Any]:
    """The tables' constants for ``batch`` (built where missing) and the indices into them:
    (local model per plan, the plans' own numbers, plan per row, rank group per row)."""
    st = _structures(t, batch.plans, np)
    ps, b, c = batch.structure, batch.micro_batch, batch.checkpointing
    plan_local = _locals(t, st, ps, b, c, np)
    span = int(b.max(initial=0)) + 1
    bk = st.batches_key[ps]
    plan_m = _per_unique(
        bk * span + b, lambda i: st.batches_plans[bk[i]].resolved_micro_batches(int(b[i])), np
    )
    plan_flops = _per_unique(b, lambda i: _flops(t, int(b[i])), np, dtype=np.float64)
    per_plan = {k: v[ps] for k, v in st.consts.items()}
    per_plan.update(b=b, m=plan_m, recompute=(c == CHECKPOINTINGS.index(Checkpointing.FULL))
                    .astype(np.int64), forward_flops=plan_flops)  # fmt: skip
    per_row = st.group_counts[ps]
    rp = np.repeat(np.arange(len(ps)), per_row)
    starts = np.r_[0, np.cumsum(per_row)[:-1]]
    row_group = st.group_rows[st.group_offsets[ps][rp] + np.arange(len(rp)) - starts[rp]]
    return plan_local, per_plan, rp, row_group


def _flops(t: _Tables, micro_batch: int) -> float:
    """One micro-batch's forward FLOPs (kept per micro-batch: the chunks of a grid share them)."""
    hit = t.flops.get(micro_batch)
    if hit is None:
        hit = t.flops[micro_batch] = float(forward_flops(t.spec, batch=micro_batch,
                                                         seq=t.setup.seq))  # fmt: skip
    return hit


def _per_unique(code: Any, value: Any, np: Any, dtype: Any = None) -> Any:
    """``value(i)`` for every row ``i``, called once per distinct ``code`` (at its first row)."""
    _, first, inverse = np.unique(code, return_index=True, return_inverse=True)
    values = np.asarray([value(int(i)) for i in first], dtype=dtype or np.int64)
    return values[inverse.reshape(-1)]


_CONST_FIELDS = (
    "tp", "pp", "cp", "ep", "dp", "world", "virtual", "gpipe", "sp", "gpus_per_node", "nvlink",
    "network", "prefetch", "fsdp_reshard", "fsdp_keep", "zero3", "cp_on", "ep_on",
)  # fmt: skip


def _plan_consts(t: _Tables, p: ParallelPlan) -> tuple[Any, ...]:
    """The plan's own numbers, in :data:`_CONST_FIELDS` order (what ``rank_shape`` and
    ``step_time`` read from a plan beyond the micro-batch)."""
    # rank_shape reads beyond the degrees: the runtime's flags and DeepSpeed's prefetch
    # bucket (its width from the runtime's dtypes), stage 0's layers (pp, virtual stages)
    key = (p.sharding, p.deepspeed, p.cp_degree > 1, p.ep_degree > 1, p.pp_degree,
           p.virtual_stages)  # fmt: skip
    shape = t.shapes.get(key)
    if shape is None:
        shape = t.shapes[key] = rank_shape(t.spec, t.setup, p, 0, 1)
    return (
        p.tp_degree, p.pp_degree, p.cp_degree, p.ep_degree, p.dp, p.world_size,
        p.virtual_stages, int(p.schedule is Schedule.GPIPE), int(p.sequence_parallel),
        p.gpus_per_node, links(p, t.gpu)[0], p.network_bytes_per_s, shape.prefetch_bytes,
        shape.fsdp_reshard, shape.fsdp_keep, shape.zero3, shape.cp, shape.ep,
    )  # fmt: skip


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


def _state_arrays(t: _Tables, index: Any, np: Any) -> tuple[StateNumbers, dict[str, Any]]:
    """The rank groups' states as a :class:`StateNumbers` of arrays, and the other columns
    (the offload transfers; the data-parallel slots, less those no row uses: no bytes, 0
    seconds)."""
    cols = _stacked(t, "states", np)
    names = cols["names"]
    ints = np.take(cols["ints"], index, axis=1)
    wire = np.take(cols["wire"], index, axis=1)
    by_name = dict(zip(names, ints, strict=False))
    state = StateNumbers(**{f.name: by_name[f.name] for f in dataclasses.fields(StateNumbers)})
    n = len(names)
    other = {k: by_name[k] for k in ("persistent", "layer_grads", "first_layer_grads")}
    other["offload"] = tuple(ints[n : n + 4])
    slots = ints[n + 4 :].reshape(DP_SLOTS, 4, -1)
    other["dp_slots"] = [(wire[j], *slots[j]) for j in range(DP_SLOTS) if wire[j].any()]
    return state, other


def _memory(
    t: _Tables,
    local_rows: Any,
    state: StateNumbers,
    other: dict[str, Any],
    shape: RankShape,
    np: Any,
) -> Any:
    """Peak bytes of every row (rank group of a plan): its phases, the largest total."""
    single = shape.pp == 1
    peak = np.zeros(len(single), dtype=np.int64)
    for mask, pipelined in ((single, False), (~single, True)):
        idx = np.nonzero(mask)[0]
        if not len(idx):
            continue
        every = len(idx) == len(single)
        loc = _local_arrays(t, local_rows if every else local_rows[idx], np)
        st, sh = (state, shape) if every else (_take(x, idx) for x in (state, shape))
        rows = other if every else {k: other[k][idx] for k in _MEMORY_COLUMNS}
        if pipelined:
            phases = pipeline_stage_phases(loc, st, sh)
        else:
            grads = (rows["layer_grads"], rows["first_layer_grads"])
            phases = single_stage_phases(loc, st, sh.micro_batches, layer_grads=grads)
        lines = comm_lines(loc, st, sh, {"persistent": rows["persistent"]})
        # each phase's total without communication as one number, then its communication
        phases = {k: {"other": phase_total(v)} for k, v in phases.items()}
        add_communication(phases, lines)
        part = phase_total(phases[ALL_PHASES[0]])
        for name in ALL_PHASES[1:]:
            part = np.maximum(part, phase_total(phases[name]))
        peak[idx] = part
    return peak


_MEMORY_COLUMNS = ("layer_grads", "first_layer_grads", "persistent")


def _take(obj: Any, idx: Any) -> Any:
    """A dataclass of arrays (nested dicts too) restricted to rows ``idx``."""

    def cut(v: Any) -> Any:
        if isinstance(v, dict):
            return {k: cut(x) for k, x in v.items()}
        if hasattr(v, "shape") and v.shape:
            return v[idx]
        return v

    return dataclasses.replace(obj, **{f.name: cut(getattr(obj, f.name))
                                       for f in dataclasses.fields(obj)})  # fmt: skip


def _evaluate_arrays(
    t: _Tables,
    plan_local: Any,
    per_plan: dict[str, Any],
    rp: Any,
    row_group: Any,
    dtype: str,
    efficiency: float,
    np: Any,
) -> GridResult:
    stage, state_idx, first_class, layers, moe_layers, sends = row_group.T
    plan = {k: v[rp] for k, v in per_plan.items()}
    state, other = _state_arrays(t, state_idx, np)
    shape = RankShape(
        micro_batches=plan["m"], stage=stage, pp=plan["pp"], virtual=plan["virtual"],
        gpipe=plan["gpipe"], stage_layers=layers, first=(stage == 0).astype(np.int64),
        last=(stage == plan["pp"] - 1).astype(np.int64), fsdp_reshard=plan["fsdp_reshard"],
        fsdp_keep=plan["fsdp_keep"], zero3=plan["zero3"], prefetch_bytes=plan["prefetch"],
        cp=plan["cp_on"], ep=plan["ep_on"], pipelined=(plan["pp"] > 1).astype(np.int64),
    )  # fmt: skip
    peak_rows = _memory(t, plan_local[rp], state, other, shape, np)
    sizes = {k: v[rp] for k, v in _transfer_bytes(t, per_plan, plan_local, np).items()}
    seconds = _row_seconds(t, plan, other, sizes, layers, moe_layers, sends, np)
    if not first_class.all():  # the other data-parallel classes join the same collectives
        seconds = {k: v * first_class for k, v in seconds.items()}
    starts = np.flatnonzero(np.r_[1, np.diff(rp)])
    peak = np.maximum.reduceat(peak_rows, starts)
    is_peak = peak_rows == np.repeat(peak, np.diff(np.r_[starts, len(rp)]))
    first_peak = np.minimum.reduceat(np.where(is_peak, np.arange(len(rp)), len(rp)), starts)
    worst = {k: np.maximum.reduceat(v, starts) for k, v in seconds.items()}
    p = per_plan
    peak_flops = t.gpu.peak_flops_per_s(dtype)
    numbers = step_numbers(
        forward_flops=p["forward_flops"], recompute=p["recompute"], micro_batches=p["m"],
        tp=p["tp"], pp=p["pp"], cp=p["cp"], dp=p["dp"], world=p["world"],
        virtual=p["virtual"], peak_flops_per_s=peak_flops, efficiency=efficiency,
        dp_s=worst["dp"], other_s=(worst["tp"], worst["cp"], worst["ep"], worst["pp"]),
        offload_s=worst["offload"],
    )  # fmt: skip
    comm = {k: v for k, v in worst.items() if k != "offload"}
    return GridResult(peak, stage[first_peak], numbers.compute_s, numbers.bubble_s,
                      numbers.exposed_comm_s, numbers.offload_s, numbers.step_s, numbers.mfu,
                      comm)  # fmt: skip


def _transfer_bytes(t: _Tables, plan: dict[str, Any], local_idx: Any, np: Any) -> dict[str, Any]:
    """Per plan, one micro-batch's bytes the model-parallel collectives move (the arguments of
    ``dist_time.model_parallel_terms``, as ``collective_terms`` computes them)."""
    widths = _stacked(t, "local_widths", np)[local_idx]
    compute, kv = widths[:, 0], widths[:, 1]
    b, s, h = plan["b"], t.setup.seq // plan["cp"], t.spec.hidden_size
    top_k = t.spec.moe.top_k if t.spec.moe is not None else 0
    return {
        "act_bytes": b * s * h * compute,
        "kv_bytes": 2 * b * s * kv * t.spec.head_dim * compute,
        "routed_bytes": b * s * top_k * h * compute,
    }


def _row_seconds(
    t: _Tables,
    plan: dict[str, Any],
    other: dict[str, Any],
    sizes: dict[str, Any],
    layers: Any,
    moe_layers: Any,
    sends: Any,
    np: Any,
) -> dict[str, Any]:
    """Seconds per step of each parallelism's collectives, and of the offload transfers, for
    every row (``dist_time.step_time``'s loop body, on arrays)."""
    m, gpn, nvlink, network = plan["m"], plan["gpus_per_node"], plan["nvlink"], plan["network"]
    dp_s = 0.0
    for wire, fixed, per_micro, group, stride in other["dp_slots"]:
        term = CollectiveTerm("dp", "", "", 0, fixed, per_micro, group, stride, wire)
        dp_s = dp_s + term.seconds(m, gpn, nvlink, network)
    terms = model_parallel_terms(
        **sizes, tp=plan["tp"], cp=plan["cp"], ep=plan["ep"], dp=plan["dp"],
        stage_layers=layers, moe_layers=moe_layers, sends=sends, virtual=plan["virtual"],
    )  # fmt: skip
    out = {"dp": dp_s if not isinstance(dp_s, float) else np.zeros(len(m))}
    for term in terms:
        out[term.parallelism] = term.seconds(m, gpn, nvlink, network)
    out["offload"] = offload_seconds(tuple(other["offload"]), m, pcie_bytes_per_s(t.gpu))
    return out
