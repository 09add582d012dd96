"""``parallel_training_report(spec, setup, plan) -> Report``: per-rank memory, communication and
time of a training step under a :class:`ParallelPlan` (issue 9).

JSON (``Report.to_dict()``): ``peak_bytes`` and ``peak_phase`` of the worst rank; ``ranks``: one
entry per distinct rank group (``ranks`` the global rank ids it covers, ``stage``,
``peak_bytes``, ``peak_phase``, ``breakdown`` the tree at its peak, ``phases`` each with a
per-category ``breakdown``, and with a GPU ``fits`` / ``headroom_bytes``); ``communication``:
per pipeline stage, every collective with its bytes, calls per step, group size and link;
``plan``: the resolved plan; with a GPU ``advice`` and, where the GPU's peak is known,
``step_seconds`` / ``mfu``. The report's own ``breakdown`` and ``phases`` are the worst rank's.
"""

from __future__ import annotations

import dataclasses
from enum import Enum
from typing import Any

from memplan.errors import MemplanError
from memplan.estimate.dist_time import collectives, comm_seconds, step_time
from memplan.estimate.distributed import DIST_CATEGORIES, RankGroup, local_step, rank_groups
from memplan.estimate.fit import training_usable_bytes
from memplan.estimate.timing import TrainingRun
from memplan.estimate.train_report import _PEAK_PHASE_NAMES
from memplan.report import TRAINING_PHASES, Item, Phase, Report
from memplan.specs.hardware import Gpu
from memplan.specs.model import ModelSpec
from memplan.specs.parallel import ParallelPlan, Sharding
from memplan.specs.training import Checkpointing, TrainingSetup
from memplan.units import format_bytes

__all__ = ["parallel_time_report", "parallel_training_report", "plan_dict", "worst_peak_bytes"]

NOTES = (
    "per rank: the single-GPU engine's saved tensors for the rank's local model (heads / tp, "
    "width / tp, seq / cp); model states with FSDP2's dim-0 padding, DeepSpeed's flat "
    "partitions; communication buffers as named lines",
    "NCCL's own buffers live outside PyTorch's caching allocator (like the CUDA context): about "
    "NCCL_BUFFSIZE (4 MiB) x 2 x channels per communicator, not counted in the peak",
)


def plan_dict(plan: ParallelPlan) -> dict[str, Any]:
    """The resolved plan as JSON-ready values."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(plan):
        value = getattr(plan, f.name)
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            value = dataclasses.asdict(value)
        elif isinstance(value, Enum):
            value = value.value
        out[f.name] = value
    out["world_size"] = plan.world_size
    return out


def _setup_info(setup: TrainingSetup) -> dict[str, Any]:
    """The setup lines a per-rank report prints (the micro-batch is per GPU)."""
    return {
        "micro_batch": setup.batch,
        "seq": setup.seq,
        "precision": setup.precision.value,
        "optimizer": setup.optimizer.value,
        "attention": setup.attention.value,
        "checkpointing": setup.checkpointing.value,
    }


def _peak_tree(group: RankGroup) -> Item:
    at = group.phases[group.peak_phase]
    root = Item("peak", note=f"phase: {_PEAK_PHASE_NAMES[group.peak_phase]}")
    named = {
        "parameters": group.states.params,
        "gradients": group.states.grads,
        "optimizer_states": group.states.states,
        "communication": group.comm_lines[group.peak_phase],
    }
    for cat in DIST_CATEGORIES:
        value = at.get(cat, 0)
        if not value:
            continue
        lines = named.get(cat)
        if lines and sum(lines.values()) == value:
            node = root.add(Item(cat))
            for key, v in lines.items():
                node.leaf(key, v)
        else:
            root.leaf(cat, value)
    return root


def _group_dict(group: RankGroup, gpu: Gpu | None) -> dict[str, Any]:
    out: dict[str, Any] = {
        "ranks": list(group.ranks),
        "stage": group.stage,
        "peak_bytes": group.peak_bytes,
        "peak_phase": _PEAK_PHASE_NAMES[group.peak_phase],
        "breakdown": _peak_tree(group).to_dict(),
        "phases": [
            {"name": n, "bytes": sum(group.phases[n].values()), "breakdown": group.phases[n]}
            for n in TRAINING_PHASES
        ],
    }
    if group.states.offloaded:
        out["host_bytes"] = sum(group.states.offloaded.values())
        out["host_breakdown"] = dict(group.states.offloaded)
    if gpu is not None:
        usable = training_usable_bytes(gpu)
        out["headroom_bytes"] = usable - group.peak_bytes
        out["fits"] = group.peak_bytes <= usable
    return out


def worst_peak_bytes(spec: ModelSpec, setup: TrainingSetup, plan: ParallelPlan) -> int:
    """The worst rank's peak (the fast path searches and advice call)."""
    return max(g.peak_bytes for g in rank_groups(spec, setup, plan))


