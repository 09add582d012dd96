"""Per-rank model states under a parallel plan: parameters, gradients, optimizer states and the
persistent communication buffers that hold them (DDP buckets, DeepSpeed's IPG bucket).

The per-model part (:func:`stage_tensors`: the TP/EP-local shape of every parameter tensor a
pipeline stage holds) is computed once per (spec, setup, plan) and cached; the per-rank sums
use the arithmetic rules of ``memplan.formulas.parallel`` (FSDP2 dim-0 padding, DeepSpeed flat
padding, ZeRO-3 partitions).

Regimes (what really runs, DIST-NOTES.md):

- DDP and FSDP ``no-shard``: the single-GPU regime of ``--precision``.
- FSDP2 with ``bf16-mixed`` / ``fp16-mixed``: ``MixedPrecisionPolicy(param_dtype=half,
  reduce_dtype=fp32)``: shards, gradients and optimizer states stay fp32 (16 bytes per parameter
  over W); the forward runs on the half all-gather output (no autocast). With ``bf16``/``fp16``
  everything is half (8 bytes per parameter over W).
- DeepSpeed with a half precision: half parameters and gradients, an fp32 master partition and
  fp32 states (``deepspeed-bf16``/``deepspeed-fp16``: the ZeRO paper's 2 + 2 + 12 bytes).
"""

from __future__ import annotations

import dataclasses
import operator
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from memplan.errors import SetupError
from memplan.estimate.train_plan import _trainable
from memplan.formulas.optimizer import (
    optimizer_shared_state_bytes,
    optimizer_state_allocations,
    optimizer_step_temporary_bytes,
)
from memplan.formulas.parallel import (
    deepspeed_flat_padded_numel,
    fsdp_local_view_numel,
    fsdp_padded_shard_numel,
    layers_in_stage,
    round_up,
    zero3_partition_numel,
)
from memplan.formulas.training import Regime, param_tensors, regime
from memplan.specs.model import ModelSpec
from memplan.specs.parallel import (
    DDP_FIRST_BUCKET_BYTES,
    Offload,
    ParallelPlan,
    Schedule,
    Sharding,
)
from memplan.specs.training import Optimizer, Precision, Target, TrainingSetup

__all__ = [
    "LocalTensor",
    "StageStates",
    "activation_precision",
    "compute_width",
    "local_spec",
    "stage_layers",
    "stage_states",
    "stage_tensors",
    "state_regime",
]

_HALF = {Precision.BF16: "bf16", Precision.FP16: "fp16"}
_MIXED_TO_PURE = {
    Precision.BF16_MIXED: Precision.BF16,
    Precision.FP16_MIXED: Precision.FP16,
    Precision.DEEPSPEED_BF16: Precision.BF16,
    Precision.DEEPSPEED_FP16: Precision.FP16,
}
_TO_DEEPSPEED = {
    Precision.BF16: Precision.DEEPSPEED_BF16,
    Precision.BF16_MIXED: Precision.DEEPSPEED_BF16,
    Precision.FP16: Precision.DEEPSPEED_FP16,
    Precision.FP16_MIXED: Precision.DEEPSPEED_FP16,
}
_ADAM_FOREACH = (Optimizer.ADAMW, Optimizer.ADAM)


@dataclass(frozen=True, slots=True)
class LocalTensor:
    """One parameter tensor as a rank holds it after tensor and expert parallelism."""

    name: str
    numel: int
    d0: int
    rest: int
    layer: int
    trainable: bool
    expert: bool
    group: str
    """FSDP unit: ``layers.<i>`` or ``root`` (embeddings, final norm, lm_head)."""
    grad_numel: int = 0
    """Elements of the storage its gradient keeps alive when it is not sharded by FSDP (0: its
    own ``numel``). Under tensor parallelism DTensor computes the vocabulary-sharded embedding's
    gradient over the whole vocabulary and keeps its ``Shard(0)`` rows as a view of it
    (measured on gloo, tests/test_gloo_proof.py)."""

    @property
    def grad_storage_numel(self) -> int:
        return self.grad_numel or self.numel


