"""The parallel-plan flags shared by ``train``, ``trace``, ``compare`` and ``time``.

``add_parallel_flags(parser)`` adds the cluster (``--gpus`` or ``--nodes --gpus-per-node``),
the degrees (``--dp --tp --pp --cp --ep --sp``), the data-parallel sharding (``--zero`` with
DeepSpeed's bucket sizes, or ``--fsdp``; plain DDP otherwise), the pipeline schedule, the
batch split (``--micro-batches`` or ``--global-batch``), offload and the network;
``plan_from_args(args, spec)`` turns them into a validated :class:`ParallelPlan` (or None when no
flag asks for more than one GPU, so single-GPU commands keep their output).
"""

from __future__ import annotations

import argparse
import re
from typing import Any

from memplan.errors import SetupError
from memplan.specs.model import ModelSpec
from memplan.specs.parallel import (
    DDP_BUCKET_CAP_MB,
    DEFAULT_GPUS_PER_NODE,
    DeepSpeedConfig,
    Offload,
    OffloadDevice,
    ParallelPlan,
    Schedule,
    Sharding,
    validate_plan,
)

__all__ = ["add_parallel_flags", "parse_link_rate", "plan_from_args"]

_FSDP_MODES = {
    "full": Sharding.FSDP_FULL,
    "shard-grad-op": Sharding.FSDP_SHARD_GRAD_OP,
    "hybrid": Sharding.FSDP_HYBRID,
    "no-shard": Sharding.FSDP_NO_SHARD,
}
_RATE_RE = re.compile(
    r"^\s*([0-9]*\.?[0-9]+(?:e[+-]?[0-9]+)?)\s*([kKmMgGtT]?)([bB]?)(?:/s|ps)?\s*$"
)
_PREFIX = {"": 1.0, "k": 1e3, "m": 1e6, "g": 1e9, "t": 1e12}

_DEGREE_FLAGS = ("dp", "tp", "pp", "cp", "ep")
_ASKS_FOR_PLAN = (
    "gpus", "nodes", "gpus_per_node", "zero", "fsdp", "micro_batches", "global_batch",
    *_DEGREE_FLAGS,
)  # fmt: skip


def parse_link_rate(text: str) -> float:
    """A link rate to bytes/s: ``400Gb/s`` (bits: lower-case b), ``50GB/s`` (bytes), ``50e9``."""
    match = _RATE_RE.match(text)
    if match is None:
        raise SetupError(f"cannot read the link rate {text!r}: write e.g. 400Gb/s or 50GB/s")
    value = float(match.group(1)) * _PREFIX[match.group(2).lower()]
    if match.group(3) == "b":
        value /= 8
    if not 0 < value < 1e16:
        raise SetupError(f"the link rate {text!r} must be positive and below 10 PB/s")
    return value


def _count(text: str) -> int:
    try:
        value = int(float(text)) if "e" in text.lower() else int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1 or value > 2**50:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def add_parallel_flags(
    parser: Any, *, gpus_flag: bool = True, batch_flags: bool = True, pipeline: bool = True
) -> None:
    """The plan flags (module docstring). ``gpus_flag=False`` where a command already has
    ``--gpus``; ``batch_flags=False`` where it already takes the global batch."""
    g = parser.add_argument_group("parallel plan (many GPUs)")
    if gpus_flag:
        g.add_argument("--gpus", type=_count, metavar="N", help="GPUs in all (8 per node)")
    g.add_argument("--nodes", type=_count, metavar="N", help="nodes (with --gpus-per-node)")
    g.add_argument("--gpus-per-node", type=_count, metavar="G", help="GPUs per node")
    g.add_argument("--dp", type=_count, metavar="D", help="data parallel (default: what remains)")
    g.add_argument("--tp", type=_count, metavar="T", help="tensor parallel degree")
    if pipeline:
        g.add_argument("--pp", type=_count, metavar="P", help="pipeline stages")
    g.add_argument("--cp", type=_count, metavar="C", help="context parallel degree")
    g.add_argument("--ep", type=_count, metavar="E", help="expert parallel degree (MoE)")
    g.add_argument("--sp", action="store_true", help="sequence parallelism (with --tp)")
    shard = g.add_mutually_exclusive_group()
    shard.add_argument("--zero", type=int, choices=(0, 1, 2, 3), help="DeepSpeed ZeRO stage")
    shard.add_argument("--fsdp", choices=tuple(_FSDP_MODES), help="FSDP2 fully_shard mode")
    g.add_argument("--hsdp-shard", type=_count, metavar="N", help="FSDP hybrid shard group")
    g.add_argument("--ddp-bucket-mb", type=_count, default=DDP_BUCKET_CAP_MB,
                   help="DDP bucket_cap_mb (default 25)")  # fmt: skip
    g.add_argument("--gradient-as-bucket-view", action="store_true", help="DDP option")
    defaults = DeepSpeedConfig()
    for flag, name in (
        ("--reduce-bucket-size", "reduce_bucket_size"),
        ("--allgather-bucket-size", "allgather_bucket_size"),
        ("--prefetch-bucket-size", "stage3_prefetch_bucket_size"),
        ("--param-persistence-threshold", "stage3_param_persistence_threshold"),
        ("--max-live-parameters", "stage3_max_live_parameters"),
    ):
        g.add_argument(flag, type=_count, default=getattr(defaults, name), metavar="ELEMS",
                       help=f"DeepSpeed {name} (default {getattr(defaults, name):.0e})")  # fmt: skip
    if pipeline:
        g.add_argument("--schedule", default="1f1b", choices=tuple(s.value for s in Schedule))
        g.add_argument("--virtual-stages", type=_count, default=1, metavar="V")
    if batch_flags:
        g.add_argument("--micro-batches", type=_count, metavar="M",
                       help="micro-batches per step (gradient accumulation)")  # fmt: skip
        g.add_argument("--global-batch", type=_count, metavar="B", help="sequences per step")
    g.add_argument("--offload", default="none", choices=tuple(o.value for o in Offload))
    g.add_argument("--offload-device", default="cpu", choices=tuple(o.value for o in OffloadDevice))
    g.add_argument("--network", default="400Gb/s", metavar="RATE",
                   help="network bandwidth per GPU across nodes (default 400Gb/s, NDR)")  # fmt: skip
    g.add_argument("--nvlink", metavar="RATE", help="GPU-to-GPU bandwidth in a node, one way")


