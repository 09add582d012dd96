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
from typing import Any

from memplan.errors import SetupError
from memplan.estimate.dist_local import LocalStep, local_step, local_step_fast, sp_split
from memplan.estimate.dist_states import (
    StageStates,
    stage_layers,
    stage_states,
    stage_tensors,
    state_regime,
)
from memplan.estimate.train_plan import TrainingPlan
from memplan.estimate.train_setup import validate_setup
from memplan.estimate.train_step import (
    _layer_transient,
    evaluate,
)
from memplan.formulas.parallel import (
    fsdp_local_view_numel,
    in_flight_chunks,
    maximum,
    minimum,
    round_up,
    where,
)
from memplan.formulas.training import alloc_bytes
from memplan.report import TRAINING_CATEGORIES, TRAINING_PHASES
from memplan.specs.model import ModelSpec
from memplan.specs.parallel import ParallelPlan, Schedule, Sharding, validate_plan
from memplan.specs.training import TrainingSetup

__all__ = [
    "DIST_CATEGORIES",
    "LocalStep",
    "RankGroup",
    "local_step",
    "rank_groups",
    "rank_ids",
    "sp_split",
]

DIST_CATEGORIES = (*TRAINING_CATEGORIES, "communication")
"""A rank's categories: the single-GPU ones plus the communication buffers."""
_FORWARD_PHASES = ("end_of_forward", "forward_peak")
_STEP_PHASES = ("end_of_forward", "forward_peak", "peak_backward")
_STATIC_FIELDS = tuple(f for f in TrainingSetup.__dataclass_fields__ if f not in ("batch", "seq"))


@dataclass(frozen=True, slots=True)
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
    key = dataclasses.replace(setup, batch=1, seq=1, allow_long_seq=True)
    return list(_dp_classes_cached(spec, key, plan, stage))


