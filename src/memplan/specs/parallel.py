"""``ParallelPlan``: how one training job is laid out over many GPUs.

A plan names the cluster (``nodes x gpus_per_node``), the parallel degrees (data ``dp``, tensor
``tp``, pipeline ``pp``, context ``cp``, expert ``ep``), how the data-parallel ranks shard the
model states (plain DDP, DeepSpeed ZeRO 0-3, PyTorch FSDP2), the pipeline schedule, gradient
accumulation, offload, and the network. The analytic engine (``memplan.estimate.distributed``)
turns ``(ModelSpec, TrainingSetup, ParallelPlan)`` into one report per distinct rank group; the
trace engine runs the same plan under a fake process group.

Conventions (Megatron-LM and torchtitan use the same): ``gpus = dp * tp * pp * cp``; ``dp`` is
what remains when it is not given; expert parallelism ``ep`` splits the experts over ranks that
are data (and context) parallel for the dense layers, so it divides ``dp * cp`` and does not
enter the product. Tensor parallelism stays inside a node when ``tp <= gpus_per_node``.

Validation that needs only the plan happens in ``__post_init__``; what needs the model and the
setup (heads, layers, experts, the global batch) in :func:`validate_plan`. Every error names
each factor, e.g. ``dp(2) * tp(4) * pp(2) * cp(1) = 16 != gpus(8)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import StrEnum

from memplan.errors import SetupError
from memplan.specs.model import ModelSpec

__all__ = [
    "DDP_BUCKET_CAP_MB",
    "DDP_FIRST_BUCKET_BYTES",
    "DEFAULT_GPUS_PER_NODE",
    "DEFAULT_NETWORK_BYTES_PER_S",
    "DeepSpeedConfig",
    "Offload",
    "OffloadDevice",
    "ParallelPlan",
    "Schedule",
    "Sharding",
    "validate_plan",
    "validate_plan_batch",
    "validate_plan_model",
]

MAX_DEGREE = 2**20
"""Largest degree or GPU count accepted (about a million GPUs): beyond any real cluster."""

DEFAULT_GPUS_PER_NODE = 8
"""GPUs per node when only ``--gpus`` is given: an HGX/DGX board (8 GPUs on one NVSwitch)."""

DEFAULT_NETWORK_BYTES_PER_S = 400e9 / 8
"""Network bandwidth per GPU across nodes, one direction: 400 Gb/s, one InfiniBand NDR
ConnectX-7 adapter per GPU as in NVIDIA's DGX H100 reference (DGX H100 user guide, "8x
single-port ConnectX-7 400Gb/s InfiniBand"). Override with ``--network``."""

DDP_BUCKET_CAP_MB = 25
"""``DistributedDataParallel(bucket_cap_mb=None)`` falls back to 25 MiB
(``torch/nn/parallel/distributed.py``: ``bucket_cap_mb = 25``; ``bucket_bytes_cap =
int(bucket_cap_mb * 1024 * 1024)``)."""

DDP_FIRST_BUCKET_BYTES = 1024 * 1024
"""DDP's first bucket (the last parameters, reduced first) is capped at 1 MiB
(``torch.distributed._DEFAULT_FIRST_BUCKET_BYTES``)."""


class Sharding(StrEnum):
    """How the data-parallel ranks hold parameters, gradients and optimizer states."""

    DDP = "ddp"
    """``torch.nn.parallel.DistributedDataParallel``: everything replicated, gradient buckets."""
    ZERO_0 = "zero0"
    """DeepSpeed stage 0: its engine without partitioning."""
    ZERO_1 = "zero1"
    """DeepSpeed stage 1: optimizer states (and fp32 master weights) partitioned."""
    ZERO_2 = "zero2"
    """DeepSpeed stage 2: + gradients partitioned."""
    ZERO_3 = "zero3"
    """DeepSpeed stage 3: + parameters partitioned (gathered per module on use)."""
    FSDP_FULL = "fsdp-full"
    """FSDP2 ``fully_shard`` per decoder layer + root, ``reshard_after_forward=True``."""
    FSDP_SHARD_GRAD_OP = "fsdp-shard-grad-op"
    """FSDP2 with ``reshard_after_forward=False``: unsharded parameters kept from forward to
    backward (ZeRO-2-like)."""
    FSDP_HYBRID = "fsdp-hybrid"
    """FSDP2 on a 2-D mesh (HSDP): sharded within ``hsdp_shard_degree`` ranks, replicated
    across the groups."""
    FSDP_NO_SHARD = "fsdp-no-shard"
    """FSDP2 with a shard degree of 1: DDP semantics through FSDP's machinery."""

    @property
    def is_deepspeed(self) -> bool:
        return self in (Sharding.ZERO_0, Sharding.ZERO_1, Sharding.ZERO_2, Sharding.ZERO_3)

    @property
    def is_fsdp(self) -> bool:
        return str.startswith(self, "fsdp")  # the member is its value (``.value`` is slower)

    @property
    def zero_stage(self) -> int:
        """DeepSpeed's stage (0-3); -1 for DDP and FSDP."""
        return int(self.value[-1]) if self.is_deepspeed else -1


