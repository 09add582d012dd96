"""The scalar constants a plan grid gathers from: the per-plan engine run once per distinct key.

:mod:`memplan.estimate.plan_grid` evaluates a grid of plans on arrays; what the arithmetic reads
comes from here, computed by the per-plan engine's own scalar code and kept in :class:`Tables`:

- the rank-local model's numbers per ``(tp, cp, sequence parallelism, the precision the runtime
  computes in, micro-batch, checkpointing)`` (:func:`memplan.estimate.dist_rank.local_numbers`);
- the model states of each distinct rank group (``dist_states.stage_states``), its
  data-parallel collectives (:func:`memplan.estimate.dist_time.dp_terms`) and offload transfers;
- per plan structure, its rank groups (pipeline stage x data-parallel class,
  :func:`rank_group_rows`) and its own numbers (:func:`plan_consts`).
"""

from __future__ import annotations

import dataclasses
import operator
from dataclasses import dataclass
from typing import Any

from memplan.estimate.dist_local import _local_plan, local_step_fast
from memplan.estimate.dist_rank import (
    LocalNumbers,
    RankShape,
    StateNumbers,
    local_numbers,
    rank_layer_gradients,
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
from memplan.estimate.dist_time import dp_terms, links, offload_terms
from memplan.estimate.distributed import _dp_classes_cached, rank_shape
from memplan.formulas.flops import forward_flops
from memplan.specs.hardware import Gpu
from memplan.specs.model import ModelSpec
from memplan.specs.parallel import Offload, OffloadDevice, ParallelPlan, Schedule, Sharding
from memplan.specs.training import Checkpointing, TrainingSetup

__all__ = [
    "CHECKPOINTINGS",
    "CONST_FIELDS",
    "DP_SLOTS",
    "Tables",
    "local_model_index",
    "micro_batch_flops",
    "new_tables",
    "plan_consts",
    "rank_group_rows",
]

CHECKPOINTINGS = (Checkpointing.NONE, Checkpointing.SELECTIVE, Checkpointing.FULL)
"""The checkpointings a plan batch indexes (``plan_grid.PlanBatch.checkpointing``)."""
DP_SLOTS = 6
"""Data-parallel collectives per stage, at most: 3 for the dense tensors, 3 for the experts."""


@dataclass
class Tables:
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
    """Each table as arrays (built once per table length, gathered by row index)."""
    stage_kinds: dict[tuple[int, int], list[tuple[Any, ...]]] = dataclasses.field(
        default_factory=dict
    )
    dp_classes: dict[tuple[Any, ...], Any] = dataclasses.field(default_factory=dict)
    shapes: dict[tuple[Any, ...], RankShape] = dataclasses.field(default_factory=dict)
    layer_grads: dict[tuple[Any, ...], Any] = dataclasses.field(default_factory=dict)
    state_only: dict[tuple[Any, ...], StageStates] = dataclasses.field(default_factory=dict)
    structures: Any = None
    """The last batch's structures as arrays (``plan_columns.Structures``)."""


def new_tables(spec: ModelSpec, setup: TrainingSetup, gpu: Gpu) -> Tables:
    """Empty tables for one (model, setup, GPU), shared by the chunks of one grid
    (``plan_grid.evaluate_grid``)."""
    return Tables(spec, dataclasses.replace(setup, batch=1), gpu)


def _setup_for(t: Tables, micro_batch: int, ckpt: Checkpointing) -> TrainingSetup:
    """The setup at ``micro_batch`` and ``ckpt`` (one per pair: building one validates it)."""
    setup = t.setups.get((micro_batch, ckpt))
    if setup is None:
        setup = dataclasses.replace(t.setup, batch=micro_batch, checkpointing=ckpt)
        t.setups[micro_batch, ckpt] = setup
    return setup


def local_model_index(
    t: Tables, plan: ParallelPlan, micro_batch: int, ckpt: Checkpointing, part: tuple[Any, ...]
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
    t: Tables, plan: ParallelPlan, states: StageStates, slots: list[Any], grads: _LayerGrads
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


def _dp_slots(t: Tables, plan: ParallelPlan, stage: int) -> list[Any]:
    """The data-parallel collectives of pipeline rank ``stage`` as numbers, padded to
    :data:`DP_SLOTS` (wire bytes per call, fixed calls, calls per micro-batch, group, stride)."""
    terms = dp_terms(t.spec, t.setup, plan, stage)
    assert len(terms) <= DP_SLOTS
    slots = [(x.wire_bytes_per_call, x.fixed_calls, x.calls_per_micro_batch, x.group_size,
              x.stride) for x in terms]  # fmt: skip
    return slots + [(0.0, 0, 0, 1, 1)] * (DP_SLOTS - len(slots))


def _layer_grads(t: Tables, plan: ParallelPlan) -> _LayerGrads:
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
    t: Tables,
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
    t: Tables, canon: ParallelPlan, stage: int, dp_rank: int, key: tuple[Any, ...]
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
    t: Tables, plan: ParallelPlan, stage: int, where: tuple[Any, ...]
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


def _stage_kinds(t: Tables, plan: ParallelPlan) -> list[tuple[Any, ...]]:
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


def rank_group_rows(t: Tables, plan: ParallelPlan) -> list[tuple[int, ...]]:
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


def micro_batch_flops(t: Tables, micro_batch: int) -> float:
    """One micro-batch's forward FLOPs (kept per micro-batch: the chunks of a grid share them)."""
    hit = t.flops.get(micro_batch)
    if hit is None:
        hit = t.flops[micro_batch] = float(forward_flops(t.spec, batch=micro_batch,
                                                         seq=t.setup.seq))  # fmt: skip
    return hit


CONST_FIELDS = (
    "tp", "pp", "cp", "ep", "dp", "world", "virtual", "gpipe", "sp", "gpus_per_node", "nvlink",
    "network", "prefetch", "fsdp_reshard", "fsdp_keep", "zero3", "cp_on", "ep_on",
)  # fmt: skip


def plan_consts(t: Tables, p: ParallelPlan) -> tuple[Any, ...]:
    """The plan's own numbers, in :data:`CONST_FIELDS` order (what ``rank_shape`` and
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
