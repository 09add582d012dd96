"""A rank's phases from numbers: the per-rank arithmetic the engine and the plan search share.

:func:`memplan.estimate.distributed.rank_groups` (one plan, ints) and ``memplan.plan`` (a grid of
plans, NumPy arrays) call the same functions below. Their inputs are numbers:

- :class:`LocalNumbers`: what the rank-local model allocates at its (micro-batch, seq / cp), from
  the single-GPU engine (``train_step.parts_at`` of the rank plan with no model states), per
  phase and backward high point, and the sizes the pipeline and the communication buffers need.
  A constant per (tp, cp, sequence parallelism, micro-batch, checkpointing, precision).
- :class:`StateNumbers`: the rank's model states (``dist_states.stage_states`` summed).
- :class:`RankShape`: where the rank sits (stage, pipeline schedule, micro-batches) and which
  data-parallel runtime holds its states.

**Contract:** plain arithmetic (``where``, ``maximum``, ``minimum``; no branch on a value), so
every field may be an int or a NumPy array over plans; the result is the same number either way
(tests/test_plan_search.py draws 10,000 plans and compares). Choices enter as 0/1 flags.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from memplan.estimate.dist_local import LocalStep
from memplan.estimate.dist_states import StageStates
from memplan.estimate.train_plan import TrainingPlan
from memplan.estimate.train_step import (
    BACKWARD_CANDIDATES,
    parts_at,
    phase_gradients,
    step_at,
)
from memplan.formulas.parallel import in_flight_chunks, maximum, minimum, round_up, where
from memplan.formulas.training import alloc_bytes
from memplan.report import TRAINING_CATEGORIES, TRAINING_PHASES
from memplan.specs.model import ModelSpec

__all__ = [
    "ALL_PHASES",
    "DIST_CATEGORIES",
    "LocalNumbers",
    "RankShape",
    "StateNumbers",
    "StepStates",
    "comm_lines",
    "first_max",
    "held_gradients",
    "local_numbers",
    "phase_total",
    "pipeline_stage_phases",
    "rank_layer_gradients",
    "rank_phase_gradients",
    "rank_plan",
    "single_stage_phases",
    "step_states",
]

Num = Any
"""An int, or a NumPy array of ints over plans."""

DIST_CATEGORIES = (*TRAINING_CATEGORIES, "communication")
"""A rank's categories: the single-GPU ones plus the communication buffers."""
ALL_PHASES = (*TRAINING_PHASES, "forward_peak")
"""The phases a rank's peak is taken over, in order (the first of equal peaks is reported)."""
STEP_PHASES = ("end_of_forward", "forward_peak", "peak_backward")
"""Phases inside the forward and backward of a micro-batch."""


@dataclass(frozen=True, slots=True)
class StateNumbers:
    """A rank's model states, summed (:class:`memplan.estimate.dist_states.StageStates`)."""

    params: Num
    states: Num
    grads: Num
    grads_embedding: Num
    grads_head: Num
    grads_persistent: Num
    """1 when the gradient buffer lives through the whole step (ZeRO-2/3 partitions)."""
    step_temporary: Num
    persistent_comm: Num
    """DDP buckets, DeepSpeed's IPG bucket and stage-3 persistent parameters."""
    layer_unsharded: Num
    layer_grad_unsharded: Num
    root_unsharded: Num

    @classmethod
    def of(cls, states: StageStates) -> StateNumbers:
        return cls(
            params=sum(states.params.values()),
            states=sum(states.states.values()),
            grads=sum(states.grads.values()),
            grads_embedding=states.grads_embedding,
            grads_head=states.grads_head,
            grads_persistent=int(states.grads_persistent),
            step_temporary=states.step_temporary,
            persistent_comm=sum(states.persistent_comm.values()),
            layer_unsharded=states.layer_unsharded_bytes,
            layer_grad_unsharded=states.layer_grad_unsharded_bytes,
            root_unsharded=states.root_unsharded_bytes,
        )


