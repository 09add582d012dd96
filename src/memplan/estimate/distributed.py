"""Per-rank memory of one training step under a :class:`ParallelPlan`.

Entry point: :func:`memplan.estimate.dist_report.parallel_training_report` (``spec, setup,
plan -> Report``); this module computes the numbers (:func:`rank_groups`).

How a rank's step is built (one activation model: the single-GPU engine's):

1. **The local model.** Tensor parallelism gives each rank ``heads / tp`` query heads, its KV
   heads and ``width / tp`` of the MLP (``dist_states.local_spec``); context parallelism a
   sequence of ``seq / cp``; FSDP's mixed-precision policy and DeepSpeed run the forward in
   half (no autocast copies). The single-GPU engine evaluates that local model
   (``train_plan.training_plan`` + ``train_step.evaluate``): saved tensors op by op, the
   backward high points and their temporaries.
2. **Sequence parallelism** divides the saved tensors of the norms, the residual dropouts and a
   checkpointed layer input by ``tp`` (:func:`sp_split`); the linear layers' inputs stay whole
   (DTensor all-gathers them before the matmul and autograd saves the gathered tensor,
   DIST-NOTES.md). Megatron re-gathers instead: see docs/accuracy.md, Korthikanti table.
3. **Model states** of the rank (``dist_states``): parameters, gradients, optimizer states with
   FSDP2's padding and DeepSpeed's flat partitions, in the dtypes each runtime really keeps.
4. **Communication buffers** as named lines in a ``communication`` category: DDP's buckets,
   DeepSpeed's IPG bucket and stage-3 persistent and gathered parameters, FSDP2's all-gather
   outputs (current and prefetched layer, the root held from forward to backward) and its
   reduce-scatter input, the CP ring's K/V buffers, EP all-to-all buffers, PP send/recv buffers.
5. **Pipeline stages** (``pp > 1``): the stage's layers, the embeddings on the first and the
   head and loss on the last, times the micro-batches in flight per schedule
   (``formulas.parallel.in_flight_chunks``), plus the largest backward transient.

**Contract for searches (issue 10):** the per-rank arithmetic of steps 2-5 uses only
``memplan.formulas.parallel`` / ``communication`` helpers and runs on NumPy arrays; step 1 is a
per-(local model, micro-batch, local sequence) constant a search computes once per distinct
``(tp, cp, ep, micro-batch, checkpointing)`` and broadcasts over the other degrees.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from functools import lru_cache

from memplan.errors import SetupError
from memplan.estimate.dist_local import LocalStep, local_step, local_step_fast, sp_split
from memplan.estimate.dist_rank import (
    ALL_PHASES,
    DIST_CATEGORIES,
    LocalNumbers,
    RankShape,
    StateNumbers,
    StepStates,
    comm_lines,
    local_numbers,
    pipeline_stage_phases,
    single_stage_phases,
    step_states,
)
from memplan.estimate.dist_states import (
    StageStates,
    fsdp_shard_index,
    shard_world,
    stage_layers,
    stage_states,
    stage_tensors,
    state_regime,
    static_setup,
)
from memplan.estimate.train_setup import validate_setup
from memplan.formulas.parallel import fsdp_local_view_numel, in_flight_chunks
from memplan.specs.model import ModelSpec
from memplan.specs.parallel import (
    ParallelPlan,
    Schedule,
    Sharding,
    validate_plan_batch,
    validate_plan_model,
)
from memplan.specs.training import TrainingSetup

__all__ = [
    "DIST_CATEGORIES",
    "LocalStep",
    "RankGroup",
    "local_step",
    "rank_groups",
    "rank_ids",
    "rank_shape",
    "sp_split",
]


# Not frozen: the engine builds one per rank group and estimate, and a frozen dataclass's
# __init__ costs about 0.2 us a field (object.__setattr__ each); nothing changes one once built.
@dataclass(slots=True)
class RankGroup:
    """Ranks whose memory is identical: one pipeline stage, one class of data-parallel ranks."""

    stage: int
    dp_ranks: tuple[int, ...]
    ranks: tuple[int, ...]
    phases: dict[str, dict[str, int]]
    peak_phase: str
    states: StageStates
    comm_lines: dict[str, dict[str, int]]
    """Per phase, the named communication buffers."""
    in_flight: float
    """Micro-batches (in units of the whole stage) whose activations are held at the peak."""

    @property
    def peak_bytes(self) -> int:
        return sum(self.phases[self.peak_phase].values())


def rank_ids(plan: ParallelPlan, stage: int, dp_ranks: tuple[int, ...]) -> tuple[int, ...]:
    """Global ranks of pipeline rank ``stage`` and data-parallel ranks ``dp_ranks``, laid out
    tp innermost, then cp, dp, pp (Megatron-LM's order)."""
    t, c, d = plan.tp_degree, plan.cp_degree, plan.dp
    return tuple(
        ((stage * d + di) * c + ci) * t + ti
        for di in dp_ranks
        for ci in range(c)
        for ti in range(t)
    )


def _dp_classes(
    spec: ModelSpec, setup: TrainingSetup, plan: ParallelPlan, stage: int
) -> list[tuple[int, ...]]:
    """Data-parallel ranks grouped by identical states: under FSDP the ranks past a tensor's
    last full chunk keep smaller optimizer states (unpadded views). Cached per plan."""
    return list(_dp_classes_cached(spec, static_setup(setup), plan, stage))


@lru_cache(maxsize=1024)
def _dp_classes_cached(
    spec: ModelSpec, setup: TrainingSetup, plan: ParallelPlan, stage: int
) -> tuple[tuple[int, ...], ...]:
    fsdp = plan.sharding.is_fsdp and plan.sharding is not Sharding.FSDP_NO_SHARD
    dp = plan.dp
    if not fsdp or dp == 1:
        return (tuple(range(dp)),)
    # each distinct tensor shape once (the decoder layers repeat theirs); an expert tensor is
    # sharded over the expert-data-parallel ranks, world / ep
    worlds = (shard_world(plan, False), shard_world(plan, True))
    shapes = dict.fromkeys(
        (t.d0, t.rest, worlds[t.expert], t.expert) for t in stage_tensors(spec, setup, plan, stage)
    )
    points = {0}
    for d0, _, w, expert in shapes:
        chunk = -(-d0 // w)
        full = d0 // chunk
        for index in (full, full + 1):  # the first shard index past the full chunks, and next
            # an expert's shard index is dp_rank * cp // ep: it reaches ``index`` at this rank
            p = -(-index * plan.ep_degree // plan.cp_degree) if expert else index
            if p < dp:
                points.add(p)
    cuts = sorted(points)
    # ranks with equal views of every distinct tensor shape hold equal states
    signature = [
        tuple(
            fsdp_local_view_numel(d0, rest, w, fsdp_shard_index(plan, r, expert))
            for d0, rest, w, expert in shapes
        )
        for r in cuts
    ]
    classes: dict[tuple[int, ...], list[int]] = {}
    bounds = [*cuts, dp]
    for i, r in enumerate(cuts):
        classes.setdefault(signature[i], []).extend(range(r, bounds[i + 1]))
    return tuple(tuple(v) for v in classes.values())


_CHECKED: dict[tuple[int, int], tuple[ModelSpec, ParallelPlan]] = {}
"""(model, plan) pairs :func:`validate_plan_model` passed, by identity."""


def rank_groups(spec: ModelSpec, setup: TrainingSetup, plan: ParallelPlan) -> list[RankGroup]:
    """Every distinct rank group of the plan, first stage first."""
    validate_setup(spec, setup)
    key = (id(spec), id(plan))
    checked = _CHECKED.get(key)
    if checked is None or checked[0] is not spec or checked[1] is not plan:
        validate_plan_model(spec, plan)  # once per (model, plan): a search asks many batches
        if len(_CHECKED) > 1024:
            _CHECKED.clear()
        _CHECKED[key] = (spec, plan)
    validate_plan_batch(plan, micro_batch=setup.batch, seq=setup.seq)
    if plan.sequence_parallel and (setup.seq // plan.cp_degree) % plan.tp_degree:
        raise SetupError(
            f"sequence parallelism splits the sequence: seq({setup.seq}) / cp({plan.cp_degree}) "
            f"must be divisible by tp({plan.tp_degree})"
        )
    numbers = local_numbers(spec, local_step_fast(spec, setup, plan))
    m = plan.resolved_micro_batches(setup.batch)
    return [_group(plan, numbers, m, g) for g in _static_groups_fast(spec, setup, plan)]


@dataclass(frozen=True, slots=True)
class _StaticGroup:
    """What a rank group is whatever the micro-batch and sequence: its place, its states."""

    stage: int
    dp_ranks: tuple[int, ...]
    ranks: tuple[int, ...]
    states: StageStates
    state: StateNumbers
    """``states`` summed (:meth:`StateNumbers.of`)."""
    shape: dict[str, int]
    """:func:`rank_shape` but the micro-batches (:func:`_shape_fields`)."""
    shapes: dict[int, RankShape] = dataclasses.field(default_factory=dict)
    """The :class:`RankShape` per number of micro-batches, as the estimates meet them."""
    held_comm: dict[int, tuple[dict[str, dict[str, int]], dict[str, int]]] = dataclasses.field(
        default_factory=dict
    )
    """Per allocation rounding: the communication lines (nonzero) and their sum per phase,
    when no line depends on the micro-batch or sequence (:func:`_comm`)."""
    step_states: dict[tuple[int, int], tuple[object, StepStates]] = dataclasses.field(
        default_factory=dict
    )
    """:func:`step_states` per local plan (by its ``layer_groups`` tuple, which the local
    plan's numbers share) and micro-batch count."""

    def shape_at(self, micro_batches: int) -> RankShape:
        """The group's :class:`RankShape` at ``micro_batches`` (built once per count)."""
        shape = self.shapes.get(micro_batches)
        if shape is None:
            shape = self.shapes[micro_batches] = RankShape(micro_batches, **self.shape)
        return shape


_FAST_STATIC: dict[
    tuple[int, int, int], tuple[ModelSpec, ParallelPlan, TrainingSetup, tuple[_StaticGroup, ...]]
]
_FAST_STATIC = {}


def _static_groups_fast(
    spec: ModelSpec, setup: TrainingSetup, plan: ParallelPlan
) -> tuple[_StaticGroup, ...]:
    """:func:`_static_groups` looked up by the identity of ``spec`` and ``plan`` (hashing a
    whole ModelSpec on every call would cost more than the estimate; searches call this in a
    loop, as ``training_peak_bytes`` does)."""
    static = static_setup(setup)  # canonical: its identity stands for its values
    key = (id(spec), id(plan), id(static))
    hit = _FAST_STATIC.get(key)
    if hit is not None and hit[0] is spec and hit[1] is plan and hit[2] is static:
        return hit[3]
    if len(_FAST_STATIC) > 1024:
        _FAST_STATIC.clear()
    groups = _static_groups(spec, static, plan)
    _FAST_STATIC[key] = (spec, plan, static, groups)
    return groups


@lru_cache(maxsize=1024)
def _static_groups(
    spec: ModelSpec, setup: TrainingSetup, plan: ParallelPlan
) -> tuple[_StaticGroup, ...]:
    """Every rank group's place, global ranks and model states."""
    out = []
    for stage in range(plan.pp_degree):
        shape = _shape_fields(spec, setup, plan, stage)
        for dp_ranks in _dp_classes_cached(spec, setup, plan, stage):
            states = stage_states(spec, setup, plan, stage, dp_ranks[0])
            ranks = rank_ids(plan, stage, dp_ranks)
            out.append(_StaticGroup(stage, dp_ranks, ranks, states, StateNumbers.of(states), shape))
    return tuple(out)


def rank_shape(
    spec: ModelSpec, setup: TrainingSetup, plan: ParallelPlan, stage: int, micro_batches: int
) -> RankShape:
    """The numbers :mod:`memplan.estimate.dist_rank` needs about a rank's place and choices."""
    return RankShape(micro_batches=micro_batches, **_shape_fields(spec, setup, plan, stage))


def _shape_fields(
    spec: ModelSpec, setup: TrainingSetup, plan: ParallelPlan, stage: int
) -> dict[str, int]:
    """:class:`RankShape`'s fields but the micro-batches (a per-plan constant)."""
    sharding = plan.sharding
    prefetch = plan.deepspeed.stage3_prefetch_bucket_size * state_regime(setup, plan).param_bytes
    return {
        "stage": stage,
        "pp": plan.pp_degree,
        "virtual": plan.virtual_stages,
        "gpipe": int(plan.schedule is Schedule.GPIPE),
        "stage_layers": len(stage_layers(spec, plan, stage)),
        "first": int(stage == 0),
        "last": int(stage == plan.pp_degree - 1),
        "fsdp_reshard": int(sharding in (Sharding.FSDP_FULL, Sharding.FSDP_HYBRID)),
        "fsdp_keep": int(sharding is Sharding.FSDP_SHARD_GRAD_OP),
        "zero3": int(sharding is Sharding.ZERO_3),
        "prefetch_bytes": prefetch,
        "cp": int(plan.cp_degree > 1),
        "ep": int(plan.ep_degree > 1 and spec.moe is not None),
        "pipelined": int(plan.pp_degree > 1),
    }


def _comm(
    numbers: LocalNumbers, g: _StaticGroup, shape: RankShape
) -> tuple[dict[str, dict[str, int]], dict[str, int]]:
    """The group's communication lines per phase (nonzero ones) and their sums. Without context,
    expert or pipeline parallelism no line reads the (micro-batch, seq) numbers
    (:func:`comm_lines`' step buffers are 0), so the lines are computed once per group."""
    held = not (shape.cp or shape.ep or shape.pipelined)
    hit = g.held_comm.get(numbers.round_to) if held else None
    if hit is not None:
        return hit
    lines = comm_lines(numbers, g.state, shape, g.states.persistent_comm)
    comm = {name: {k: v for k, v in named.items() if v} for name, named in lines.items()}
    out = comm, {name: sum(named.values()) for name, named in comm.items()}
    if held:
        g.held_comm[numbers.round_to] = out
    return out


def _group(plan: ParallelPlan, numbers: LocalNumbers, m: int, g: _StaticGroup) -> RankGroup:
    """One rank group's phases and communication buffers at ``m`` micro-batches."""
    state, stage = g.state, g.stage
    shape = g.shape_at(m)
    if plan.pp_degree == 1:
        # per-plan constants (the local plan's numbers share their layer_groups tuple)
        hit = g.step_states.get((id(numbers.layer_groups), m))
        if hit is None or hit[0] is not numbers.layer_groups:
            hit = g.step_states[(id(numbers.layer_groups), m)] = (
                numbers.layer_groups,
                step_states(numbers, state, m),
            )
        phases = single_stage_phases(numbers, state, m, states=hit[1])
        in_flight = 1.0
    else:
        phases = pipeline_stage_phases(numbers, state, shape)
        v = plan.virtual_stages
        gpipe = plan.schedule is Schedule.GPIPE
        in_flight = in_flight_chunks(stage, plan.pp_degree, m, v, gpipe) / v
    comm, sums = _comm(numbers, g, shape)
    for name, phase in phases.items():
        phase["communication"] = sums[name]
    totals = [sum(phases[k].values()) for k in ALL_PHASES]
    peak = ALL_PHASES[totals.index(max(totals))]  # the first of equal peaks
    return RankGroup(stage, g.dp_ranks, g.ranks, phases, peak, g.states, comm, in_flight)