@dataclass(frozen=True, slots=True)
class StageStates:
    """Model-state bytes of one rank, with the lines they are made of."""

    params: dict[str, int]
    grads: dict[str, int]
    states: dict[str, int]
    persistent_comm: dict[str, int]
    step_temporary: int
    layer_unsharded_bytes: int
    """One decoder layer's parameters as compute sees them (gathered, compute dtype)."""
    layer_grad_unsharded_bytes: int
    """One decoder layer's gradients before they are reduced (reduce dtype, padded)."""
    root_unsharded_bytes: int
    """FSDP root (embeddings, final norm, lm_head) gathered, compute dtype."""
    trainable_numel: int
    grads_embedding: int = 0
    """Of the gradients: the input embeddings' (filled last in the backward)."""
    grads_head: int = 0
    """Of the gradients: those outside the decoder layers and the embeddings (norm, lm_head)."""
    grads_persistent: bool = False
    """The gradient buffer lives through the whole step (ZeRO-2/3 partitions)."""
    offloaded: dict[str, int] = dataclasses.field(default_factory=dict)
    """Bytes this rank keeps in host memory (or on NVMe) instead of the GPU, by line."""


def activation_precision(setup: TrainingSetup, plan: ParallelPlan) -> Precision:
    """The precision the forward really runs in: FSDP's mixed-precision policy and DeepSpeed
    cast the model to half, so no autocast copies exist (see the module docstring)."""
    if plan.sharding.is_fsdp or plan.sharding.is_deepspeed:
        return _MIXED_TO_PURE.get(setup.precision, setup.precision)
    return setup.precision


def state_regime(setup: TrainingSetup, plan: ParallelPlan) -> Regime:
    """Byte widths of parameters, gradients and optimizer states on a rank."""
    if plan.sharding.is_deepspeed:
        precision = _TO_DEEPSPEED.get(setup.precision, setup.precision)
        return regime(precision, fp32_grad_accumulation=setup.fp32_grad_accumulation)
    if plan.sharding.is_fsdp and setup.precision in (Precision.BF16_MIXED, Precision.FP16_MIXED):
        return regime(Precision.FP32)
    return regime(setup.precision, fp32_grad_accumulation=setup.fp32_grad_accumulation)


_LOCAL_SPECS: dict[tuple[int, int], tuple[ModelSpec, ModelSpec]] = {}


def local_spec(spec: ModelSpec, plan: ParallelPlan) -> ModelSpec:
    """The model one tensor-parallel rank computes (see :func:`_local_spec`), cached by the
    identity of ``spec`` (hashing a whole ModelSpec costs more than a rank estimate's step)."""
    key = (id(spec), plan.tp_degree)
    hit = _LOCAL_SPECS.get(key)
    if hit is not None and hit[0] is spec:
        return hit[1]
    if len(_LOCAL_SPECS) > 256:
        _LOCAL_SPECS.clear()
    lspec = _local_spec(spec, plan.tp_degree)
    _LOCAL_SPECS[key] = (spec, lspec)
    return lspec


