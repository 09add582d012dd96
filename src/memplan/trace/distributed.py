"""One rank of a parallel training step, traced (fake process group) or run for real (gloo).

The trace runs the way torchtitan's memory estimation does (``scripts/estimate/estimation.py``):
a ``FakeStore`` and ``init_process_group("fake", rank=r, world_size=W)``, a cpu device mesh,
the model built on the meta device in its dtype, sharded / parallelized, then materialized with
``to_empty`` under fake tensors (DIST-NOTES.md). One process traces any rank of any world size,
at full size, in seconds to minutes. A real run (``fake=False``, inside a process group that the
caller made, e.g. gloo) executes the same code on real cpu tensors; the gloo tests hold the two
to each other byte for byte.

The step is ``transformers.Trainer``'s (as in :mod:`memplan.trace.training`): two iterations
of forward with labels, backward, ``optimizer.step()``, ``zero_grad(set_to_none=True)``; the
report gives iteration 2 (optimizer states live) per phase, each with its categories.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from memplan.errors import SetupError
from memplan.specs.parallel import ParallelPlan
from memplan.specs.training import Attention, Checkpointing, Precision, Target, TrainingSetup
from memplan.trace.assemble import IterationMarks
from memplan.trace.build import (
    build_model,
    check_seq_len,
    grouped_mm_policy,
    unpadded_mask_skips,
)
from memplan.trace.cuda_env import gpu_arch
from memplan.trace.dist_tracker import CommFlag, DistTracker
from memplan.trace.layout import (
    apply_data_parallel,
    apply_tensor_parallel,
    build_mesh,
    check_traceable,
    is_fsdp,
)
from memplan.trace.optim import make_optimizer, step_counters_on_host
from memplan.trace.session import TraceSession
from memplan.trace.tracker import Flag

__all__ = ["ParallelRun", "Probe", "fake_process_group", "run_parallel_training"]

_PARAM_DTYPE = {
    Precision.FP32: torch.float32,
    Precision.BF16: torch.bfloat16,
    Precision.FP16: torch.float16,
    Precision.BF16_MIXED: torch.float32,
    Precision.FP16_MIXED: torch.float32,
}
_AUTOCAST = {Precision.BF16_MIXED: torch.bfloat16, Precision.FP16_MIXED: torch.float16}
_SDPA_BACKEND = {Attention.SDPA: "auto", Attention.FLASH: "flash", Attention.CUDNN: "cudnn"}
_SDPA_BACKEND[Attention.MEM_EFFICIENT] = "mem-efficient"
PHASE_MARKS = ("start", "end_of_forward", "after_backward", "after_step", "after_zero_grad")
"""The points of an iteration where a probe is told where the step is."""


class Probe:
    """Hooks for a second measurement of a real run (PyTorch's MemTracker): no-ops here."""

    def start(self) -> Any:
        """A context manager entered before the model is parallelized (DDP's buckets)."""
        return contextlib.nullcontext()

    def attach(
        self, model: nn.Module, optimizer: torch.optim.Optimizer, batch: dict[str, Any]
    ) -> Any:
        """A context manager entered around the two iterations."""
        return contextlib.nullcontext()

    def mark(self, iteration: int, point: str) -> None:
        """Called at each of :data:`PHASE_MARKS` of each iteration."""

    def settle(self) -> None:
        """Called before each phase mark: let pending frees happen (real runs)."""


@dataclass
class ParallelRun:
    """What one rank of a traced (or real) parallel run leaves behind for the report."""

    session: TraceSession
    plan: ParallelPlan
    rank: int
    iterations: list[IterationMarks] = field(default_factory=list)
    seconds: float = 0.0
    n_params: int = 0
    n_local_params: int = 0
    notes: list[str] = field(default_factory=list)


@contextlib.contextmanager
def fake_process_group(rank: int, world_size: int) -> Iterator[None]:
    """The default process group as a fake one: collectives return at once, nothing moves."""
    from torch.testing._internal.distributed.fake_pg import FakeStore

    if dist.is_initialized():
        raise SetupError("a process group is already initialized in this process")
    dist.init_process_group("fake", store=FakeStore(), rank=rank, world_size=world_size)
    try:
        yield
    finally:
        dist.destroy_process_group()


def run_parallel_training(
    config: dict[str, Any],
    setup: TrainingSetup,
    plan: ParallelPlan,
    *,
    fake: bool = True,
    name: str = "model",
    probe: Probe | None = None,
) -> ParallelRun:
    """Run two iterations of this rank (``dist.get_rank()``) under ``plan``."""
    started = time.perf_counter()
    _check(name, config, setup, plan)
    probe = probe or Probe()
    fsdp_mixed = is_fsdp(plan) and setup.precision is Precision.BF16_MIXED
    autocast = None if fsdp_mixed else _AUTOCAST.get(setup.precision)
    session = TraceSession(
        fake=fake,
        cuda=setup.target is Target.CUDA,
        arch=gpu_arch(setup.gpu),
        sdpa_backend=_SDPA_BACKEND.get(setup.attention, "auto"),
        autocast_dtype=autocast,
        tracker=DistTracker(),
    )
    if session.fake_mode is not None:
        # the model is built on the meta device, outside the fake mode (DIST-NOTES.md)
        session.fake_mode.allow_non_fake_inputs = True
    if not fake:
        # a collective's buffers are let go when Python lets go of them, as in the trace
        session.tracker.after_collective = probe.settle
    run = ParallelRun(session, plan, dist.get_rank())
    _fresh_dtensor_caches()
    mesh = build_mesh(plan)
    _flag_meshes(mesh, session.tracker)
    torch.manual_seed(0)
    model = _build(config, setup, fake)
    run.n_params = sum(p.numel() for p in model.parameters())
    if fake:
        _shard_meta(model, mesh, plan, fsdp_mixed=fsdp_mixed)
    # FSDP2's mixed precision computes with bf16 unsharded parameters: bf16 grouped mm
    policy = grouped_mm_policy(torch.bfloat16 if fsdp_mixed else _PARAM_DTYPE[setup.precision])
    with session, policy, unpadded_mask_skips(), probe.start():
        wrapped = _parallelize(model, mesh, plan, session, fsdp_mixed=fsdp_mixed, fake=fake)
        _fsdp_lazy_init(model)
        session.register_model(model)
        session.wrap_checkpointing(model)
        run.n_local_params = sum(_local(p).numel() for p in model.parameters())
        optimizer = make_optimizer(model.parameters(), setup.optimizer, cuda=session.cuda)
        _instrument(model, session)
        batch = _inputs(model, setup, session, plan)
        micro = plan.resolved_micro_batches(setup.batch)
        with probe.attach(wrapped, optimizer, batch):
            for iteration in range(2):
                run.iterations.append(
                    _iteration(wrapped, batch, optimizer, session, probe, iteration, micro)
                )
    run.seconds = time.perf_counter() - started
    return run


def _fresh_dtensor_caches() -> None:
    """Empty DTensor's caches of sharding decisions: their entries hold the device meshes of
    earlier runs (equal by value), whose process groups are gone once a run ends."""
    from torch.distributed.tensor import DTensor, _redistribute

    propagator = DTensor._op_dispatcher.sharding_propagator
    propagator.propagate_op_sharding.cache_clear()
    propagator._propagate_tensor_meta_cached.cache_clear()
    _redistribute._gen_transform_infos.cache_clear()


def _check(name: str, config: dict[str, Any], setup: TrainingSetup, plan: ParallelPlan) -> None:
    check_traceable(plan)
    if dist.get_world_size() != plan.world_size:
        raise SetupError(
            f"the process group has {dist.get_world_size()} ranks, the plan {plan.world_size}"
        )
    check_seq_len(name, config, setup.seq, setup.allow_long_seq)
    if setup.precision not in _PARAM_DTYPE:
        raise SetupError(
            f"the distributed trace runs PyTorch training; {setup.precision.value} (DeepSpeed) "
            "is analytic only"
        )
    if setup.is_lora or setup.qlora or setup.freeze_layers or setup.freeze_embeddings:
        raise SetupError("the distributed trace trains every parameter (no LoRA or freezing)")
    if setup.checkpointing is Checkpointing.SELECTIVE:
        raise SetupError("selective recomputation is analytic only (use --checkpointing full)")
    if plan.sequence_parallel and setup.attention is Attention.EAGER:
        raise SetupError(
            "sequence parallelism needs sdpa attention: transformers builds the eager mask "
            "from the local sequence length"
        )
    if plan.sequence_parallel and setup.seq % plan.tp_degree:
        raise SetupError(
            f"sequence parallelism splits the sequence: tp({plan.tp_degree}) must divide "
            f"seq({setup.seq})"
        )
    if setup.target is Target.CPU and setup.attention not in (Attention.SDPA, Attention.EAGER):
        raise SetupError(f"--attention {setup.attention.value} is a CUDA kernel; use sdpa")


def _build(config: dict[str, Any], setup: TrainingSetup, fake: bool) -> nn.Module:
    """The model in its parameter dtype: on the meta device (fake) or on the cpu (real)."""
    attention = "eager" if setup.attention is Attention.EAGER else "sdpa"
    device = torch.device("meta") if fake else torch.device("cpu")
    with device:
        model = build_model(
            config,
            dtype=_PARAM_DTYPE[setup.precision],
            attention=attention,
            dropout=setup.dropout,
        )
    model.train()
    if setup.checkpointing is Checkpointing.FULL:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False
    return model


def _shard_meta(model: nn.Module, mesh: Any, plan: ParallelPlan, *, fsdp_mixed: bool) -> None:
    """TP and FSDP2 on the meta model, before the fake mode (as torchtitan shards a meta
    model); under a fake mode FSDP2 cannot shard TP's meta DTensors (``aten.nonzero``)."""
    if plan.tp_degree > 1:
        apply_tensor_parallel(model, mesh["tp"], sequence_parallel=plan.sequence_parallel)
    if is_fsdp(plan):
        apply_data_parallel(model, mesh, plan, mixed_bf16=fsdp_mixed)


def _fsdp_lazy_init(model: nn.Module) -> None:
    """FSDP2's lazy initialization, which runs at the first forward, before the parameters are
    registered: it re-pads the local shards of uneven dimensions into new storages."""
    from torch.distributed.fsdp import FSDPModule

    if isinstance(model, FSDPModule):
        model._get_fsdp_state()._lazy_init()


def _flag_meshes(mesh: dict[str, Any], tracker: Any) -> None:
    """A device mesh's rank table is a cpu tensor on every device type (not device memory);
    DTensor views it during the step, which would register it with the tracker."""
    for sub in mesh.values():
        for table in {
            id(sub.mesh): sub.mesh,
            id(sub._get_root_mesh().mesh): sub._get_root_mesh().mesh,
        }.values():
            tracker.flag(table, Flag.HOST)


def _parallelize(
    model: nn.Module,
    mesh: Any,
    plan: ParallelPlan,
    session: TraceSession,
    *,
    fsdp_mixed: bool,
    fake: bool,
) -> nn.Module:
    """Real run: TP, then DDP / FSDP2. Fake: materialize the model sharded on the meta device
    (:func:`_shard_meta`), then DDP. DDP's buckets are flagged."""
    tracker = session.tracker
    if fake:
        model.to_empty(device="cpu")
    elif plan.tp_degree > 1:
        apply_tensor_parallel(model, mesh["tp"], sequence_parallel=plan.sequence_parallel)
    start = tracker.mark()
    wrapped = (
        model
        if fake and is_fsdp(plan)
        else apply_data_parallel(model, mesh, plan, mixed_bf16=fsdp_mixed, init_sync=not fake)
    )
    if wrapped is not model:
        _flag_live_since(tracker, start, CommFlag.BUCKET)
        if fake:
            wrapped.register_comm_hook(None, _in_place_all_reduce)
        wrapped.reducer = _WatchedReducer(wrapped.reducer, tracker, fake=fake)
    return wrapped


class _WatchedReducer:
    """DDP's reducer, its one-time bucket rebuild watched (real run) or skipped (fake).

    Before the second forward DDP rebuilds its buckets in the order the gradients became ready
    (``Reducer::rebuild_buckets``): on a real run the new buckets are flagged as buckets too.
    The rebuild agrees on that order across ranks by reading a tensor's data, which a fake
    tensor does not have, so under a fake process group it is skipped: the rebuilt buckets hold
    the same gradients (the same bytes in all), so the steady state is unchanged; the real
    run's brief overlap of old and new buckets, before the forward, is not traced.
    """

    def __init__(self, reducer: Any, tracker: Any, *, fake: bool) -> None:
        self._reducer = reducer
        self._tracker = tracker
        self._fake = fake

    def _rebuild_buckets(self) -> bool:
        if self._fake:
            return False
        start = self._tracker.mark()
        rebuilt = bool(self._reducer._rebuild_buckets())
        _flag_live_since(self._tracker, start, CommFlag.BUCKET)
        return rebuilt

    def __getattr__(self, name: str) -> Any:
        return getattr(self._reducer, name)


def _in_place_all_reduce(state, bucket):  # type: ignore[no-untyped-def]
    """DDP's all-reduce of a bucket under a fake process group (whose collectives return no
    value): the bucket itself, as the default hook returns it (gloo and NCCL reduce in place).
    No annotations: DDP checks them against the real types, and this module's are strings."""
    future: Any = torch.futures.Future()
    future.set_result(bucket.buffer())
    return future


def _flag_live_since(tracker: Any, start: int, flag: int) -> None:
    for key in tracker.live_since(start):
        if not tracker.flags[key] & (Flag.PARAMETER | Flag.BUFFER):
            tracker.flags[key] |= flag


def _local(tensor: torch.Tensor) -> torch.Tensor:
    from memplan.trace.dist_tracker import local_tensor

    return local_tensor(tensor)


def _instrument(model: nn.Module, session: TraceSession) -> None:
    """Flag gradients as they appear, and FSDP2's unsharded parameters and gradients."""
    tracker = session.tracker
    session.flag_gradients(model)
    from torch.distributed.fsdp import FSDPModule

    for module in model.modules():
        if isinstance(module, FSDPModule):
            group = module._get_fsdp_state()._fsdp_param_group
            if group is not None:
                _instrument_fsdp_group(group, tracker)


def _instrument_fsdp_group(group: Any, tracker: Any) -> None:
    """Per-instance wrappers, as ``FSDPMemTracker`` installs them (fsdp2_mem_tracker.py)."""
    wait_for_unshard, post_backward = group.wait_for_unshard, group.post_backward

    def flag_unsharded() -> None:
        for fsdp_param in group.fsdp_params:
            for output in getattr(fsdp_param, "all_gather_outputs", ()):
                if output.untyped_storage().nbytes():
                    tracker.flag(output, CommFlag.UNSHARDED_PARAM)

    def wrapped_wait(*args: Any, **kwargs: Any) -> Any:
        out = wait_for_unshard(*args, **kwargs)
        flag_unsharded()
        return out

    def wrapped_post_backward(*args: Any, **kwargs: Any) -> Any:
        for fsdp_param in group.fsdp_params:
            unsharded = getattr(fsdp_param, "_unsharded_param", None)
            if unsharded is not None and unsharded.grad is not None:
                tracker.flag(unsharded.grad, CommFlag.UNSHARDED_GRAD)
        out = post_backward(*args, **kwargs)
        for fsdp_param in group.fsdp_params:
            grad = fsdp_param.sharded_param.grad
            if grad is not None:
                tracker.flag(grad, Flag.GRADIENT)
        return out

    group.wait_for_unshard = wrapped_wait
    group.post_backward = wrapped_post_backward


def _inputs(
    model: nn.Module, setup: TrainingSetup, session: TraceSession, plan: ParallelPlan
) -> dict[str, Any]:
    vocab = int(model.get_input_embeddings().weight.shape[0])  # a DTensor's global shape
    batch = {
        "input_ids": torch.randint(0, vocab, (setup.batch, setup.seq)),
        "labels": torch.randint(0, vocab, (setup.batch, setup.seq)),
    }
    if plan.sequence_parallel:
        # transformers would number the positions of the local sequence shard
        batch["position_ids"] = torch.arange(setup.seq).unsqueeze(0).expand(setup.batch, -1)
    for tensor in batch.values():
        session.tracker.flag(tensor, Flag.INPUT)
    return batch


def _iteration(
    model: nn.Module,
    batch: dict[str, Any],
    optimizer: torch.optim.Optimizer,
    session: TraceSession,
    probe: Probe,
    iteration: int,
    micro_batches: int = 1,
) -> IterationMarks:
    """One optimizer step of ``micro_batches`` forward-backward passes (gradient accumulation);
    the phases are those of the last micro-batch, its gradients added to the earlier ones'."""
    tracker = session.tracker
    session.collect()
    probe.settle()
    marks = IterationMarks(start=tracker.mark())
    probe.mark(iteration, "start")
    for _ in range(micro_batches - 1):
        _backward(_forward(model, batch, session, tracker.mark()), session)
        probe.mark(iteration, "micro_batch")
    loss = _forward(model, batch, session, tracker.mark(), probe=probe, marks=marks)
    probe.mark(iteration, "end_of_forward")
    _backward(loss, session)
    del loss
    probe.settle()
    marks.after_backward = tracker.mark()
    probe.mark(iteration, "after_backward")
    optimizer.step()
    _flag_optimizer(optimizer, session)
    probe.settle()
    marks.after_step = tracker.mark()
    probe.mark(iteration, "after_step")
    optimizer.zero_grad(set_to_none=True)
    session.collect()
    probe.settle()
    marks.after_zero_grad = tracker.mark()
    probe.mark(iteration, "after_zero_grad")
    return marks


def _forward(
    model: nn.Module,
    batch: dict[str, Any],
    session: TraceSession,
    start: int,
    *,
    probe: Probe | None = None,
    marks: IterationMarks | None = None,
) -> torch.Tensor:
    """The forward with labels; the loss, its saved tensors named and flagged."""
    tracker = session.tracker
    with session.autocast():
        loss = model(**batch).loss
    if probe is not None and marks is not None:
        probe.settle()
        marks.end_of_forward = tracker.mark()
    session.name_saved_fields(loss.grad_fn)
    keep = {tracker.key(t) for t in batch.values()} | {tracker.key(loss)}
    session.flag_graph_held(start, keep)
    return loss


def _backward(loss: torch.Tensor, session: TraceSession) -> None:
    session.in_backward = True
    loss.backward()
    session.in_backward = False


def _flag_optimizer(optimizer: torch.optim.Optimizer, session: TraceSession) -> None:
    tracker = session.tracker
    for state in optimizer.state.values():
        for value in state.values():
            if isinstance(value, torch.Tensor):
                tracker.flag(value, Flag.OPTIMIZER_STATE)
    if session.cuda:
        for step in step_counters_on_host(optimizer):
            tracker.flag(step, Flag.HOST)