def _advice(
    spec: ModelSpec, setup: TrainingSetup, plan: ParallelPlan, worst: RankGroup
) -> list[str]:
    """Alternatives that lower the worst rank's peak, each computed with this engine."""
    options: list[tuple[str, TrainingSetup, ParallelPlan]] = []
    if plan.sharding not in (Sharding.ZERO_3, Sharding.FSDP_FULL) and plan.pp_degree == 1:
        options.append(("ZeRO-3", setup, dataclasses.replace(plan, sharding=Sharding.ZERO_3)))
        options.append(("FSDP full", setup, dataclasses.replace(plan, sharding=Sharding.FSDP_FULL)))
    if setup.checkpointing is not Checkpointing.FULL:
        ckpt = dataclasses.replace(setup, checkpointing=Checkpointing.FULL)
        options.append(("--checkpointing full", ckpt, plan))
    if setup.batch > 1:
        options.append(("--batch 1", dataclasses.replace(setup, batch=1), plan))
    lines = []
    rank = worst.ranks[0]
    for label, s, p in options:
        try:
            peak = worst_peak_bytes(spec, s, p)
        except MemplanError:
            continue
        if peak < worst.peak_bytes:
            lines.append(f"{label} would bring rank {rank} to {format_bytes(peak)}")
    return lines


def parallel_training_report(
    spec: ModelSpec,
    setup: TrainingSetup,
    plan: ParallelPlan,
    *,
    gpu: Gpu | None = None,
    mfu: float | None = None,
    dtype: str = "bf16",
) -> Report:
    """Per-rank memory, communication and (with a GPU) time of ``spec`` under ``plan``."""
    groups = rank_groups(spec, setup, plan)
    worst = max(groups, key=lambda g: g.peak_bytes)
    local = local_step(spec, setup, plan)
    comm: list[dict[str, Any]] = []
    for stage in range(plan.pp_degree):
        calls = collectives(spec, setup, plan, local, stage)
        secs = comm_seconds(calls, plan, gpu) if gpu is not None else [0.0] * len(calls)
        for c, sec in zip(calls, secs, strict=True):
            comm.append({"stage": stage, **c.to_dict(plan, sec)})
    scalars: dict[str, Any] = {
        "peak_bytes": worst.peak_bytes,
        "peak_phase": _PEAK_PHASE_NAMES[worst.peak_phase],
        "worst_rank": worst.ranks[0],
        "method": "exact",
        "ranks": [_group_dict(g, gpu) for g in groups],
        "communication": comm,
        "plan": plan_dict(plan),
        "micro_batches": plan.resolved_micro_batches(setup.batch),
        "global_batch": plan.global_batch_size(setup.batch),
    }
    notes = list(NOTES)
    host = max((sum(g.states.offloaded.values()) for g in groups), default=0)
    if host:
        where_ = "NVMe" if plan.offload_device.value == "nvme" else "host memory"
        scalars["host_bytes_per_node"] = host * plan.gpus_per_node
        notes.append(
            f"offload: {format_bytes(host)} per rank in {where_}, "
            f"{format_bytes(host * plan.gpus_per_node)} per node of {plan.gpus_per_node} GPUs"
        )
    if plan.pp_degree > 1:
        notes.append(
            "pipeline stages: activations of the micro-batches in flight per schedule plus the "
            "largest backward transient (loss or MLP); approximate to one transient"
        )
    if spec.n_kv_heads < plan.tp_degree:
        notes.append(
            f"tp({plan.tp_degree}) > KV heads ({spec.n_kv_heads}): each KV head is replicated "
            f"on tp/{spec.n_kv_heads} ranks (Megatron)"
        )
    if gpu is not None:
        scalars["gpu"] = gpu.name
        scalars["usable_bytes"] = training_usable_bytes(gpu)
        scalars["fits"] = all(g.peak_bytes <= scalars["usable_bytes"] for g in groups)
        scalars["advice"] = _advice(spec, setup, plan, worst)
        if gpu.tflops:
            t = step_time(spec, setup, plan, local, gpu, dtype=dtype, mfu=mfu)
            scalars.update(
                step_seconds=t.step_s,
                compute_seconds=t.compute_s,
                bubble_seconds=t.bubble_s,
                exposed_comm_seconds=t.exposed_comm_s,
                offload_seconds=t.offload_s,
                mfu=t.mfu,
                tokens_per_s=plan.global_batch_size(setup.batch) * setup.seq / t.step_s,
            )
            notes.append(f"time: {t.overlap}")
    phases = [
        Phase(n, sum(worst.phases[n].values()), breakdown=dict(worst.phases[n]))
        for n in TRAINING_PHASES
    ]
    setup_info = _setup_info(setup)
    setup_info["gpus"] = plan.world_size
    return Report(
        kind="training/parallel",
        model=spec.name,
        breakdown=_peak_tree(worst),
        setup=setup_info,
        scalars=scalars,
        phases=phases,
        notes=notes + list(local.plan.notes),
    )


