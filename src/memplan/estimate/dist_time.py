"""Communication per rank and step, and the step time of a parallel plan.

Collectives (``memplan.formulas.communication`` for the wire bytes and links):

- data parallel (group ``dp``, stride ``tp * cp``): DDP all-reduces the gradients once per step
  (``no_sync`` during accumulation); ZeRO-1 reduce-scatters the half gradients once per step and
  ZeRO-2 every micro-batch, both all-gather the updated half parameters once per step (seed 002:
  ``2 Psi``); ZeRO-3 and FSDP all-gather the parameters in the forward and again in the backward
  of every micro-batch and reduce-scatter the gradients every micro-batch (``3 Psi``; FSDP
  ``shard-grad-op`` keeps the forward's parameters: ``2 Psi``). Sizes are the padded buffers in
  the dtype that crosses the wire (FSDP's ``param_dtype`` / ``reduce_dtype``).
- tensor parallel (group ``tp``, stride 1): two all-reduces of the ``(B, S, H)`` activations per
  layer in the forward and two in the backward (Megatron's f/g operators); with sequence
  parallelism each becomes an all-gather plus a reduce-scatter of the same bytes.
- context parallel (group ``cp``, stride ``tp``): the ring passes each rank's K and V chunk
  ``cp - 1`` times per layer forward, and K, V and their gradients in the backward.
- expert parallel (group ``ep``): dispatch and combine all-to-alls per MoE layer, forward and
  backward, of ``B * S * top_k`` rows of the hidden size (balanced routing).
- pipeline: one send and one receive of the ``(B, S, H)`` stage output (and its gradient) per
  micro-batch and stage boundary.

Overlap model (stated, not measured): data-parallel collectives overlap the backward compute
(FSDP/ZeRO-3 prefetch their all-gathers), so only what exceeds the backward's compute time is
exposed; tensor-, context-, expert-parallel and pipeline transfers sit on the critical path.
Step time = compute + bubble + exposed communication; compute runs at the matmul efficiency
``DEFAULT_COMPUTE_EFFICIENCY`` of the peak; the bubble is ``(p - 1) / (v * M)`` of compute.
``--mfu X`` overrides the whole model: ``time = model FLOPs / (gpus * peak * X)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from memplan.estimate.dist_states import (
    LocalTensor,
    local_spec,
    stage_layers,
    stage_tensors,
    state_regime,
)
from memplan.estimate.distributed import LocalStep
from memplan.formulas.communication import (
    all_gather_wire_bytes,
    all_reduce_wire_bytes,
    all_to_all_wire_bytes,
    collective_seconds,
    crosses_nodes,
    reduce_scatter_wire_bytes,
)
from memplan.formulas.flops import forward_flops
from memplan.formulas.parallel import (
    deepspeed_flat_padded_numel,
    fsdp_padded_shard_numel,
    maximum,
    pipeline_bubble_fraction,
)
from memplan.formulas.time import DEFAULT_COMPUTE_EFFICIENCY
from memplan.specs.hardware import Gpu
from memplan.specs.model import ModelSpec
from memplan.specs.parallel import ParallelPlan, Sharding
from memplan.specs.training import Checkpointing, TrainingSetup

__all__ = ["Collective", "StepTime", "collectives", "step_time"]

NVLINK_FALLBACK_BYTES_PER_S = 450e9 / 2
"""One direction of NVLink 4 (H100 SXM: 900 GB/s both directions, NVIDIA H100 datasheet), used
when the GPU catalog has no interconnect figure and no ``--nvlink`` was given."""


@dataclass(frozen=True, slots=True)
class Collective:
    """One kind of collective a rank joins per step."""

    parallelism: str
    op: str
    what: str
    buffer_bytes: int
    """Size of one call's buffer (the unsharded size for all-gather / reduce-scatter)."""
    calls: int
    """Calls per optimizer step."""
    group_size: int
    stride: int
    wire_bytes_per_call: float

    def to_dict(self, plan: ParallelPlan, seconds: float) -> dict[str, Any]:
        inter = bool(crosses_nodes(self.group_size, self.stride, plan.gpus_per_node))
        return {
            "parallelism": self.parallelism,
            "op": self.op,
            "what": self.what,
            "bytes": self.buffer_bytes,
            "calls_per_step": self.calls,
            "group_size": self.group_size,
            "link": "network" if inter else "nvlink",
            "wire_bytes_per_step": self.wire_bytes_per_call * self.calls,
            "seconds_per_step": seconds,
        }