@dataclass(frozen=True, slots=True)
class RankShape:
    """The rank's place in the plan and the plan's choices that shape its buffers (0/1 flags)."""

    micro_batches: Num
    stage: Num = 0
    pp: Num = 1
    virtual: Num = 1
    gpipe: Num = 0
    stage_layers: Num = 0
    """Decoder layers this pipeline rank holds (all of its virtual chunks)."""
    first: Num = 1
    last: Num = 1
    fsdp_reshard: Num = 0
    """FSDP2 full or hybrid: parameters gathered per layer, resharded after the forward."""
    fsdp_keep: Num = 0
    """FSDP2 shard-grad-op: the forward's gathered layers kept until the backward."""
    zero3: Num = 0
    prefetch_bytes: Num = 0
    """DeepSpeed stage 3's prefetch bucket in bytes (elements x parameter width)."""
    cp: Num = 0
    """1 with context parallelism (the ring's K/V buffers)."""
    ep: Num = 0
    """1 with expert parallelism on a MoE model (the all-to-all buffers)."""
    pipelined: Num = 0
    """1 with pipeline parallelism (the send/recv buffers)."""


# Not frozen: one is built per estimate, and a frozen dataclass's __init__ costs about
# 0.2 us a field (object.__setattr__ each); nothing changes one once it is built.
@dataclass(slots=True)
class LocalNumbers:
    """What the rank-local model allocates at its micro-batch and local sequence."""

    parts: dict[str, dict[str, Num]]
    """Every phase and backward high point without model states (``train_step.parts_at`` of
    the rank plan); a search may carry each phase's categories as one number."""
    layer_groups: tuple[tuple[Num, Num], ...]
    """(count, gradient bytes of one layer) per group of identical layers (the local model's)."""
    first_layer_grad: Num
    layers_grad: int
    """All layers' gradient bytes in the local model (the scale of a rank's layer gradients)."""
    last_down_grad: Num
    first_down_grad: Num
    layer_acts: Num
    model_acts: Num
    head_acts: Num
    cache_layers: Num
    cache_head: Num
    buffers: Num
    tokens_int64: Num
    """One (micro-batch, seq) int64 tensor (input ids or labels)."""
    loss_temporaries: Num
    """Two fp32 (tokens, vocab) gradients of the loss's backward."""
    layer_transient: Num
    n_layers: int
    cp_ring: Num
    ep_buffers: Num
    pp_buffers: Num
    round_to: int


_ZERO_STATES = StageStates(
    params={},
    grads={},
    states={},
    persistent_comm={},
    step_temporary=0,
    layer_unsharded_bytes=0,
    layer_grad_unsharded_bytes=0,
    root_unsharded_bytes=0,
    trainable_numel=0,
)


def rank_plan(local: LocalStep, states: StageStates) -> TrainingPlan:
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


_LOCAL_NUMBERS: dict[int, tuple[LocalStep, LocalNumbers]] = {}


def local_numbers(spec: ModelSpec, local: LocalStep) -> LocalNumbers:
    """:class:`LocalNumbers` of a local step, kept per step object (local steps are cached, and
    hashing one would cost more than building its numbers)."""
    hit = _LOCAL_NUMBERS.get(id(local))
    if hit is not None and hit[0] is local:
        return hit[1]
    if len(_LOCAL_NUMBERS) > 4096:
        _LOCAL_NUMBERS.clear()
    numbers = _local_numbers(spec, local)
    _LOCAL_NUMBERS[id(local)] = (local, numbers)
    return numbers


_PlanNumbers = tuple[TrainingPlan, dict[str, Num], tuple[int, int, int, int]]
_PLAN_NUMBERS: dict[int, tuple[TrainingPlan, _PlanNumbers]] = {}


def _plan_numbers(spec: ModelSpec, local: LocalStep) -> _PlanNumbers:
    """The local plan with no model states (:func:`rank_plan`, whose step gives the parts),
    the fields of :class:`LocalNumbers` that do not depend on (micro-batch, seq), and
    :func:`_token_bytes`; kept per local plan object (the plans are cached; with sequence
    parallelism each (micro-batch, seq) has its own)."""
    tplan = local.plan
    hit = _PLAN_NUMBERS.get(id(tplan))
    if hit is not None and hit[0] is tplan:
        return hit[1]
    if len(_PLAN_NUMBERS) > 4096:
        _PLAN_NUMBERS.clear()
    fields = {
        "layer_groups": tuple((g.count, g.grad_bytes) for g in tplan.layers),
        "first_layer_grad": next(g for g in tplan.layers if g.first).grad_bytes,
        "layers_grad": sum(g.count * g.grad_bytes for g in tplan.layers),
        "last_down_grad": tplan.last_down_grad,
        "first_down_grad": tplan.first_down_grad,
        "cache_layers": sum(g.count * g.cache_bytes for g in tplan.layers),
        "cache_head": tplan.cache_head,
        "buffers": tplan.buffers,
        "round_to": tplan.round_to,
        "n_layers": tplan.spec.n_layers,
    }
    out = (rank_plan(local, _ZERO_STATES), fields, _token_bytes(spec, tplan))
    _PLAN_NUMBERS[id(tplan)] = (tplan, out)
    return out