@lru_cache(maxsize=1024)
def _dp_classes_cached(
    spec: ModelSpec, setup: TrainingSetup, plan: ParallelPlan, stage: int
) -> tuple[tuple[int, ...], ...]:
    fsdp = plan.sharding.is_fsdp and plan.sharding is not Sharding.FSDP_NO_SHARD
    dp = plan.dp
    if not fsdp or dp == 1:
        return (tuple(range(dp)),)
    world = plan.dp * plan.cp_degree
    if plan.sharding is Sharding.FSDP_HYBRID:
        world = plan.hybrid_shard_degree
    points = {0}
    for t in stage_tensors(spec, setup, plan, stage):
        w = world // plan.ep_degree if t.expert else world
        chunk = -(-t.d0 // w)
        full = t.d0 // chunk
        points.update(p for p in (full, full + 1) if p < dp)
    cuts = sorted(points)
    signature = [
        tuple(fsdp_local_view_numel(t.d0, t.rest, world, r % world)
              for t in stage_tensors(spec, setup, plan, stage))
        for r in cuts
    ]  # fmt: skip
    classes: dict[tuple[int, ...], list[int]] = {}
    bounds = [*cuts, dp]
    for i, r in enumerate(cuts):
        classes.setdefault(signature[i], []).extend(range(r, bounds[i + 1]))
    return tuple(tuple(v) for v in classes.values())


def rank_groups(spec: ModelSpec, setup: TrainingSetup, plan: ParallelPlan) -> list[RankGroup]:
    """Every distinct rank group of the plan, first stage first."""
    validate_setup(spec, setup)
    validate_plan(spec, plan, micro_batch=setup.batch, seq=setup.seq)
    if plan.sequence_parallel and (setup.seq // plan.cp_degree) % plan.tp_degree:
        raise SetupError(
            f"sequence parallelism splits the sequence: seq({setup.seq}) / cp({plan.cp_degree}) "
            f"must be divisible by tp({plan.tp_degree})"
        )
    local = local_step_fast(spec, setup, plan)
    out = []
    for stage, dp_ranks, states, ranks in _static_groups_fast(spec, setup, plan):
        out.append(_group(spec, setup, plan, local, stage, dp_ranks, states, ranks))
    return out


_FAST_STATIC: dict[tuple[object, ...], tuple[ModelSpec, ParallelPlan, tuple[Any, ...]]] = {}


def _static_groups_fast(spec: ModelSpec, setup: TrainingSetup, plan: ParallelPlan) -> Any:
    """:func:`_static_groups` looked up by the identity of ``spec`` and ``plan`` (hashing a
    whole ModelSpec on every call would cost more than the estimate; searches call this in a
    loop, as ``training_peak_bytes`` does)."""
    key = (id(spec), id(plan), *(getattr(setup, f) for f in _STATIC_FIELDS))
    hit = _FAST_STATIC.get(key)
    if hit is not None and hit[0] is spec and hit[1] is plan:
        return hit[2]
    if len(_FAST_STATIC) > 1024:
        _FAST_STATIC.clear()
    groups = _static_groups(spec, _static_key(setup), plan)
    _FAST_STATIC[key] = (spec, plan, groups)
    return groups


def _static_key(setup: TrainingSetup) -> TrainingSetup:
    """``setup`` without what model states do not depend on (micro-batch, sequence)."""
    if setup.batch == 1 and setup.seq == 1 and setup.allow_long_seq:
        return setup
    return dataclasses.replace(setup, batch=1, seq=1, allow_long_seq=True)


@lru_cache(maxsize=1024)
def _static_groups(
    spec: ModelSpec, setup: TrainingSetup, plan: ParallelPlan
) -> tuple[tuple[int, tuple[int, ...], StageStates, tuple[int, ...]], ...]:
    """(stage, data-parallel ranks, their model states, global ranks) of every rank group."""
    out = []
    for stage in range(plan.pp_degree):
        for dp_ranks in _dp_classes_cached(spec, setup, plan, stage):
            states = stage_states(spec, setup, plan, stage, dp_ranks[0])
            out.append((stage, dp_ranks, states, rank_ids(plan, stage, dp_ranks)))
    return tuple(out)


def _group(
    spec: ModelSpec,
    setup: TrainingSetup,
    plan: ParallelPlan,
    local: LocalStep,
    stage: int,
    dp_ranks: tuple[int, ...],
    states: StageStates,
    ranks: tuple[int, ...],
) -> RankGroup:
    m = plan.resolved_micro_batches(setup.batch)
    if plan.pp_degree == 1:
        phases, in_flight = _single_stage_phases(local, states, m), 1.0
    else:
        phases, in_flight = _stage_phases(spec, plan, local, stage, states, m)
    comm = _comm_lines(spec, setup, plan, local, stage, states)
    for name, lines in comm.items():
        phases[name]["communication"] = sum(lines.values())
    peak = max((*TRAINING_PHASES, "forward_peak"), key=lambda k: sum(phases[k].values()))
    return RankGroup(stage, dp_ranks, ranks, phases, peak, states, comm, in_flight)


def _rank_plan(local: LocalStep, states: StageStates) -> TrainingPlan:
    """The local plan with the rank's model states in place of the single GPU's, so that the
    single-GPU engine picks the backward high point with the rank's own gradients: layers'
    gradients scaled to the rank's (sharded) sizes, the embeddings' and the head's exact."""
    tplan = local.plan
    rank = 0 if states.grads_persistent else sum(states.grads.values())
    emb = states.grads_embedding
    head = states.grads_head
    layers_rank = max(rank - emb - head, 0)
    layers_local = sum(g.count * g.grad_bytes for g in tplan.layers)
    groups = tuple(
        dataclasses.replace(g, grad_bytes=g.grad_bytes * layers_rank // max(layers_local, 1))
        for g in tplan.layers
    )
    return dataclasses.replace(
        tplan,
        params={"rank": sum(states.params.values())},
        states={"rank": sum(states.states.values())},
        grads={"embeddings": emb, "layers": layers_rank, "head": rank - emb - layers_rank},
        layers=groups,
        step_temporary=states.step_temporary,
    )


_RANK_PLANS: dict[tuple[int, int], tuple[TrainingPlan, StageStates, TrainingPlan]] = {}


def _cached_rank_plan(local: LocalStep, states: StageStates) -> TrainingPlan:
    """:func:`_rank_plan`, kept per (local plan, states) object pair (both are cached)."""
    key = (id(local.plan), id(states))
    hit = _RANK_PLANS.get(key)
    if hit is not None and hit[0] is local.plan and hit[1] is states:
        return hit[2]
    if len(_RANK_PLANS) > 1024:
        _RANK_PLANS.clear()
    rank_plan = _rank_plan(local, states)
    _RANK_PLANS[key] = (local.plan, states, rank_plan)
    return rank_plan


def _single_stage_phases(
    local: LocalStep, states: StageStates, micro_batches: int
) -> dict[str, dict[str, int]]:
    """The single-GPU phases of the local model with the rank's model states in place."""
    rank_plan = _cached_rank_plan(local, states)
    memory = evaluate(rank_plan, local.batch, local.seq)
    rank_grads = sum(states.grads.values())
    for name, parts in memory.phases.items():  # fresh dicts: filled in place
        parts["communication"] = 0
        # from the second micro-batch on (or with persistent partitions) every gradient exists
        whole = states.grads_persistent or ((micro_batches > 1) * (name in _STEP_PHASES))
        parts["gradients"] = where(whole, rank_grads, parts["gradients"])
    return memory.phases


def _stage_phases(
    spec: ModelSpec,
    plan: ParallelPlan,
    local: LocalStep,
    stage: int,
    states: StageStates,
    micro_batches: int,
) -> tuple[dict[str, dict[str, int]], float]:
    """A pipeline stage: in-flight micro-batches of its layers (and the embeddings / head)."""
    p, v = plan.pp_degree, plan.virtual_stages
    first, last = stage == 0, stage == p - 1
    tplan, b, s, r = local.plan, local.batch, local.seq, local.plan.round_to
    n_layers = len(stage_layers(spec, plan, stage))
    gpipe = plan.schedule is Schedule.GPIPE
    chunks = in_flight_chunks(stage, p, micro_batches, v, gpipe)
    layer_share = local.layer_acts * n_layers // spec.n_layers
    per_chunk = layer_share // v + local.model_acts
    head = local.head_acts * last * where(gpipe, micro_batches, 1)
    acts = chunks * per_chunk + head
    cache_layers = sum(g.count * g.cache_bytes for g in tplan.layers) * n_layers // spec.n_layers
    cache = chunks * cache_layers // v + tplan.cache_head * last
    tokens = b * s
    inputs = alloc_bytes(tokens * 8, r) * (first + last)
    grads = sum(states.grads.values())
    static = {
        "parameters": sum(states.params.values()),
        "optimizer_states": sum(states.states.values()),
        "buffers": tplan.buffers,
        "inputs": inputs,
    }
    loss_temps = 2 * alloc_bytes(tokens * spec.vocab_size * 4, r) * last
    transient = maximum(_layer_transient(tplan, b, s), loss_temps)
    base = dict.fromkeys(DIST_CATEGORIES, 0)
    base.update(static)

    def phase(**parts: int) -> dict[str, int]:
        out = base.copy()
        out.update(parts)
        return out

    step = {"activations": acts, "autocast_cache": cache, "gradients": grads}
    phases = {
        "after_load": phase(),
        "end_of_forward": phase(**step),
        "forward_peak": phase(**step),
        "peak_backward": phase(**step, temporaries=transient),
        "after_backward": phase(gradients=grads),
        "optimizer_step": phase(gradients=grads, temporaries=states.step_temporary),
        "after_zero_grad": phase(),
    }
    return phases, chunks / v


def _fsdp_backward_lines(states: StageStates) -> dict[str, int]:
    """FSDP2's gathered layers in the backward, beside the root (unsharded from the forward):
    inside a layer it is current and the next one prefetched, or, in the first layer, the
    second's gradients wait in the reduce-scatter input. The larger set is kept at every
    backward high point (a gloo run shows only the prefetched layer at the loss backward, one
    layer less: tests/test_distributed_exact.py), so that peaks stay monotone in batch and
    sequence whichever high point the single-GPU engine picks."""
    layer, grads = states.layer_unsharded_bytes, states.layer_grad_unsharded_bytes
    if grads > layer:
        return {"fsdp_all_gather_current_layer": layer, "fsdp_reduce_scatter_input": grads}
    return {"fsdp_all_gather_current_layer": layer, "fsdp_all_gather_prefetched_layer": layer}


def _comm_lines(
    spec: ModelSpec,
    setup: TrainingSetup,
    plan: ParallelPlan,
    local: LocalStep,
    stage: int,
    states: StageStates,
) -> dict[str, dict[str, int]]:
    """Named communication buffers live in each phase."""
    persistent = dict(states.persistent_comm)
    step: dict[str, int] = {}
    forward: dict[str, int] = {}
    backward: dict[str, int] = {}
    r = local.plan.round_to
    sharding = plan.sharding
    if sharding in (Sharding.FSDP_FULL, Sharding.FSDP_HYBRID):
        forward["fsdp_root_unsharded"] = states.root_unsharded_bytes
        backward.update(_fsdp_backward_lines(states))
    elif sharding is Sharding.FSDP_SHARD_GRAD_OP:
        n = len(stage_layers(spec, plan, stage))
        forward["fsdp_root_unsharded"] = states.root_unsharded_bytes
        forward["fsdp_unsharded_layers"] = n * states.layer_unsharded_bytes
        backward["fsdp_reduce_scatter_input"] = states.layer_grad_unsharded_bytes
    elif sharding is Sharding.ZERO_3:
        ds = plan.deepspeed
        width = state_regime(setup, plan).param_bytes
        prefetch = minimum(ds.stage3_prefetch_bucket_size * width, states.layer_unsharded_bytes)
        step["zero3_gathered_current_layer"] = states.layer_unsharded_bytes
        step["zero3_prefetched_params"] = round_up(prefetch, r)
    b, s, hidden = local.batch, local.seq, spec.hidden_size
    compute = local.plan.regime.compute_bytes
    if plan.cp_degree > 1:
        kv = local.plan.spec.n_kv_heads * spec.head_dim
        step["cp_ring_kv_buffers"] = 2 * 2 * alloc_bytes(b * s * kv * compute, r)
    if plan.ep_degree > 1 and spec.moe is not None:
        rows = b * s * spec.moe.top_k
        step["ep_all_to_all_buffers"] = 2 * alloc_bytes(rows * hidden * compute, r)
    if plan.pp_degree > 1:
        stream = 4 if local.plan.regime.autocast else compute
        step["pp_send_recv_buffers"] = 2 * alloc_bytes(b * s * hidden * stream, r)
    out = {}
    for name in (*TRAINING_PHASES, "forward_peak"):
        lines = dict(persistent)
        if name in _STEP_PHASES:
            lines.update(step)
            lines.update(forward)
        if name == "peak_backward":
            lines.update(backward)
        out[name] = {k: v for k, v in lines.items() if v}
    return out