def _dp_collectives(
    spec: ModelSpec, setup: TrainingSetup, plan: ParallelPlan, stage: int, m: int
) -> list[Collective]:
    """Data-parallel collectives: the dense tensors over ``dp * cp`` ranks (stride ``tp``),
    the experts over the expert-data-parallel ranks ``dp * cp / ep`` (stride ``tp * ep``)."""
    tensors = stage_tensors(spec, setup, plan, stage)
    n, ep, tp = plan.dp * plan.cp_degree, plan.ep_degree, plan.tp_degree
    dense = [t for t in tensors if not t.expert]
    experts = [t for t in tensors if t.expert]
    out = _dp_family(setup, plan, dense, n, tp, m, "")
    if experts:
        out += _dp_family(setup, plan, experts, n // ep, tp * ep, m, " of the experts")
    return out


def _dp_family(
    setup: TrainingSetup,
    plan: ParallelPlan,
    tensors: list[LocalTensor],
    n: int,
    stride: int,
    m: int,
    label: str,
) -> list[Collective]:
    """One family of tensors (dense or experts) over ``n`` data-parallel ranks."""
    if n == 1 or not tensors:
        return []
    reg = state_regime(setup, plan)
    sharding = plan.sharding
    trainable = sum(t.numel for t in tensors if t.trainable)
    half = 2 if reg.compute_bytes == 2 else reg.param_bytes
    out = []
    if sharding in (Sharding.DDP, Sharding.ZERO_0, Sharding.FSDP_NO_SHARD):
        size = trainable * reg.grad_bytes
        out.append(Collective("dp", "all-reduce", "gradients" + label, size, 1, n, stride,
                              all_reduce_wire_bytes(size, n)))  # fmt: skip
        return out
    if sharding.is_deepspeed:
        stage_ = sharding.zero_stage
        part = deepspeed_flat_padded_numel(sum(t.numel for t in tensors), n)
        grads = deepspeed_flat_padded_numel(trainable, n) * reg.grad_bytes
        reduce_calls = 1 if stage_ == 1 else m
        out.append(Collective("dp", "reduce-scatter", "gradients (half)" + label, grads,
                              reduce_calls, n, stride,
                              reduce_scatter_wire_bytes(grads, n)))  # fmt: skip
        size = part * reg.param_bytes
        calls = 1 if stage_ < 3 else 2 * m
        what = "updated parameters" if stage_ < 3 else "parameters (forward + backward)"
        out.append(Collective("dp", "all-gather", what + label, size, calls, n, stride,
                              all_gather_wire_bytes(size, n)))  # fmt: skip
        return out
    world = min(plan.hybrid_shard_degree, n) if sharding is Sharding.FSDP_HYBRID else n
    padded = sum(fsdp_padded_shard_numel(t.d0, t.rest, world) * world for t in tensors)
    padded_train = sum(
        fsdp_padded_shard_numel(t.d0, t.rest, world) * world for t in tensors if t.trainable
    )
    gather_calls = m if sharding is Sharding.FSDP_SHARD_GRAD_OP else 2 * m
    size = padded * half
    out.append(Collective("dp", "all-gather", "parameters (param_dtype)" + label, size,
                          gather_calls, world, stride,
                          all_gather_wire_bytes(size, world)))  # fmt: skip
    grads = padded_train * (4 if reg.grad_bytes == 4 else reg.grad_bytes)
    out.append(Collective("dp", "reduce-scatter", "gradients (reduce_dtype)" + label, grads, m,
                          world, stride, reduce_scatter_wire_bytes(grads, world)))  # fmt: skip
    if world < n:
        shard = grads // world
        out.append(Collective("dp", "all-reduce", "gradient shards across replicas" + label,
                              shard, m, n // world, stride * world,
                              all_reduce_wire_bytes(shard, n // world)))  # fmt: skip
    return out


def collectives(
    spec: ModelSpec, setup: TrainingSetup, plan: ParallelPlan, local: LocalStep, stage: int
) -> list[Collective]:
    """Every collective pipeline rank ``stage`` joins in one optimizer step."""
    m = plan.resolved_micro_batches(setup.batch)
    out = _dp_collectives(spec, setup, plan, stage, m)
    b, s, h = local.batch, local.seq, spec.hidden_size
    compute = local.plan.regime.compute_bytes
    n_layers = len(stage_layers(spec, plan, stage))
    act = b * s * h * compute
    t = plan.tp_degree
    if t > 1:
        op = "all-gather + reduce-scatter" if plan.sequence_parallel else "all-reduce"
        out.append(Collective("tp", op, "layer activations (f/g)", act, 4 * n_layers * m, t, 1,
                              all_reduce_wire_bytes(act, t)))  # fmt: skip
    c = plan.cp_degree
    if c > 1:
        kv = 2 * b * s * local_spec(spec, plan).n_kv_heads * spec.head_dim * compute
        out.append(Collective("cp", "send/recv (ring)", "K and V chunks (x3 in backward)", kv,
                              4 * n_layers * m, c, t, (c - 1) * kv))  # fmt: skip
    e = plan.ep_degree
    if e > 1 and spec.moe is not None:
        n_moe = sum(1 for i in stage_layers(spec, plan, stage) if spec.is_moe_layer(i))
        rows = b * s * spec.moe.top_k * h * compute
        out.append(Collective("ep", "all-to-all", "routed tokens (dispatch + combine)", rows,
                              4 * n_moe * m, e, t, all_to_all_wire_bytes(rows, e)))  # fmt: skip
    p = plan.pp_degree
    if p > 1:
        stride = t * c * plan.dp
        sends = (stage < p - 1) + (stage > 0)
        out.append(Collective("pp", "send/recv", "stage activations and their gradients", act,
                              sends * m * plan.virtual_stages, 2, stride, act))  # fmt: skip
    return out


@dataclass(frozen=True, slots=True)
class StepTime:
    """One optimizer step of the plan on the slowest rank."""

    compute_s: float
    bubble_s: float
    exposed_comm_s: float
    comm_s: dict[str, float]
    step_s: float
    model_flops: float
    mfu: float
    overlap: str


def _links(plan: ParallelPlan, gpu: Gpu) -> tuple[float, float]:
    nvlink = plan.intra_node_bytes_per_s
    if nvlink is None:
        both = gpu.interconnect_bytes_per_s
        nvlink = both / 2 if both else NVLINK_FALLBACK_BYTES_PER_S
    return nvlink, plan.network_bytes_per_s


def comm_seconds(calls: list[Collective], plan: ParallelPlan, gpu: Gpu) -> list[float]:
    """Seconds per step of each collective on its link."""
    nvlink, network = _links(plan, gpu)
    return [
        collective_seconds(c.wire_bytes_per_call * c.calls, c.group_size, c.stride,
                           plan.gpus_per_node, nvlink, network)
        for c in calls
    ]  # fmt: skip


def step_time(
    spec: ModelSpec,
    setup: TrainingSetup,
    plan: ParallelPlan,
    local: LocalStep,
    gpu: Gpu,
    *,
    dtype: str = "bf16",
    mfu: float | None = None,
    efficiency: float = DEFAULT_COMPUTE_EFFICIENCY,
) -> StepTime:
    """Step time of the slowest pipeline rank (module docstring)."""
    m = plan.resolved_micro_batches(setup.batch)
    forward = forward_flops(spec, batch=setup.batch, seq=setup.seq)
    model_flops = 3.0 * forward * m * plan.dp
    peak = gpu.peak_flops_per_s(dtype)
    if mfu is not None:
        step = model_flops / (plan.world_size * peak * mfu)
        return StepTime(step, 0.0, 0.0, {}, step, model_flops, mfu, "given MFU")
    recompute = setup.checkpointing is Checkpointing.FULL
    per_rank = forward * (3 + recompute) * m / (plan.tp_degree * plan.pp_degree * plan.cp_degree)
    compute = per_rank / (peak * efficiency)
    bubble = compute * pipeline_bubble_fraction(plan.pp_degree, m, plan.virtual_stages)
    worst: dict[str, float] = {}
    for stage in range(plan.pp_degree):
        calls = collectives(spec, setup, plan, local, stage)
        by_kind: dict[str, float] = {}
        for c, sec in zip(calls, comm_seconds(calls, plan, gpu), strict=True):
            by_kind[c.parallelism] = by_kind.get(c.parallelism, 0.0) + sec
        for k, v in by_kind.items():
            worst[k] = max(worst.get(k, 0.0), v)
    backward = compute * 2 / (3 + recompute)
    exposed = maximum(worst.get("dp", 0.0) - backward, 0.0)
    exposed += sum(v for k, v in worst.items() if k != "dp")
    step = compute + bubble + exposed
    return StepTime(
        compute, bubble, exposed, worst, step, model_flops,
        model_flops / (step * plan.world_size * peak),
        "data-parallel collectives overlap the backward; tp/cp/ep/pp transfers are exposed",
    )  # fmt: skip