def _token_bytes(spec: ModelSpec, tplan: TrainingPlan) -> tuple[int, int, int, int]:
    """Bytes per token of the loss's fp32 logits, of the CP ring's K (or V) block, of the EP
    all-to-all's rows (top-k per token) and of the pipeline's activation stream."""
    compute = tplan.regime.compute_bytes
    kv = tplan.spec.n_kv_heads * spec.head_dim
    k = spec.moe.top_k if spec.moe is not None else 0
    stream = 4 if tplan.regime.autocast else compute
    hidden = spec.hidden_size
    return spec.vocab_size * 4, kv * compute, k * hidden * compute, hidden * stream


def _local_numbers(spec: ModelSpec, local: LocalStep) -> LocalNumbers:
    tplan, b, s = local.plan, local.batch, local.seq
    r = tplan.round_to
    tokens = b * s
    stateless, fields, (logits, kv, rows, stream) = _plan_numbers(spec, local)
    at = step_at(stateless, b, s, local.kernels)
    # the saved bytes of the local plan itself (the step's differs when its kernels do)
    acts = at if at.plan is stateless else step_at(tplan, b, s, tplan.kernels)
    return LocalNumbers(
        parts=parts_at(at),
        layer_acts=acts.a_layers,
        model_acts=acts.a_model,
        head_acts=acts.a_head,
        tokens_int64=alloc_bytes(tokens * 8, r),
        loss_temporaries=2 * alloc_bytes(tokens * logits, r),
        layer_transient=at.layer_transient,
        cp_ring=2 * 2 * alloc_bytes(tokens * kv, r),
        ep_buffers=2 * alloc_bytes(tokens * rows, r),
        pp_buffers=2 * alloc_bytes(tokens * stream, r),
        **fields,
    )


def phase_total(phase: dict[str, Num]) -> Num:
    """Live bytes of one phase: the sum of its categories."""
    return sum(phase.values())


def first_max(phases: list[dict[str, Num]]) -> dict[str, Num]:
    """The phase with the largest total, the first of equal ones (elementwise on arrays)."""
    totals = [phase_total(phase) for phase in phases]
    if set(map(type, totals)) == {int}:  # one plan: the phase itself
        return phases[totals.index(max(totals))]
    best = phases[0]
    best_total = phase_total(best)
    for phase in phases[1:]:
        total = phase_total(phase)
        take = total > best_total
        best = {k: where(take, phase[k], best[k]) for k in best}
        best_total = where(take, total, best_total)
    return best