class Schedule(StrEnum):
    """Pipeline schedule (``torch.distributed.pipelining``; Narayanan et al. 2021)."""

    ONE_F_ONE_B = "1f1b"
    """PipeDream-Flush 1F1B: stage ``i`` of ``p`` holds at most ``p - i`` micro-batches."""
    INTERLEAVED = "interleaved"
    """Interleaved 1F1B with ``virtual_stages`` model chunks per rank (Megatron-LM)."""
    GPIPE = "gpipe"
    """GPipe: all forwards, then all backwards: every stage holds all micro-batches."""


class Offload(StrEnum):
    """What leaves the GPU for host memory (or NVMe)."""

    NONE = "none"
    OPTIMIZER = "optimizer"
    """ZeRO-Offload: fp32 master weights, optimizer states and the step on the host."""
    PARAMS = "params"
    """ZeRO-Infinity / FSDP2 ``CPUOffloadPolicy``: sharded parameters (and gradients and
    optimizer states) on the host, gathered to the GPU per layer."""


class OffloadDevice(StrEnum):
    CPU = "cpu"
    NVME = "nvme"
    """ZeRO-Infinity only (DeepSpeed's ``offload_param/optimizer.device = "nvme"``)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class DeepSpeedConfig:
    """The ``zero_optimization`` sizes that decide DeepSpeed's buffers, with its defaults.

    Defaults are DeepSpeed 0.19.8's (``deepspeed/runtime/zero/config.py``,
    ``DeepSpeedZeroConfig``), counted in elements, not bytes.
    """

    reduce_bucket_size: int = 500_000_000
    """``reduce_bucket_size = pp_int(5e8)``: the IPG gradient bucket (elements)."""
    allgather_bucket_size: int = 500_000_000
    """``allgather_bucket_size = pp_int(5e8)``: stages 1-2 gather updated parameters in
    pieces of this many elements."""
    stage3_prefetch_bucket_size: int = 50_000_000
    """``prefetch_bucket_size = pp_int(5e7)`` (alias ``stage3_prefetch_bucket_size``)."""
    stage3_param_persistence_threshold: int = 100_000
    """``param_persistence_threshold = pp_int(1e5)``: smaller parameters stay gathered."""
    stage3_max_live_parameters: int = 1_000_000_000
    """``max_live_parameters = pp_int(1e9)``: gathered parameters allowed at once."""
    stage3_max_reuse_distance: int = 1_000_000_000
    """``max_reuse_distance = pp_int(1e9)``."""
    contiguous_gradients: bool = True
    """``contiguous_gradients = True``: gradients copied into the IPG buffer as they come."""
    overlap_comm: bool | None = None
    """``overlap_comm = None``: DeepSpeed turns it on for stage 3 only (``overlap_comm_valid``)."""

    def __post_init__(self) -> None:
        for name in (
            "reduce_bucket_size",
            "allgather_bucket_size",
            "stage3_prefetch_bucket_size",
            "stage3_param_persistence_threshold",
            "stage3_max_live_parameters",
            "stage3_max_reuse_distance",
        ):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 0 or value > 2**50:
                raise SetupError(f"DeepSpeed {name} must be an integer in [0, 2**50], got {value}")
        if self.reduce_bucket_size == 0:
            raise SetupError("DeepSpeed reduce_bucket_size must be positive (DeepSpeed: gt=0)")

    def overlap(self, stage: int) -> bool:
        """``overlap_comm`` as DeepSpeed resolves it for ``stage``."""
        return self.overlap_comm if self.overlap_comm is not None else stage == 3


@dataclass(frozen=True, slots=True, kw_only=True)
class ParallelPlan:
    """One layout of a training job over ``nodes x gpus_per_node`` GPUs."""

    nodes: int = 1
    """Nodes in the cluster."""
    gpus_per_node: int = 1
    """GPUs per node (one NVLink/NVSwitch domain)."""
    tp_degree: int = 1
    """Tensor parallelism (Megatron column/row split; DTensor ``parallelize_module``)."""
    pp_degree: int = 1
    """Pipeline stages (``torch.distributed.pipelining``)."""
    cp_degree: int = 1
    """Context parallelism: the sequence split over ``cp`` ranks (ring attention)."""
    ep_degree: int = 1
    """Expert parallelism: the routed experts split over ``ep`` ranks (divides ``dp * cp``)."""
    dp_degree: int | None = None
    """Data parallelism; None: what remains, ``gpus / (tp * pp * cp)``. Always an int after
    construction."""
    sequence_parallel: bool = False
    """Megatron sequence parallelism with TP: norms and dropouts split over the sequence."""
    sharding: Sharding = Sharding.DDP
    """How data-parallel ranks hold the model states."""
    hsdp_shard_degree: int | None = None
    """FSDP hybrid: ranks one shard group spans; None: the data-parallel ranks of one node."""
    ddp_bucket_cap_mb: int = DDP_BUCKET_CAP_MB
    """DDP's ``bucket_cap_mb`` (MiB)."""
    gradient_as_bucket_view: bool = False
    """DDP's ``gradient_as_bucket_view``: ``.grad`` tensors are views into the buckets."""
    deepspeed: DeepSpeedConfig = field(default_factory=DeepSpeedConfig)
    """DeepSpeed ``zero_optimization`` sizes (with ``--zero``)."""
    schedule: Schedule = Schedule.ONE_F_ONE_B
    """Pipeline schedule (with ``pp > 1``)."""
    virtual_stages: int = 1
    """Model chunks per pipeline rank (``interleaved`` needs >= 2)."""
    micro_batches: int | None = None
    """Micro-batches per optimizer step and pipeline (gradient accumulation steps); None: from
    ``global_batch``, else ``pp`` (the fewest that fill a pipeline)."""
    global_batch: int | None = None
    """Sequences per optimizer step over all data-parallel ranks; None: from ``micro_batches``."""
    offload: Offload = Offload.NONE
    """What moves to host memory or NVMe."""
    offload_device: OffloadDevice = OffloadDevice.CPU
    """Where offloaded states live."""
    network_bytes_per_s: float = DEFAULT_NETWORK_BYTES_PER_S
    """Network bandwidth per GPU across nodes, one direction (bytes/s)."""
    intra_node_bytes_per_s: float | None = None
    """GPU-to-GPU bandwidth inside a node, one direction; None: the GPU catalog's NVLink."""

    def __post_init__(self) -> None:
        _check_counts(self)
        _check_choices(self)
        product = self.tp_degree * self.pp_degree * self.cp_degree
        world = self.world_size
        if self.dp_degree is None:
            if world % product:
                raise SetupError(
                    f"gpus({world}) is not divisible by tp({self.tp_degree}) * "
                    f"pp({self.pp_degree}) * cp({self.cp_degree}) = {product}: change the "
                    "degrees or the GPU count"
                )
            object.__setattr__(self, "dp_degree", world // product)
        elif self.dp_degree * product != world:
            raise SetupError(
                f"dp({self.dp_degree}) * tp({self.tp_degree}) * pp({self.pp_degree}) * "
                f"cp({self.cp_degree}) = {self.dp_degree * product} != gpus({world})"
            )
        dp = self.dp
        if (dp * self.cp_degree) % self.ep_degree:
            raise SetupError(
                f"ep({self.ep_degree}) must divide dp({dp}) * cp({self.cp_degree}) = "
                f"{dp * self.cp_degree}: expert parallelism splits data-parallel ranks"
            )
        if self.sharding is Sharding.FSDP_HYBRID:
            shard = self.hybrid_shard_degree
            if dp % shard:
                raise SetupError(
                    f"FSDP hybrid: the shard degree ({shard}) must divide dp({dp}); give "
                    "--hsdp-shard N"
                )
            if shard % self.ep_degree:
                raise SetupError(
                    f"FSDP hybrid: ep({self.ep_degree}) must divide the shard degree ({shard}): "
                    "the experts are sharded over the shard group's expert-data-parallel ranks"
                )
        elif self.hsdp_shard_degree is not None:
            raise SetupError("--hsdp-shard applies to --fsdp hybrid only")
        if self.global_batch is not None and self.micro_batches is not None:
            raise SetupError("give --global-batch or --micro-batches, not both")

    # Derived sizes --------------------------------------------------------------------------
    @property
    def world_size(self) -> int:
        """All GPUs: ``nodes * gpus_per_node``."""
        return self.nodes * self.gpus_per_node

    @property
    def dp(self) -> int:
        """The data-parallel degree as an int (``dp_degree`` after resolution)."""
        assert self.dp_degree is not None  # resolved in __post_init__
        return self.dp_degree

    @property
    def hybrid_shard_degree(self) -> int:
        """FSDP hybrid's shard group: given, else the data-parallel ranks inside one node."""
        if self.hsdp_shard_degree is not None:
            return self.hsdp_shard_degree
        per_node = max(1, self.gpus_per_node // (self.tp_degree * self.cp_degree))
        return math.gcd(per_node, self.dp)

    @property
    def is_single_gpu(self) -> bool:
        """One GPU, nothing sharded: the single-GPU estimate answers."""
        return self.world_size == 1 and self.offload is Offload.NONE

    def resolved_micro_batches(self, micro_batch: int) -> int:
        """Micro-batches per step for a per-GPU ``micro_batch`` (gradient accumulation)."""
        if self.micro_batches is not None:
            return self.micro_batches
        if self.global_batch is not None:
            return self.global_batch // (self.dp * micro_batch)
        return self.pp_degree

    def global_batch_size(self, micro_batch: int) -> int:
        """Sequences per optimizer step: ``micro_batch * micro_batches * dp``."""
        return micro_batch * self.resolved_micro_batches(micro_batch) * self.dp


def _check_counts(plan: ParallelPlan) -> None:
    for name in (
        "nodes",
        "gpus_per_node",
        "tp_degree",
        "pp_degree",
        "cp_degree",
        "ep_degree",
        "virtual_stages",
        "ddp_bucket_cap_mb",
    ):
        value = getattr(plan, name)
        if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= MAX_DEGREE:
            flag = name.replace("_degree", "").replace("_", "-")
            raise SetupError(f"--{flag} must be an integer in [1, 2**20], got {value!r}")
    if plan.world_size > MAX_DEGREE:
        raise SetupError(f"{plan.world_size} GPUs is beyond any real cluster (at most 2**20)")
    for name in ("dp_degree", "hsdp_shard_degree", "micro_batches", "global_batch"):
        value = getattr(plan, name)
        if value is not None and (not isinstance(value, int) or not 1 <= value <= 2**40):
            flag = name.replace("_degree", "").replace("_", "-")
            raise SetupError(f"--{flag} must be a positive integer, got {value!r}")
    for name in ("network_bytes_per_s", "intra_node_bytes_per_s"):
        value = getattr(plan, name)
        if value is not None and not (math.isfinite(value) and 0 < value < 1e16):
            raise SetupError(f"{name} must be a positive bandwidth, got {value}")


def _check_choices(plan: ParallelPlan) -> None:
    if plan.sequence_parallel and plan.tp_degree == 1:
        raise SetupError(
            "--sp (sequence parallelism) splits along tensor parallelism: give --tp > 1"
        )
    if plan.virtual_stages > 1 and plan.schedule is not Schedule.INTERLEAVED:
        raise SetupError("--virtual-stages > 1 needs --schedule interleaved")
    if plan.schedule is Schedule.INTERLEAVED and plan.virtual_stages < 2:
        raise SetupError(
            "--schedule interleaved needs --virtual-stages V >= 2 model chunks per rank"
        )
    if plan.schedule is Schedule.INTERLEAVED and plan.pp_degree == 1:
        raise SetupError("--schedule interleaved needs --pp > 1")
    stage = plan.sharding.zero_stage
    if plan.pp_degree > 1 and stage >= 2:
        raise SetupError(
            f"DeepSpeed's pipeline engine runs ZeRO stage 0 or 1 only, not --zero {stage} with "
            f"pp({plan.pp_degree}) (deepspeed/runtime/pipe/engine.py)"
        )
    if plan.offload is not Offload.NONE:
        if plan.sharding in (Sharding.DDP, Sharding.ZERO_0):
            raise SetupError(
                "offload needs sharded states: use --zero 1/2/3 (ZeRO-Offload) or --fsdp full"
            )
        if plan.sharding.is_fsdp and plan.offload is Offload.OPTIMIZER:
            raise SetupError(
                "FSDP2's CPUOffloadPolicy moves parameters, gradients and optimizer states "
                "together: use --offload params"
            )
        if plan.offload is Offload.PARAMS and stage in (1, 2):
            raise SetupError(
                f"--offload params needs partitioned parameters: --zero 3, not --zero {stage}"
            )
        if plan.offload_device is OffloadDevice.NVME and not plan.sharding.is_deepspeed:
            raise SetupError("NVMe offload is DeepSpeed's (ZeRO-Infinity): use --zero 3")
    elif plan.offload_device is not OffloadDevice.CPU:
        raise SetupError("--offload-device needs --offload optimizer or params")


def validate_plan(spec: ModelSpec, plan: ParallelPlan, *, micro_batch: int, seq: int) -> None:
    """Reject a plan the model or the batch cannot take, naming every factor."""
    validate_plan_model(spec, plan)
    validate_plan_batch(plan, micro_batch=micro_batch, seq=seq)


def validate_plan_model(spec: ModelSpec, plan: ParallelPlan) -> None:
    """:func:`validate_plan`'s checks of the model (heads, widths, layers, experts): a
    constant per (model, plan), so a caller estimating many batches may make them once."""
    tp, pp = plan.tp_degree, plan.pp_degree
    name = spec.name
    if spec.n_heads % tp:
        raise SetupError(f"tp({tp}) must divide {name}'s attention heads ({spec.n_heads})")
    kv = spec.n_kv_heads
    if kv % tp and tp % kv:
        raise SetupError(
            f"tp({tp}) must divide {name}'s KV heads ({kv}) or be a multiple of them (Megatron "
            f"then replicates each KV head tp/{kv} times)"
        )
    widths = {"intermediate_size": spec.intermediate_size}
    if spec.moe is not None:
        widths["expert intermediate size"] = spec.moe.expert_intermediate_size
        if spec.moe.shared_intermediate_size:
            widths["shared expert intermediate size"] = spec.moe.shared_intermediate_size
    for what, width in widths.items():
        if width % tp:
            raise SetupError(f"tp({tp}) must divide {name}'s {what} ({width})")
    chunks = pp * plan.virtual_stages
    if chunks > spec.n_layers:
        what = (
            f"pp({pp}) * virtual stages({plan.virtual_stages}) = {chunks}"
            if plan.virtual_stages > 1
            else f"pp({pp})"
        )
        raise SetupError(
            f"{what} exceeds {name}'s {spec.n_layers} layers: one layer per stage at least"
        )
    ep = plan.ep_degree
    if ep > 1 and spec.moe is None:
        raise SetupError(f"--ep {ep}: {name} has no experts (expert parallelism needs a MoE model)")
    if spec.moe is not None and spec.moe.n_experts % ep:
        raise SetupError(f"ep({ep}) must divide {name}'s experts ({spec.moe.n_experts})")


def validate_plan_batch(plan: ParallelPlan, *, micro_batch: int, seq: int) -> None:
    """:func:`validate_plan`'s checks of the micro-batch and the sequence."""
    cp, pp = plan.cp_degree, plan.pp_degree
    if cp > 1 and seq % (2 * cp):
        raise SetupError(
            f"seq({seq}) must be divisible by 2 * cp({cp}) = {2 * cp}: context parallelism splits "
            "the sequence into 2*cp load-balanced chunks"
        )
    if plan.global_batch is not None and plan.global_batch % (plan.dp * micro_batch):
        raise SetupError(
            f"global batch({plan.global_batch}) must be divisible by dp({plan.dp}) * "
            f"micro-batch({micro_batch}) = {plan.dp * micro_batch}"
        )
    m = plan.resolved_micro_batches(micro_batch)
    if plan.schedule is Schedule.INTERLEAVED and m % pp:
        raise SetupError(
            f"the interleaved schedule needs the micro-batches({m}) to be a multiple of pp({pp})"
        )
