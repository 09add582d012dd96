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
Step time = compute + bubble + exposed communication + offload transfers; compute runs at the
matmul efficiency ``DEFAULT_COMPUTE_EFFICIENCY`` of the peak; the bubble is ``(p - 1) / (v * M)``
of compute; offloaded states cross PCIe each step (:func:`offload_terms`), not overlapped.
``--mfu X`` overrides the whole model: ``time = model FLOPs / (gpus * peak * X)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from memplan.estimate.dist_states import (
    LocalTensor,
    StageStates,
    compute_width,
    local_spec,
    stage_layers,
    stage_states,
    stage_tensors,
    state_regime,
    static_setup,
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
from memplan.specs.parallel import Offload, ParallelPlan, Sharding
from memplan.specs.training import Checkpointing, TrainingSetup

__all__ = [
    "Collective",
    "CollectiveTerm",
    "StepNumbers",
    "StepTime",
    "collective_terms",
    "collectives",
    "dp_terms",
    "links",
    "model_parallel_terms",
    "offload_seconds",
    "offload_terms",
    "pcie_bytes_per_s",
    "step_numbers",
    "step_time",
]

Num = Any
"""A number or a NumPy array of them (a plan grid)."""

PCIE_FALLBACK_BYTES_PER_S = 64e9
"""PCIe 4.0 x16, both directions (16 GT/s x 16 lanes, 128b/130b: 31.5 GB/s each way, about
64 GB/s total; PCI-SIG), used when the GPU catalog has no PCIe figure."""

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


@dataclass(frozen=True, slots=True)
class CollectiveTerm:
    """A collective whose calls per step are ``fixed_calls + calls_per_micro_batch * M``; plain
    numbers (ints, floats or arrays over plans: the plan search evaluates them on a grid)."""

    parallelism: str
    op: str
    what: str
    buffer_bytes: Num
    fixed_calls: Num
    calls_per_micro_batch: Num
    group_size: Num
    stride: Num
    wire_bytes_per_call: Num

    def calls(self, micro_batches: Num) -> Num:
        return self.fixed_calls + self.calls_per_micro_batch * micro_batches

    def seconds(self, micro_batches: Num, gpus_per_node: Num, nvlink: Num, network: Num) -> Num:
        """Seconds per step on the group's slowest link."""
        wire = self.wire_bytes_per_call * self.calls(micro_batches)
        return collective_seconds(wire, self.group_size, self.stride, gpus_per_node, nvlink,
                                  network)  # fmt: skip

    def at(self, micro_batches: int) -> Collective:
        return Collective(self.parallelism, self.op, self.what, self.buffer_bytes,
                          self.calls(micro_batches), self.group_size, self.stride,
                          self.wire_bytes_per_call)  # fmt: skip


def dp_terms(
    spec: ModelSpec, setup: TrainingSetup, plan: ParallelPlan, stage: int
) -> list[CollectiveTerm]:
    """Data-parallel collectives: the dense tensors over ``dp * cp`` ranks (stride ``tp``),
    the experts over the expert-data-parallel ranks ``dp * cp / ep`` (stride ``tp * ep``).
    They do not depend on the micro-batch or the sequence: cached per plan (as the states)."""
    key = static_setup(setup)
    return list(_dp_terms(spec, key, plan, stage))


@lru_cache(maxsize=4096)
def _dp_terms(
    spec: ModelSpec, setup: TrainingSetup, plan: ParallelPlan, stage: int
) -> tuple[CollectiveTerm, ...]:
    tensors = stage_tensors(spec, setup, plan, stage)
    n, ep, tp = plan.dp * plan.cp_degree, plan.ep_degree, plan.tp_degree
    dense = [t for t in tensors if not t.expert]
    experts = [t for t in tensors if t.expert]
    out = _dp_family(setup, plan, dense, n, tp, "")
    if experts:
        out += _dp_family(setup, plan, experts, n // ep, tp * ep, " of the experts")
    return tuple(out)


def _dp_family(
    setup: TrainingSetup,
    plan: ParallelPlan,
    tensors: list[LocalTensor],
    n: int,
    stride: int,
    label: str,
) -> list[CollectiveTerm]:
    """One family of tensors (dense or experts) over ``n`` data-parallel ranks."""
    if n == 1 or not tensors:
        return []
    reg = state_regime(setup, plan)
    sharding = plan.sharding
    trainable = sum(t.numel for t in tensors if t.trainable)
    gathered_width = compute_width(setup, plan, reg)  # FSDP2 gathers in param_dtype
    out = []
    if sharding in (Sharding.DDP, Sharding.ZERO_0, Sharding.FSDP_NO_SHARD):
        size = trainable * reg.grad_bytes
        out.append(CollectiveTerm("dp", "all-reduce", "gradients" + label, size, 1, 0, n, stride,
                                  all_reduce_wire_bytes(size, n)))  # fmt: skip
        return out
    if sharding.is_deepspeed:
        stage_ = sharding.zero_stage
        part = deepspeed_flat_padded_numel(sum(t.numel for t in tensors), n)
        grads = deepspeed_flat_padded_numel(trainable, n) * reg.grad_bytes
        once = int(stage_ == 1)
        out.append(CollectiveTerm("dp", "reduce-scatter", "gradients (half)" + label, grads,
                                  once, 1 - once, n, stride,
                                  reduce_scatter_wire_bytes(grads, n)))  # fmt: skip
        size = part * reg.param_bytes
        fixed, per_micro = (1, 0) if stage_ < 3 else (0, 2)
        what = "updated parameters" if stage_ < 3 else "parameters (forward + backward)"
        out.append(CollectiveTerm("dp", "all-gather", what + label, size, fixed, per_micro, n,
                                  stride, all_gather_wire_bytes(size, n)))  # fmt: skip
        return out
    world = min(plan.hybrid_shard_degree, n) if sharding is Sharding.FSDP_HYBRID else n
    shapes: dict[tuple[int, int], int] = {}  # the layers repeat their shapes: each once
    for t in tensors:
        if (t.d0, t.rest) not in shapes:
            shapes[t.d0, t.rest] = fsdp_padded_shard_numel(t.d0, t.rest, world) * world
    padded = sum(shapes[t.d0, t.rest] for t in tensors)
    padded_train = sum(shapes[t.d0, t.rest] for t in tensors if t.trainable)
    gathers = 1 if sharding is Sharding.FSDP_SHARD_GRAD_OP else 2
    size = padded * gathered_width
    out.append(CollectiveTerm("dp", "all-gather", "parameters (param_dtype)" + label, size,
                              0, gathers, world, stride,
                              all_gather_wire_bytes(size, world)))  # fmt: skip
    grads = padded_train * (4 if reg.grad_bytes == 4 else reg.grad_bytes)
    out.append(CollectiveTerm("dp", "reduce-scatter", "gradients (reduce_dtype)" + label, grads,
                              0, 1, world, stride,
                              reduce_scatter_wire_bytes(grads, world)))  # fmt: skip
    if world < n:
        shard = grads // world
        out.append(CollectiveTerm("dp", "all-reduce", "gradient shards across replicas" + label,
                                  shard, 0, 1, n // world, stride * world,
                                  all_reduce_wire_bytes(shard, n // world)))  # fmt: skip
    return out


def model_parallel_terms(
    *,
    act_bytes: Num,
    kv_bytes: Num,
    routed_bytes: Num,
    tp: Num,
    cp: Num,
    ep: Num,
    dp: Num,
    stage_layers: Num,
    moe_layers: Num,
    sends: Num,
    virtual: Num,
    sequence_parallel: Num = 0,
) -> tuple[CollectiveTerm, ...]:
    """Tensor-, context-, expert-parallel and pipeline collectives of one pipeline rank (module
    docstring); a degree of 1 moves no bytes. ``act_bytes``: one micro-batch's (B, S/cp, H)
    activations; ``kv_bytes``: its K and V chunk; ``routed_bytes``: its routed rows (B S k, H);
    ``sends``: stage boundaries the rank sends across (0 without pipeline stages)."""
    op = "all-gather + reduce-scatter" if sequence_parallel else "all-reduce"
    return (
        CollectiveTerm("tp", op, "layer activations (f/g)", act_bytes, 0, 4 * stage_layers,
                       tp, 1, all_reduce_wire_bytes(act_bytes, tp)),
        CollectiveTerm("cp", "send/recv (ring)", "K and V chunks (x3 in backward)", kv_bytes, 0,
                       4 * stage_layers, cp, tp, (cp - 1) * kv_bytes),
        CollectiveTerm("ep", "all-to-all", "routed tokens (dispatch + combine)", routed_bytes, 0,
                       4 * moe_layers, ep, tp, all_to_all_wire_bytes(routed_bytes, ep)),
        CollectiveTerm("pp", "send/recv", "stage activations and their gradients", act_bytes, 0,
                       sends * virtual, 2, tp * cp * dp, act_bytes),
    )  # fmt: skip


def collective_terms(
    spec: ModelSpec, setup: TrainingSetup, plan: ParallelPlan, local: LocalStep, stage: int
) -> list[CollectiveTerm]:
    """Every collective pipeline rank ``stage`` joins, per step as a function of M."""
    out = dp_terms(spec, setup, plan, stage)
    b, s, h = local.batch, local.seq, spec.hidden_size
    compute = local.plan.regime.compute_bytes
    layers = stage_layers(spec, plan, stage)
    p = plan.pp_degree
    moe = spec.moe is not None
    terms = model_parallel_terms(
        act_bytes=b * s * h * compute,
        kv_bytes=2 * b * s * local_spec(spec, plan).n_kv_heads * spec.head_dim * compute,
        routed_bytes=b * s * spec.moe.top_k * h * compute if spec.moe is not None else 0,
        tp=plan.tp_degree,
        cp=plan.cp_degree,
        ep=plan.ep_degree,
        dp=plan.dp,
        stage_layers=len(layers),
        moe_layers=sum(1 for i in layers if spec.is_moe_layer(i)),
        sends=(stage < p - 1) + (stage > 0),
        virtual=plan.virtual_stages,
        sequence_parallel=plan.sequence_parallel,
    )
    present = (plan.tp_degree > 1, plan.cp_degree > 1, plan.ep_degree > 1 and moe, p > 1)
    return out + [t for t, keep in zip(terms, present, strict=True) if keep]


def collectives(
    spec: ModelSpec, setup: TrainingSetup, plan: ParallelPlan, local: LocalStep, stage: int
) -> list[Collective]:
    """Every collective pipeline rank ``stage`` joins in one optimizer step."""
    m = plan.resolved_micro_batches(setup.batch)
    return [t.at(m) for t in collective_terms(spec, setup, plan, local, stage)]


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
    offload_s: float = 0.0
    """Host transfers of offloaded states (:func:`offload_seconds`)."""


OVERLAP = "data-parallel collectives overlap the backward; tp/cp/ep/pp transfers are exposed"


def links(plan: ParallelPlan, gpu: Gpu) -> tuple[float, float]:
    """(NVLink, network) bandwidth per GPU and direction for ``plan`` on ``gpu``."""
    nvlink = plan.intra_node_bytes_per_s
    if nvlink is None:
        both = gpu.interconnect_bytes_per_s
        nvlink = both / 2 if both else NVLINK_FALLBACK_BYTES_PER_S
    return nvlink, plan.network_bytes_per_s


def comm_seconds(calls: list[Collective], plan: ParallelPlan, gpu: Gpu) -> list[float]:
    """Seconds per step of each collective on its link."""
    nvlink, network = links(plan, gpu)
    return [
        collective_seconds(c.wire_bytes_per_call * c.calls, c.group_size, c.stride,
                           plan.gpus_per_node, nvlink, network)
        for c in calls
    ]  # fmt: skip


@dataclass(frozen=True, slots=True)
class StepNumbers:
    """The parts of a step time (numbers or arrays over plans)."""

    compute_s: Num
    bubble_s: Num
    exposed_comm_s: Num
    offload_s: Num
    step_s: Num
    model_flops: Num
    mfu: Num


def step_numbers(
    *,
    forward_flops: Num,
    recompute: Num,
    micro_batches: Num,
    tp: Num,
    pp: Num,
    cp: Num,
    dp: Num,
    world: Num,
    virtual: Num,
    peak_flops_per_s: Num,
    efficiency: Num,
    dp_s: Num,
    other_s: tuple[Num, ...],
    offload_s: Num = 0.0,
) -> StepNumbers:
    """Step time = compute + bubble + exposed communication + offload transfers (module
    docstring).

    ``forward_flops``: one micro-batch's forward (a float); ``recompute``: 1 with full
    checkpointing; ``dp_s``: the slowest stage's data-parallel seconds; ``other_s``: the
    slowest stage's tp, cp, ep and pp seconds, in that order."""
    m = micro_batches
    model_flops = 3.0 * forward_flops * m * dp
    per_rank = forward_flops * (3 + recompute) * m / (tp * pp * cp)
    compute = per_rank / (peak_flops_per_s * efficiency)
    bubble = compute * pipeline_bubble_fraction(pp, m, virtual)
    backward = compute * 2 / (3 + recompute)
    exposed = maximum(dp_s - backward, 0.0)
    others = 0
    for seconds in other_s:
        others = others + seconds
    exposed = exposed + others
    step = compute + bubble + exposed + offload_s
    mfu = model_flops / (step * world * peak_flops_per_s)
    return StepNumbers(compute, bubble, exposed, offload_s, step, model_flops, mfu)


def offload_terms(states: StageStates) -> tuple[int, int, int, int]:
    """Bytes an offloading rank moves over PCIe per step: (to the host once, to the host per
    micro-batch, to the GPU once, to the GPU per micro-batch).

    Gradient partitions kept on the host (ZeRO-2/3, FSDP2's ``CPUOffloadPolicy``) go down once
    per micro-batch, else (ZeRO-1) the half gradient partition once per step; parameters kept
    on the host come up for the forward and the backward of every micro-batch; DeepSpeed's
    updated fp32 master partition comes back as half parameters once per step (the ZeRO-Offload
    paper's fp16 gradients down, fp16 parameters up: Ren et al. 2021, section 4.1). Padded
    partitions and shards: the same on every data-parallel rank."""
    host = states.offloaded
    grads = sum(v for k, v in host.items() if k.startswith("gradients/"))
    params = sum(v for k, v in host.items() if k.startswith("parameters/"))
    master = host.get("optimizer/master_weights_fp32", 0)
    once = 0 if grads else host.get("optimizer/step_fp32_gradients", 0) // 2
    return once, grads, master // 2, 2 * params


def offload_seconds(
    terms: tuple[Num, Num, Num, Num], micro_batches: Num, pcie_bytes_per_s: Num
) -> Num:
    """Seconds of the host transfers (:func:`offload_terms`): PCIe is full duplex, so the
    larger direction counts, at half the link's two-way figure; not overlapped with compute
    (the CPU optimizer's own time is not modelled)."""
    down_once, down_each, up_once, up_each = terms
    down = down_once + down_each * micro_batches
    up = up_once + up_each * micro_batches
    return maximum(down, up) / (pcie_bytes_per_s / 2)


def pcie_bytes_per_s(gpu: Gpu) -> float:
    """The GPU's host link (both directions), or :data:`PCIE_FALLBACK_BYTES_PER_S`."""
    return gpu.pcie_bytes_per_s or PCIE_FALLBACK_BYTES_PER_S


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
    forward = float(forward_flops(spec, batch=setup.batch, seq=setup.seq))
    peak = gpu.peak_flops_per_s(dtype)
    if mfu is not None:
        model_flops = 3.0 * forward * m * plan.dp
        step = model_flops / (plan.world_size * peak * mfu)
        return StepTime(step, 0.0, 0.0, {}, step, model_flops, mfu, "given MFU")
    nvlink, network = links(plan, gpu)
    worst: dict[str, float] = {}
    offload = 0.0
    for stage in range(plan.pp_degree):
        if plan.offload is not Offload.NONE:  # the same on every data-parallel rank
            terms = offload_terms(stage_states(spec, setup, plan, stage, 0))
            offload = max(offload, offload_seconds(terms, m, pcie_bytes_per_s(gpu)))
        by_kind: dict[str, float] = {}
        for term in collective_terms(spec, setup, plan, local, stage):
            sec = term.seconds(m, plan.gpus_per_node, nvlink, network)
            by_kind[term.parallelism] = by_kind.get(term.parallelism, 0.0) + sec
        for k, v in by_kind.items():
            worst[k] = max(worst.get(k, 0.0), v)
    t = step_numbers(
        forward_flops=forward,
        recompute=int(setup.checkpointing is Checkpointing.FULL),
        micro_batches=m,
        tp=plan.tp_degree,
        pp=plan.pp_degree,
        cp=plan.cp_degree,
        dp=plan.dp,
        world=plan.world_size,
        virtual=plan.virtual_stages,
        peak_flops_per_s=peak,
        efficiency=efficiency,
        dp_s=worst.get("dp", 0.0),
        other_s=tuple(v for k, v in worst.items() if k != "dp"),
        offload_s=offload,
    )
    return StepTime(t.compute_s, t.bubble_s, t.exposed_comm_s, worst, t.step_s, t.model_flops,
                    t.mfu, OVERLAP, t.offload_s)  # fmt: skip