def rank_layer_gradients(local: Any, state: StateNumbers) -> tuple[Num, Num]:
    """(all layers', the first layer's) gradient bytes of the rank: the local model's layer
    groups scaled to the rank's (sharded) layer gradients, as :func:`rank_plan` does.

    ``local`` needs ``layer_groups``, ``first_layer_grad`` and ``layers_grad`` (a
    :class:`LocalNumbers`). The products reach 1e20 for a 70B model, past int64: a plan search
    calls this on Python ints once per rank's states and passes the result on as arrays."""
    rank = where(state.grads_persistent, 0, state.grads)
    layers_rank = maximum(rank - state.grads_embedding - state.grads_head, 0)
    scale = max(local.layers_grad, 1)
    layers = 0
    for count, grad in local.layer_groups:
        layers = layers + count * (grad * layers_rank // scale)
    return layers, local.first_layer_grad * layers_rank // scale


def rank_phase_gradients(
    local: Any, state: StateNumbers, layer_grads: tuple[Num, Num] | None = None
) -> dict[str, Num]:
    """The rank's gradient bytes in each phase and backward high point
    (``train_step.phase_gradients`` of its sharded sizes). ``local`` needs what
    :func:`rank_layer_gradients` reads and ``last_down_grad`` / ``first_down_grad``: per-plan
    constants, so a caller may keep the result per (local plan, rank states).
    ``layer_grads``: :func:`rank_layer_gradients`, when the caller computed it already."""
    rank = where(state.grads_persistent, 0, state.grads)
    layers, first = layer_grads if layer_grads is not None else rank_layer_gradients(local, state)
    return phase_gradients(
        rank,
        state.grads_embedding,
        layers,
        first,
        local.last_down_grad,
        local.first_down_grad,
    )


def held_gradients(
    gradients: dict[str, Num], state: StateNumbers, micro_batches: Num
) -> dict[str, Num]:
    """The gradient bytes each phase and backward high point holds: ``gradients``
    (:func:`rank_phase_gradients`), or every gradient where they all exist: inside a step from
    the second micro-batch on (accumulated), and always with persistent partitions (ZeRO-2/3).
    Per-plan constants but the micro-batches: a caller may keep it per (local plan, states, m)."""
    persistent = state.grads_persistent
    whole_in_step = maximum(persistent, micro_batches > 1)
    return {
        name: where(whole_in_step if name in _IN_STEP else persistent, state.grads, own)
        for name, own in gradients.items()
    }


_IN_STEP = frozenset((*STEP_PHASES, *BACKWARD_CANDIDATES))
"""The phases and backward high points inside a micro-batch's forward and backward."""


@dataclass(frozen=True, slots=True)
class StepStates:
    """What a single-stage rank's model states put in each phase and backward high point:
    constants of the local plan, the rank's states and the micro-batch count
    (:func:`step_states`), so a caller may keep them."""

    gradients: dict[str, Num]
    """:func:`rank_phase_gradients`: what each high point has written (it picks the peak)."""
    added: dict[str, dict[str, Num]]
    """Per phase and high point: the parameters, the optimizer states and the gradients held
    (:func:`held_gradients`)."""


def step_states(
    local: Any, state: StateNumbers, micro_batches: Num, layer_grads: tuple[Num, Num] | None = None
) -> StepStates:
    """:class:`StepStates` of a rank (``local`` as :func:`rank_phase_gradients` reads it)."""
    gradients = rank_phase_gradients(local, state, layer_grads)
    held = held_gradients(gradients, state, micro_batches)
    params, states = state.params, state.states
    added = {
        name: {"parameters": params, "optimizer_states": states, "gradients": own}
        for name, own in held.items()
    }
    return StepStates(gradients, added)


def single_stage_phases(
    local: LocalNumbers,
    state: StateNumbers,
    micro_batches: Num,
    layer_grads: tuple[Num, Num] | None = None,
    states: StepStates | None = None,
) -> dict[str, dict[str, Num]]:
    """A rank without pipeline stages: the single-GPU phases of the local model with the rank's
    model states in place (:func:`rank_plan`), the backward high point picked with them (by
    the gradients written by then, before :func:`held_gradients` counts accumulated ones).
    ``layer_grads`` / ``states``: :func:`rank_layer_gradients` / :func:`step_states`, when
    the caller has them already."""
    if states is None:
        states = step_states(local, state, micro_batches, layer_grads)
    parts, gradients, added = local.parts, states.gradients, states.added
    # the high points differ by their step parts and gradients only: the rank's parameters and
    # optimizer states are in every one, so the first largest is picked without them
    names = [n for n in BACKWARD_CANDIDATES if n in parts]
    scores = [sum(parts[n].values()) + gradients[n] for n in names]
    if type(sum(scores)) is int:  # one plan: the one phase picked
        name = names[scores.index(max(scores))]
        peak = {**parts[name], **added[name]}  # the same categories in the same order
    else:  # arrays: per plan, the first largest
        peak = first_max([{**parts[n], "gradients": gradients[n]} for n in names])
        written = {"peak_backward": peak["gradients"]}
        peak["gradients"] = held_gradients(written, state, micro_batches)["peak_backward"]
        peak["parameters"], peak["optimizer_states"] = state.params, state.states
    phases = {
        name: peak if name == "peak_backward" else {**parts[name], **added[name]}
        for name in ALL_PHASES
    }
    step = phases["optimizer_step"]
    step["temporaries"] = step["temporaries"] + state.step_temporary
    return phases


def pipeline_stage_phases(
    local: LocalNumbers, state: StateNumbers, shape: RankShape
) -> dict[str, dict[str, Num]]:
    """A pipeline stage: the activations of its micro-batches in flight (per schedule,
    ``formulas.parallel.in_flight_chunks``), the embeddings' on the first stage and the head's
    and loss's on the last, plus the largest backward transient (a layer's MLP or the loss)."""
    sh = shape
    m, v = sh.micro_batches, sh.virtual
    chunks = in_flight_chunks(sh.stage, sh.pp, m, v, sh.gpipe)
    layer_share = local.layer_acts * sh.stage_layers // local.n_layers
    per_chunk = layer_share // v + local.model_acts
    head = local.head_acts * sh.last * where(sh.gpipe, m, 1)
    acts = chunks * per_chunk + head
    cache_layers = local.cache_layers * sh.stage_layers // local.n_layers
    cache = chunks * cache_layers // v + local.cache_head * sh.last
    base = dict.fromkeys(DIST_CATEGORIES, 0)
    base.update(
        parameters=state.params,
        optimizer_states=state.states,
        buffers=local.buffers,
        inputs=local.tokens_int64 * (sh.first + sh.last),
    )
    transient = maximum(local.layer_transient, local.loss_temporaries * sh.last)

    def phase(**parts: Num) -> dict[str, Num]:
        out = base.copy()
        out.update(parts)
        return out

    step = {"activations": acts, "autocast_cache": cache, "gradients": state.grads}
    # GPipe runs every forward before any backward: at the end of the forwards no gradient
    # exists yet (zero_grad(set_to_none=True)), unless the runtime keeps persistent partitions
    forward = {**step, "gradients": where(sh.gpipe, state.grads_persistent, 1) * state.grads}
    return {
        "after_load": phase(),
        "end_of_forward": phase(**forward),
        "peak_backward": phase(**step, temporaries=transient),
        "after_backward": phase(gradients=state.grads),
        "optimizer_step": phase(gradients=state.grads, temporaries=state.step_temporary),
        "after_zero_grad": phase(),
        "forward_peak": phase(**forward),
    }


def comm_lines(
    local: LocalNumbers, state: StateNumbers, shape: RankShape, persistent: dict[str, Num]
) -> dict[str, dict[str, Num]]:
    """Named communication buffers live in each phase (zeros included: a line a plan does not
    have is 0). ``persistent``: the states' own lines (DDP buckets, IPG bucket, ...)."""
    sh = shape
    layer, grads = state.layer_unsharded, state.layer_grad_unsharded
    prefetch = round_up(minimum(sh.prefetch_bytes, layer), local.round_to)
    step = {
        "zero3_gathered_current_layer": sh.zero3 * layer,
        "zero3_prefetched_params": sh.zero3 * prefetch,
        "cp_ring_kv_buffers": sh.cp * local.cp_ring,
        "ep_all_to_all_buffers": sh.ep * local.ep_buffers,
        "pp_send_recv_buffers": sh.pipelined * local.pp_buffers,
    }
    forward = {
        "fsdp_root_unsharded": (sh.fsdp_reshard + sh.fsdp_keep) * state.root_unsharded,
        "fsdp_unsharded_layers": sh.fsdp_keep * sh.stage_layers * layer,
    }
    # FSDP2 full: the current layer and the next one prefetched, or, in the first layer, the
    # second's gradients in the reduce-scatter input (the larger set, at every high point)
    wide = grads > layer
    backward = {
        "fsdp_all_gather_current_layer": sh.fsdp_reshard * layer,
        "fsdp_reduce_scatter_input": sh.fsdp_reshard * wide * grads + sh.fsdp_keep * grads,
        "fsdp_all_gather_prefetched_layer": sh.fsdp_reshard * (1 - wide) * layer,
    }
    out = {}
    for name in ALL_PHASES:
        lines = dict(persistent)
        if name in STEP_PHASES:
            lines.update(step)
            lines.update(forward)
        if name == "peak_backward":
            lines.update(backward)
        out[name] = lines
    return out