def parallel_time_report(
    spec: ModelSpec,
    setup: TrainingSetup,
    plan: ParallelPlan,
    gpu: Gpu,
    run: TrainingRun,
    *,
    mfu: float | None = None,
) -> Report:
    """Time, GPU-hours and cost of ``run`` (global batch ``run.batch``) under ``plan``."""
    from memplan.formulas.time import cost_usd, gpu_hours

    rank_groups(spec, setup, plan)  # validates the plan against the model and the batch
    local = local_step(spec, setup, plan)
    t = step_time(spec, setup, plan, local, gpu, dtype=run.dtype, mfu=mfu)
    steps = run.n_steps
    seconds = t.step_s * steps
    hours = gpu_hours(seconds, plan.world_size)
    step = Item("step", unit="s", note=t.overlap)
    step.leaf("compute", t.compute_s, "per-rank FLOPs / (peak x matmul efficiency)")
    step.leaf("pipeline_bubble", t.bubble_s, "(p - 1) / (v M) x compute")
    step.leaf("exposed_communication", t.exposed_comm_s, "tp/cp/ep/pp + dp beyond the backward")
    if t.offload_s:
        step.leaf("offload_transfers", t.offload_s, "offloaded states over PCIe, not overlapped")
    tokens = steps * run.batch * run.seq
    scalars: dict[str, Any] = {
        "seconds": seconds,
        "days": seconds / 86400,
        "flops": t.model_flops * steps,
        "flops_per_step": t.model_flops,
        "steps": steps,
        "tokens": tokens,
        "tokens_per_s": tokens / seconds,
        "gpu_hours": hours,
        "step_seconds": t.step_s,
        "mfu": t.mfu,
        "communication_seconds": t.comm_s,
        "plan": plan_dict(plan),
    }
    if run.price_per_gpu_hour is not None:
        scalars["cost_usd"] = cost_usd(hours, run.price_per_gpu_hour)
    return Report(
        kind="time",
        model=spec.name,
        breakdown=step,
        setup={"gpu": gpu.name, "gpus": plan.world_size, "global_batch": run.batch,
               "micro_batch": setup.batch, "seq": run.seq, "steps": steps},
        scalars=scalars,
        notes=[f"time: {t.overlap}", "MFU = model FLOPs / (step time x gpus x peak)"],
    )  # fmt: skip