@lru_cache(maxsize=256)
def _local_spec(spec: ModelSpec, tp: int) -> ModelSpec:
    """The model one tensor-parallel rank computes: ``heads / tp`` query heads, its KV heads
    (``kv / tp``, or one replicated head when ``tp > kv`` as Megatron does), ``width / tp`` for
    the MLP and the shared experts; the hidden size and norms unchanged. The embeddings and
    lm_head keep their full vocabulary here (the logits are all-gathered to it); their
    parameters are sharded by vocabulary rows in :func:`_stage_tensors`."""
    if tp == 1:
        return spec
    kv = max(1, spec.n_kv_heads // tp)
    moe = spec.moe
    if moe is not None and moe.shared_intermediate_size:
        moe = dataclasses.replace(moe, shared_intermediate_size=moe.shared_intermediate_size // tp)
    return dataclasses.replace(
        spec,
        name=f"{spec.name} (tp rank)",
        n_heads=spec.n_heads // tp,
        n_kv_heads=kv,
        intermediate_size=spec.intermediate_size // tp,
        moe=moe,
        hf_config=None,
    )


def stage_layers(spec: ModelSpec, plan: ParallelPlan, stage: int) -> tuple[int, ...]:
    """Decoder layer indices on pipeline rank ``stage`` (its ``virtual_stages`` chunks)."""
    p, v = plan.pp_degree, plan.virtual_stages
    chunks = p * v
    out: list[int] = []
    for k in range(v):
        chunk = stage + k * p
        base = spec.n_layers // chunks
        first = chunk * base + min(chunk, spec.n_layers % chunks)
        out += range(first, first + layers_in_stage(spec.n_layers, chunks, chunk))
    return tuple(out)


_STATIC_FIELDS = tuple(
    f for f in TrainingSetup.__dataclass_fields__ if f not in ("batch", "seq", "allow_long_seq")
)
_static_fields = operator.attrgetter(*_STATIC_FIELDS)
_STATIC_SETUPS: dict[tuple[object, ...], TrainingSetup] = {}


def static_setup(setup: TrainingSetup) -> TrainingSetup:
    """``setup`` without what model states do not depend on (micro-batch, sequence): the key
    of the per-plan caches. Memoised by the other fields' values (building a setup validates
    it; a cache keyed by the setup itself would miss at every new micro-batch or sequence)."""
    key = _static_fields(setup)
    hit = _STATIC_SETUPS.get(key)
    if hit is None:
        if len(_STATIC_SETUPS) > 256:
            _STATIC_SETUPS.clear()
        hit = _STATIC_SETUPS[key] = dataclasses.replace(setup, batch=1, seq=1, allow_long_seq=True)
    return hit


def stage_tensors(
    spec: ModelSpec, setup: TrainingSetup, plan: ParallelPlan, stage: int
) -> tuple[LocalTensor, ...]:
    """Every parameter tensor pipeline rank ``stage`` holds, at its TP/EP-local shape (cached
    by what decides it: tp, ep, the stage's layers and ends; not the rest of the plan)."""
    key = static_setup(setup)
    layers = stage_layers(spec, plan, stage)
    last = stage == plan.pp_degree - 1
    return _stage_tensors(spec, key, plan.tp_degree, plan.ep_degree, layers, stage == 0, last)


@lru_cache(maxsize=1024)
def _stage_tensors(
    spec: ModelSpec,
    setup: TrainingSetup,
    tp: int,
    ep: int,
    stage_layer_ids: tuple[int, ...],
    first: bool,
    last: bool,
) -> tuple[LocalTensor, ...]:
    local = _local_spec(spec, tp)
    layers = frozenset(stage_layer_ids)
    out = []
    for t in param_tensors(local):
        in_stage = t.layer in layers or (
            t.layer < 0
            and (
                (t.role == "embedding" and first)
                or (last and spec.tie_word_embeddings and t.name == "embed_tokens.weight")
                or (t.role != "embedding" and last)
            )
        )
        if not in_stage:
            continue
        d0 = t.shape[0] if t.shape else t.numel
        numel, expert = t.numel, t.role == "experts"
        if expert:
            d0, numel = d0 // ep, numel // ep
        grad_numel = 0
        if tp > 1 and t.name in VOCAB_PARALLEL:
            rows = vocab_rows_per_rank(d0, tp)
            d0, numel = rows, rows * (numel // max(d0, 1))
            grad_numel = t.numel if t.role == "embedding" else 0
        group = f"layers.{t.layer}" if t.layer >= 0 else "root"
        out.append(
            LocalTensor(
                t.name,
                numel,
                d0,
                numel // max(d0, 1),
                t.layer,
                _trainable(t, spec, setup),
                expert,
                group,
                grad_numel,
            )
        )
    return tuple(out)


VOCAB_PARALLEL = frozenset({"embed_tokens.weight", "lm_head.weight", "lm_head.bias"})
"""Tensors tensor parallelism shards by vocabulary rows: the token embeddings (torchtitan's
``RowwiseParallel`` on ``embed_tokens``, Megatron's ``VocabParallelEmbedding``) and the lm_head
(``ColwiseParallel``, Megatron's ``ColumnParallelLinear`` output layer)."""


def vocab_rows_per_rank(vocab: int, tp: int) -> int:
    """Vocabulary rows on the first (largest) TP rank: DTensor's ``Shard(0)`` splits dim 0 as
    ``torch.chunk`` does, ``ceil(vocab / tp)`` rows per rank and the remainder on the last
    ones. A vocabulary that ``tp`` does not divide leaves the last TP ranks smaller: memplan
    reports the largest."""
    return -(-vocab // tp)


def shard_world(plan: ParallelPlan, expert: bool) -> int:
    """Ranks a tensor's states are sharded over: dp (x cp, as torchtitan's ``dp_shard_cp``);
    expert tensors over the expert-data-parallel ranks ``dp * cp / ep``."""
    return _shard_worlds(plan)[expert]


def fsdp_shard_index(plan: ParallelPlan, dp_rank: int, expert: bool) -> int:
    """Which shard data-parallel rank ``dp_rank`` holds of a tensor: its own index for dense
    tensors; for experts its index along torchtitan's ``dp_shard_mod_ep`` mesh dimension (the
    data-parallel ranks ``dp x cp`` split as ``dp_shard_mod_ep x ep``, experts FSDP-sharded
    over the first): ``dp_rank * cp // ep``."""
    if not expert or plan.ep_degree == 1:
        return dp_rank
    return dp_rank * plan.cp_degree // plan.ep_degree


@lru_cache(maxsize=4096)
def _shard_worlds(plan: ParallelPlan) -> tuple[int, int]:
    """(dense, expert) shard worlds of ``plan`` (see :func:`shard_world`)."""
    if plan.sharding in (Sharding.DDP, Sharding.ZERO_0, Sharding.FSDP_NO_SHARD):
        return 1, 1
    world = plan.dp * plan.cp_degree
    if plan.sharding is Sharding.FSDP_HYBRID:
        world = plan.hybrid_shard_degree
    return world, world // plan.ep_degree


def stage_states(
    spec: ModelSpec, setup: TrainingSetup, plan: ParallelPlan, stage: int, dp_rank: int
) -> StageStates:
    """Model-state bytes of data-parallel rank ``dp_rank`` on pipeline rank ``stage``
    (independent of micro-batch and sequence: cached per plan, less what the states do not
    depend on, :func:`states_plan`)."""
    key = static_setup(setup)
    return _stage_states(spec, key, states_plan(plan), stage, dp_rank)


@lru_cache(maxsize=4096)
def states_plan(plan: ParallelPlan) -> ParallelPlan:
    """``plan`` without what model states do not depend on: sequence parallelism, the batch
    split, and the schedule beyond its virtual stages (the key of the states' cache, so that
    the layouts of a plan search share their states; tests/test_plan_search.py checks it)."""
    schedule = Schedule.INTERLEAVED if plan.virtual_stages > 1 else Schedule.ONE_F_ONE_B
    return dataclasses.replace(plan, sequence_parallel=False, global_batch=None,
                               micro_batches=None, schedule=schedule)  # fmt: skip


@lru_cache(maxsize=1024)
def _stage_states(
    spec: ModelSpec, setup: TrainingSetup, plan: ParallelPlan, stage: int, dp_rank: int
) -> StageStates:
    if setup.is_lora or setup.qlora:
        raise SetupError("LoRA / QLoRA with a parallel plan is not modelled yet: drop the plan")
    tensors = stage_tensors(spec, setup, plan, stage)
    reg = state_regime(setup, plan)
    r = 512 if setup.target is Target.CUDA else 1
    if plan.sharding.is_deepspeed:
        states = _deepspeed_states(setup, plan, tensors, reg, r)
    else:
        states = _torch_states(setup, plan, tensors, reg, r, dp_rank)
    return _offload(states, plan)


def _offload(states: StageStates, plan: ParallelPlan) -> StageStates:
    """Move what ``--offload`` names to the host: ZeRO-Offload the fp32 master weights, the
    optimizer states and the step (its fp32 gradient partition) with ``optimizer``; ZeRO-3's
    parameter partitions too with ``params``; FSDP2's ``CPUOffloadPolicy`` the sharded
    parameters, gradients and optimizer states (the step runs on the CPU)."""
    if plan.offload is Offload.NONE:
        return states
    host = {f"optimizer/{k}": v for k, v in states.states.items()}
    if states.step_temporary:
        host["optimizer/step_fp32_gradients"] = states.step_temporary
    changes: dict[str, object] = {"states": {}, "step_temporary": 0}
    if states.grads_persistent or (plan.offload is Offload.PARAMS and plan.sharding.is_fsdp):
        # ZeRO-2/3 accumulate gradient partitions in the host's buffers when offloading
        host.update({f"gradients/{k}": v for k, v in states.grads.items()})
        changes.update(grads={}, grads_embedding=0, grads_head=0)
    if plan.offload is Offload.PARAMS:
        host.update({f"parameters/{k}": v for k, v in states.params.items()})
        changes["params"] = {}
    changes["offloaded"] = {k: v for k, v in host.items() if v}
    return dataclasses.replace(states, **changes)  # type: ignore[arg-type]


def compute_width(setup: TrainingSetup, plan: ParallelPlan, reg: Regime) -> int:
    """Bytes of a parameter as the forward uses it: the all-gathered width under FSDP2's
    ``param_dtype`` (half under a mixed policy, though the shards stay fp32), DeepSpeed's half
    model, or autocast's copies."""
    precision = activation_precision(setup, plan)
    return 2 if precision in _HALF or reg.autocast else reg.param_bytes


def _torch_states(
    setup: TrainingSetup,
    plan: ParallelPlan,
    tensors: tuple[LocalTensor, ...],
    reg: Regime,
    r: int,
    dp_rank: int,
) -> StageStates:
    """DDP and FSDP2: one allocation per parameter, gradient and state tensor."""
    fsdp = plan.sharding.is_fsdp and plan.sharding is not Sharding.FSDP_NO_SHARD
    params = grads = states = 0
    unit_grads = root_grads = 0  # FSDP: each unit's reduce-scatter output, one allocation
    sizes: list[int] = []
    largest = n_train = 0
    # the decoder layers repeat the same shapes: each distinct shape's numbers once, and each
    # distinct FSDP unit once with how many there are (_grouped)
    seen: dict[tuple[int, int, int, bool], tuple[int, int, int, int]] = {}
    for count, group, members in _grouped(tensors)[0]:
        unit = 0
        for t in members:
            key = (t.numel, t.d0, t.rest, t.expert)
            hit = seen.get(key)
            if hit is None:
                hit = seen[key] = _tensor_states(setup, reg, r, t, shard_world(plan, t.expert),
                                                 fsdp_shard_index(plan, dp_rank, t.expert),
                                                 fsdp)  # fmt: skip
            stored, param_bytes, state_bytes, step_bytes = hit
            params += count * param_bytes
            if not t.trainable:
                continue
            n_train += count * t.numel
            unit += stored * reg.grad_bytes
            states += count * state_bytes
            sizes += [step_bytes] * count
            largest = max(largest, step_bytes)
        unit_grads += count * round_up(unit, r)
        if group == "root":
            root_grads = unit
    emb = head = 0
    if fsdp:  # the reduce-scatter output of each FSDP unit is one flat allocation
        grads = unit_grads
        root = round_up(root_grads, r)
        embed = [t for t in tensors if t.trainable and t.group == "root" and "embed" in t.name]
        emb = round_up(sum(fsdp_padded_shard_numel(t.d0, t.rest, shard_world(plan, False))
                           for t in embed) * reg.grad_bytes, r)  # fmt: skip
        emb, head = min(emb, root), root - min(emb, root)
    else:
        sizes_by = [
            (t, round_up(t.grad_storage_numel * reg.grad_bytes, r)) for t in tensors if t.trainable
        ]
        grads = sum(v for _, v in sizes_by)
        emb = sum(v for t, v in sizes_by if t.layer < 0 and "embed" in t.name)
        head = sum(v for t, v in sizes_by if t.layer < 0) - emb
    for size in optimizer_shared_state_bytes(setup.optimizer):
        states += round_up(size, r)
    step_optimizer = setup.optimizer
    if setup.target is Target.CPU and step_optimizer in _ADAM_FOREACH:
        step_optimizer = Optimizer.ADAMW_FORLOOP
        states += 4 * len(sizes)  # host step counters: CPU memory on this target
    step_temp = optimizer_step_temporary_bytes(step_optimizer, sizes, largest, r, reg.state_bytes)
    comm: dict[str, int] = {}
    if plan.sharding is Sharding.DDP and plan.dp * plan.cp_degree > 1:  # no DDP on one replica
        buckets = ddp_bucket_bytes(tensors, plan, reg.grad_bytes, r)
        comm["ddp_gradient_buckets"] = buckets
        if plan.gradient_as_bucket_view:
            grads = 0  # the .grad tensors are views into the buckets
    compute = compute_width(setup, plan, reg)
    return StageStates(
        params={"sharded" if fsdp else "replicated": params},
        grads={"sharded" if fsdp else "replicated": grads} if grads else {},
        grads_embedding=emb if grads else 0,
        grads_head=head if grads else 0,
        states={"optimizer_states": states} if states else {},
        persistent_comm=comm,
        step_temporary=step_temp,
        layer_unsharded_bytes=_largest_layer(tensors, plan, compute, r, gathered=True),
        layer_grad_unsharded_bytes=_largest_layer(
            tensors, plan, 4 if reg.grad_bytes == 4 else reg.grad_bytes, r, gathered=True
        ),
        root_unsharded_bytes=sum(
            round_up(
                fsdp_padded_shard_numel(t.d0, t.rest, w := shard_world(plan, t.expert))
                * w
                * compute,
                r,
            )
            for t in tensors
            if t.group == "root"
        ),
        trainable_numel=n_train,
    )


def _tensor_states(
    setup: TrainingSetup,
    reg: Regime,
    r: int,
    t: LocalTensor,
    w: int,
    dp_rank: int,
    fsdp: bool,
) -> tuple[int, int, int, int]:
    """One tensor's (stored elements, parameter bytes, optimizer state bytes, bytes the step
    temporary sees) on a DDP / FSDP2 rank (``_torch_states``)."""
    stored = fsdp_padded_shard_numel(t.d0, t.rest, w) if fsdp else t.numel
    view = fsdp_local_view_numel(t.d0, t.rest, w, dp_rank) if fsdp else t.numel
    shape = (view // t.rest, t.rest) if t.rest > 1 else (view,)
    states = 0
    for size in optimizer_state_allocations(setup.optimizer, view, shape, reg.state_bytes):
        states += round_up(size, r)
    if reg.master_bytes:
        states += round_up(view * reg.master_bytes, r)
    return stored, round_up(stored * reg.param_bytes, r), states, view * reg.state_bytes


def _largest_layer(
    tensors: tuple[LocalTensor, ...], plan: ParallelPlan, width: int, r: int, *, gathered: bool
) -> int:
    """The largest decoder layer's tensors, all-gathered and padded (``W * ceil(d0/W) *
    rest``), ``width`` bytes per element, one allocation each (each distinct layer once)."""
    worlds = (shard_world(plan, False), shard_world(plan, True))
    largest = 0
    for layer in _grouped(tensors)[1]:
        total = 0
        for d0, rest, numel, expert in layer:
            w = worlds[expert]
            n = fsdp_padded_shard_numel(d0, rest, w) * w if gathered else numel
            total += round_up(n * width, r)
        largest = max(largest, total)
    return largest


_UNITS: dict[int, tuple[tuple[LocalTensor, ...], tuple[Any, ...], tuple[Any, ...]]] = {}


def _unit_key(t: LocalTensor) -> tuple[object, ...]:
    """What a tensor's states depend on (``_torch_states``), its layer and name aside."""
    return (t.numel, t.d0, t.rest, t.expert, t.trainable, t.grad_numel)


def _grouped(tensors: tuple[LocalTensor, ...]) -> tuple[tuple[Any, ...], tuple[Any, ...]]:
    """``tensors`` as (how many, FSDP group, its tensors) per distinct FSDP unit, and as the
    distinct decoder layers' (d0, rest, numel, expert) shapes; kept per tuple object (the
    stage's tensors are cached). The root unit is never merged with a layer's."""
    hit = _UNITS.get(id(tensors))
    if hit is not None and hit[0] is tensors:
        return hit[1], hit[2]
    if len(_UNITS) > 1024:
        _UNITS.clear()
    by_group: dict[str, list[LocalTensor]] = {}
    by_layer: dict[int, list[tuple[int, int, int, bool]]] = {}
    for t in tensors:
        by_group.setdefault(t.group, []).append(t)
        if t.layer >= 0:
            by_layer.setdefault(t.layer, []).append((t.d0, t.rest, t.numel, t.expert))
    units: dict[tuple[object, ...], list[Any]] = {}
    for group, members in by_group.items():
        key = (group == "root", tuple(map(_unit_key, members)))
        units.setdefault(key, [0, group, tuple(members)])[0] += 1
    layers = tuple(dict.fromkeys(tuple(shapes) for shapes in by_layer.values()))
    out = tuple(tuple(u) for u in units.values()), layers
    _UNITS[id(tensors)] = (tensors, *out)
    return out


def ddp_bucket_bytes(
    tensors: tuple[LocalTensor, ...], plan: ParallelPlan, grad_bytes: int, r: int
) -> int:
    """Bytes of DDP's gradient buckets after the first iteration's rebuild: trainable tensors in
    reverse order, a bucket closed once it reaches its cap (the first 1 MiB, then
    ``bucket_cap_mb``), one flat allocation per bucket (``reducer.cpp``,
    ``compute_bucket_assignment_by_size``)."""
    caps = [DDP_FIRST_BUCKET_BYTES, plan.ddp_bucket_cap_mb * 1024 * 1024]
    total = current = 0
    for t in reversed(tensors):
        if not t.trainable:
            continue
        current += t.numel * grad_bytes
        if current >= caps[0]:
            total += round_up(current, r)
            current = 0
            caps = caps[1:] or caps
    return total + round_up(current, r)


def _deepspeed_states(
    setup: TrainingSetup,
    plan: ParallelPlan,
    tensors: tuple[LocalTensor, ...],
    reg: Regime,
    r: int,
) -> StageStates:
    """DeepSpeed ZeRO 0-3 (``stage_1_and_2.py``, ``stage3.py``): a flat half parameter group,
    an fp32 partition of the master weights and of each optimizer state, half gradients (full
    for stages 0-1, a partition for 2-3) and the IPG bucket of ``reduce_bucket_size``."""
    stage = plan.sharding.zero_stage
    ds = plan.deepspeed
    train = [t for t in tensors if t.trainable]
    numel = sum(t.numel for t in tensors)
    trainable = sum(t.numel for t in train)
    w_dense = shard_world(plan, expert=False)
    if stage == 3:
        part = sum(zero3_partition_numel(t.numel, shard_world(plan, t.expert)) for t in train)
        params = round_up(sum(zero3_partition_numel(t.numel, shard_world(plan, t.expert))
                              for t in tensors) * reg.param_bytes, r)  # fmt: skip
    else:
        flat = deepspeed_flat_padded_numel(trainable, w_dense) if stage else trainable
        part = flat // max(w_dense, 1) if stage else trainable
        params = round_up(
            deepspeed_flat_padded_numel(numel, w_dense) * reg.param_bytes if stage
            else numel * reg.param_bytes, r,
        )  # fmt: skip
    grads = (
        sum(round_up(t.numel * reg.grad_bytes, r) for t in train)
        if stage <= 1
        else round_up(part * reg.grad_bytes, r)
    )
    states: dict[str, int] = {}
    if reg.master_bytes:
        states["master_weights_fp32"] = round_up(part * reg.master_bytes, r)
    opt = sum(
        round_up(s, r)
        for s in optimizer_state_allocations(setup.optimizer, part, (part,), reg.state_bytes)
    )
    states["optimizer_states"] = opt
    comm = {}
    if stage >= 1:
        comm["ipg_bucket"] = round_up(ds.reduce_bucket_size * reg.grad_bytes, r)
    if stage == 3:
        persistent = sum(
            t.numel for t in tensors if t.numel <= ds.stage3_param_persistence_threshold
        )
        comm["stage3_persistent_params"] = round_up(persistent * reg.param_bytes, r)
    # DeepSpeed's step: the fp32 gradient partition, then the fused Adam update in place
    step_temp = round_up(part * 4, r)
    return StageStates(
        params={"partition" if stage == 3 else "flat_half": params},
        grads={"partition" if stage >= 2 else "full_half": grads},
        grads_embedding=sum(
            round_up(t.numel * reg.grad_bytes, r)
            for t in train
            if t.layer < 0 and "embed" in t.name
        )
        if stage <= 1
        else 0,
        grads_head=sum(
            round_up(t.numel * reg.grad_bytes, r)
            for t in train
            if t.layer < 0 and "embed" not in t.name
        )
        if stage <= 1
        else 0,
        grads_persistent=stage >= 2,
        states=states,
        persistent_comm=comm,
        step_temporary=step_temp,
        layer_unsharded_bytes=_largest_layer(tensors, plan, reg.param_bytes, r, gathered=False),
        layer_grad_unsharded_bytes=_largest_layer(tensors, plan, reg.grad_bytes, r, gathered=False),
        root_unsharded_bytes=0,
        trainable_numel=trainable,
    )
