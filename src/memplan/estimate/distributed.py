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
from memplan.estimate.dist_states import (
    StageStates,
    activation_precision,
    local_spec,
    stage_layers,
    stage_states,
    stage_tensors,
    state_regime,
)
from memplan.estimate.train_plan import TrainingPlan, training_plan
from memplan.estimate.train_setup import validate_setup
from memplan.estimate.train_step import (
    StepMemory,
    _layer_transient,
    _plan_key,
    evaluate,
)
from memplan.formulas.activations import Saved
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

_SP_PREFIXES = (
    "input_layernorm/",
    "post_attention_layernorm/",
    "pre_feedforward_layernorm/",
    "post_feedforward_layernorm/",
    "final_norm/",
)
_SP_KEYS = ("self_attn/mask", "mlp/mask", "checkpoint/layer_input", "embeddings/dropout/mask")
_FORWARD_PHASES = ("end_of_forward", "forward_peak")
_STEP_PHASES = ("end_of_forward", "forward_peak", "peak_backward")


def sp_split(key: str) -> bool:
    """Whether sequence parallelism splits this saved tensor over the sequence (the norms,
    the residual dropouts, a checkpointed layer input; not a norm's fixed weight copy)."""
    if key.endswith("one_plus_weight_fp32"):
        return False
    return key.startswith(_SP_PREFIXES) or key in _SP_KEYS


@dataclass(frozen=True, slots=True)
class LocalStep:
    """The single-GPU engine's answer for one rank's local model at (micro-batch, seq / cp)."""

    plan: TrainingPlan
    memory: StepMemory
    batch: int
    seq: int
    layer_acts: int
    """Saved bytes of all decoder layers (one micro-batch)."""
    model_acts: int
    head_acts: int


@lru_cache(maxsize=256)
def local_step(spec: ModelSpec, setup: TrainingSetup, plan: ParallelPlan) -> LocalStep:
    """Evaluate the rank-local model with the single-GPU engine (cached per plan)."""
    cp = plan.cp_degree
    seq = setup.seq // cp
    act_setup = dataclasses.replace(
        setup, precision=activation_precision(setup, plan), seq=seq, allow_long_seq=True
    )
    tplan = training_plan(local_spec(spec, plan), _plan_key(act_setup))
    if cp > 1 and tplan.backend in ("eager", "math"):
        raise SetupError(
            f"context parallelism runs on fused SDPA kernels (flash, cuDNN, memory-efficient), "
            f"not {tplan.backend}: choose --attention flash or sdpa with half precision"
        )
    b = setup.batch
    if plan.sequence_parallel:
        tplan = _sequence_parallel_plan(tplan, b, seq, plan.tp_degree)
    mem = evaluate(tplan, b, seq)
    acts = mem.activations
    return LocalStep(tplan, mem, b, seq, acts["layers"], acts["model"], acts["head_and_loss"])


def _sp_item(item: Saved, b: int, seq: int, tp: int) -> Saved:
    """``item`` at ``seq / tp`` of its tokens when sequence parallelism splits it, as a fixed
    size at this (batch, seq): ``b * (seq / tp) * per_token`` elements (seq % tp == 0)."""
    if not (sp_split(item.key) and item.per_token):
        return item
    numel = b * (seq // tp) * item.per_token + seq * item.per_position + item.fixed
    return Saved(item.key, item.elem_bytes, fixed=numel, category=item.category)


def _sequence_parallel_plan(tplan: TrainingPlan, b: int, seq: int, tp: int) -> TrainingPlan:
    """The local plan with the saved tensors sequence parallelism splits divided by ``tp``
    (the single-GPU engine then evaluates every phase and backward candidate with them)."""

    def split(items: tuple[Saved, ...]) -> tuple[Saved, ...]:
        return tuple(_sp_item(i, b, seq, tp) for i in items)

    layers = tuple(
        dataclasses.replace(
            g, saved=split(g.saved), full_saved=split(g.full_saved),
            down_input=split(g.down_input), recompute=split(g.recompute),
        )
        for g in tplan.layers
    )  # fmt: skip
    return dataclasses.replace(
        tplan,
        layers=layers,
        model_saved=split(tplan.model_saved),
        head_saved=split(tplan.head_saved),
        final_norm_input=split(tplan.final_norm_input),
    )


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
    last full chunk keep smaller optimizer states (unpadded views)."""
    fsdp = plan.sharding.is_fsdp and plan.sharding is not Sharding.FSDP_NO_SHARD
    dp = plan.dp
    if not fsdp or dp == 1:
        return [tuple(range(dp))]
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
    return [tuple(v) for v in classes.values()]


def rank_groups(spec: ModelSpec, setup: TrainingSetup, plan: ParallelPlan) -> list[RankGroup]:
    """Every distinct rank group of the plan, first stage first."""
    validate_setup(spec, setup)
    validate_plan(spec, plan, micro_batch=setup.batch, seq=setup.seq)
    if plan.sequence_parallel and (setup.seq // plan.cp_degree) % plan.tp_degree:
        raise SetupError(
            f"sequence parallelism splits the sequence: seq({setup.seq}) / cp({plan.cp_degree}) "
            f"must be divisible by tp({plan.tp_degree})"
        )
    local = local_step(spec, setup, plan)
    out = []
    for stage in range(plan.pp_degree):
        for dp_ranks in _dp_classes(spec, setup, plan, stage):
            states = stage_states(spec, setup, plan, stage, dp_ranks[0])
            out.append(_group(spec, setup, plan, local, stage, dp_ranks, states))
    return out


def _group(
    spec: ModelSpec,
    setup: TrainingSetup,
    plan: ParallelPlan,
    local: LocalStep,
    stage: int,
    dp_ranks: tuple[int, ...],
    states: StageStates,
) -> RankGroup:
    comm = _comm_lines(spec, setup, plan, local, stage, states)
    m = plan.resolved_micro_batches(setup.batch)
    if plan.pp_degree == 1:
        phases, in_flight = _single_stage_phases(local, states, m), 1.0
    else:
        phases, in_flight = _stage_phases(spec, plan, local, stage, states, m)
    for name, lines in comm.items():
        phases[name]["communication"] = sum(lines.values())
    peak = max((*TRAINING_PHASES, "forward_peak"), key=lambda k: sum(phases[k].values()))
    return RankGroup(
        stage, dp_ranks, rank_ids(plan, stage, dp_ranks), phases, peak, states, comm, in_flight
    )


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


def _single_stage_phases(
    local: LocalStep, states: StageStates, micro_batches: int
) -> dict[str, dict[str, int]]:
    """The single-GPU phases of the local model with the rank's model states in place."""
    rank_plan = _rank_plan(local, states)
    memory = evaluate(rank_plan, local.batch, local.seq)
    rank_grads = sum(states.grads.values())
    out = {}
    for name, parts in memory.phases.items():
        d = dict.fromkeys(DIST_CATEGORIES, 0)
        d.update(parts)
        # from the second micro-batch on (or with persistent partitions) every gradient exists
        whole = states.grads_persistent or ((micro_batches > 1) * (name in _STEP_PHASES))
        d["gradients"] = where(whole, rank_grads, parts["gradients"])
        out[name] = d
    return out


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
        step["fsdp_all_gather_current_layer"] = states.layer_unsharded_bytes
        step["fsdp_all_gather_prefetched_layer"] = states.layer_unsharded_bytes
        backward["fsdp_reduce_scatter_input"] = states.layer_grad_unsharded_bytes
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