def _asks_for_plan(args: Any) -> bool:
    for name in _ASKS_FOR_PLAN:
        value = getattr(args, name, None)
        if value is not None and not (name == "gpus" and value == 1):
            return True
    return bool(getattr(args, "sp", False)) or getattr(args, "offload", "none") != "none"


def _cluster(args: Any) -> tuple[int, int]:
    """(nodes, gpus_per_node) from ``--gpus`` or ``--nodes --gpus-per-node``."""
    gpus = getattr(args, "gpus", None)
    nodes, per_node = args.nodes, args.gpus_per_node
    if gpus is not None and nodes is not None and per_node is not None:
        if nodes * per_node != gpus:
            raise SetupError(
                f"--gpus({gpus}) != --nodes({nodes}) * --gpus-per-node({per_node}) = "
                f"{nodes * per_node}"
            )
        return nodes, per_node
    if gpus is not None and (nodes is not None or per_node is not None):
        given, flag = (nodes, "--nodes") if nodes is not None else (per_node, "--gpus-per-node")
        if gpus % given:
            raise SetupError(f"--gpus({gpus}) is not divisible by {flag}({given})")
        return (nodes, gpus // nodes) if nodes is not None else (gpus // per_node, per_node)
    if gpus is not None:
        if gpus <= DEFAULT_GPUS_PER_NODE:
            return 1, gpus
        if gpus % DEFAULT_GPUS_PER_NODE:
            raise SetupError(
                f"--gpus({gpus}) is not a multiple of {DEFAULT_GPUS_PER_NODE} GPUs per node: give "
                "--nodes N --gpus-per-node G"
            )
        return gpus // DEFAULT_GPUS_PER_NODE, DEFAULT_GPUS_PER_NODE
    if nodes is not None or per_node is not None:
        return nodes or 1, per_node or DEFAULT_GPUS_PER_NODE
    product = 1
    for name in ("dp", "tp", "pp", "cp"):
        product *= getattr(args, name, None) or 1
    if product <= DEFAULT_GPUS_PER_NODE:
        return 1, product
    return max(1, product // DEFAULT_GPUS_PER_NODE), min(product, DEFAULT_GPUS_PER_NODE)


def _sharding(args: Any) -> Sharding:
    if getattr(args, "zero", None) is not None:
        return Sharding(f"zero{args.zero}")
    if getattr(args, "fsdp", None) is not None:
        return _FSDP_MODES[args.fsdp]
    return Sharding.DDP


def plan_from_args(
    args: Any,
    spec: ModelSpec | None = None,
    *,
    micro_batch: int | None = None,
    seq: int | None = None,
) -> ParallelPlan | None:
    """The plan the flags describe, validated against ``spec`` when given; None when no flag
    asks for more than one GPU (the single-GPU path answers)."""
    if not _asks_for_plan(args):
        return None
    nodes, per_node = _cluster(args)
    deepspeed = DeepSpeedConfig(
        reduce_bucket_size=args.reduce_bucket_size,
        allgather_bucket_size=args.allgather_bucket_size,
        stage3_prefetch_bucket_size=args.prefetch_bucket_size,
        stage3_param_persistence_threshold=args.param_persistence_threshold,
        stage3_max_live_parameters=args.max_live_parameters,
    )
    plan = ParallelPlan(
        nodes=nodes,
        gpus_per_node=per_node,
        dp_degree=getattr(args, "dp", None),
        tp_degree=getattr(args, "tp", None) or 1,
        pp_degree=getattr(args, "pp", None) or 1,
        cp_degree=getattr(args, "cp", None) or 1,
        ep_degree=getattr(args, "ep", None) or 1,
        sequence_parallel=bool(getattr(args, "sp", False)),
        sharding=_sharding(args),
        hsdp_shard_degree=getattr(args, "hsdp_shard", None),
        ddp_bucket_cap_mb=args.ddp_bucket_mb,
        gradient_as_bucket_view=bool(getattr(args, "gradient_as_bucket_view", False)),
        deepspeed=deepspeed,
        schedule=Schedule(getattr(args, "schedule", "1f1b")),
        virtual_stages=getattr(args, "virtual_stages", 1),
        micro_batches=getattr(args, "micro_batches", None),
        global_batch=getattr(args, "global_batch", None),
        offload=Offload(args.offload),
        offload_device=OffloadDevice(args.offload_device),
        network_bytes_per_s=parse_link_rate(args.network),
        intra_node_bytes_per_s=parse_link_rate(args.nvlink) if args.nvlink else None,
    )
    if spec is not None:
        batch = micro_batch if micro_batch is not None else getattr(args, "batch", None) or 1
        length = seq if seq is not None else getattr(args, "seq", None)
        if length is None:
            length = min(2048, spec.max_position_embeddings)
        validate_plan(spec, plan, micro_batch=batch, seq=length)
    return plan
