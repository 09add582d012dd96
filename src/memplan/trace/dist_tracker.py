"""The storage tracker for distributed runs: DTensor, resized storages, collectives.

:class:`~memplan.trace.tracker.StorageTracker` sees every op's outputs. A distributed step adds
four things it must handle the way PyTorch's own ``FSDPMemTracker``
(``torch/distributed/_tools/fsdp2_mem_tracker.py``) does, so that a fake trace and a real gloo
run count the same storages:

- DTensor ops are given back (``NotImplemented``) so that DTensor runs and the tracker sees
  the local ops on the shards; a DTensor's storage is its local tensor's.
- DTensor's sharding propagation runs each new op once on fake tensors of the global shapes
  to learn the output's shape (``ShardingPropagator._propagate_tensor_meta_non_cached``), under
  a fake mode of its own on a real run but under the trace's own fake mode in a trace: those
  ops allocate nothing on any device and are not counted (DIST-NOTES: otherwise the first
  ``clip_grad_norm_`` shows a transient the size of the model).
- FSDP2 frees and re-allocates unsharded parameters with ``UntypedStorage.resize_``
  (``_fsdp_param.py``: ``free_storage`` / ``alloc_storage``), which no dispatch mode sees: the
  patched ``resize_`` logs a free and a new allocation of the same storage.
- ``_c10d_functional.wait_tensor`` returns its input on a real run; under fake tensors its meta
  kernel makes a new tensor, so the input is returned instead.
- A communication backend's own buffers are not the step's tensors (NCCL's live outside
  PyTorch's allocator): gloo reduces a full copy of a reduce-scatter's input on its worker
  thread and cuts the result up in ``Work.wait()`` on the caller's; ops on other threads and
  inside ``Work.wait()`` are not counted.

Storages that exist for communication carry flags of their own (:class:`CommFlag`); the
report puts them under ``communication`` (see :func:`dist_category_of`).
"""

from __future__ import annotations

import functools
import threading
from typing import Any

import torch
import torch.distributed as dist
from torch._guards import active_fake_mode
from torch.distributed.tensor import DTensor
from torch.distributed.tensor._sharding_prop import ShardingPropagator as _Propagator
from torch.utils._python_dispatch import is_traceable_wrapper_subclass

from memplan.trace.tracker import Flag, StorageTracker

__all__ = ["COMM_KEYS", "CommFlag", "DistTracker", "dist_category_of", "local_tensor"]

_C10D = torch.ops.c10d
_WAIT = torch.ops._c10d_functional.wait_tensor.default


class CommFlag:
    """Flags of storages that exist for communication (bits above :class:`Flag`'s)."""

    UNSHARDED_PARAM = 1 << 12
    """FSDP2's all-gathered (unsharded) parameters, per parameter, padded."""
    ALL_GATHER = 1 << 13
    """FSDP2's flat all-gather buffer (input shard copy and W x output)."""
    UNSHARDED_GRAD = 1 << 14
    """FSDP2's unsharded gradients, before the reduce-scatter."""
    REDUCE_SCATTER = 1 << 15
    """FSDP2's flat reduce-scatter input (padded, in the reduce dtype)."""
    BUCKET = 1 << 16
    """DDP's gradient buckets (the reducer's flat all-reduce buffers)."""
    PIPELINE = 1 << 17
    """Pipeline send / receive buffers."""


COMM_KEYS = (
    (CommFlag.UNSHARDED_PARAM, "unsharded_parameters"),
    (CommFlag.ALL_GATHER, "all_gather"),
    (CommFlag.UNSHARDED_GRAD, "unsharded_gradients"),
    (CommFlag.REDUCE_SCATTER, "reduce_scatter"),
    (CommFlag.BUCKET, "ddp_buckets"),
    (CommFlag.PIPELINE, "pipeline_buffers"),
)
"""The children of ``communication``, in order."""

_BEFORE_COMM = (
    (Flag.PARAMETER, "parameters"),
    (Flag.BUFFER, "buffers"),
    (Flag.GRADIENT, "gradients"),
    (Flag.OPTIMIZER_STATE, "optimizer_states"),
)
_AFTER_COMM = (
    (Flag.INPUT, "inputs"),
    (Flag.AUTOCAST_CACHE, "autocast_cache"),
    (Flag.ACTIVATION, "activations"),
)


def dist_category_of(flags: int) -> tuple[str, str]:
    """(category, communication line or "") of a storage with ``flags``.

    Priority: parameters > buffers > gradients > optimizer states > communication > inputs >
    autocast cache > activations > temporaries. Communication comes before activations because
    autograd saves the unsharded parameters that FSDP2 all-gathers (they are FSDP's buffers,
    freed by resharding, not the layer's activations); DDP's buckets that are also the
    gradients (``gradient_as_bucket_view``) count as gradients.
    """
    for flag, name in _BEFORE_COMM:
        if flags & flag:
            return name, ""
    for flag, name in COMM_KEYS:
        if flags & flag:
            return "communication", name
    for flag, name in _AFTER_COMM:
        if flags & flag:
            return name, ""
    return "temporaries", ""


def local_tensor(tensor: torch.Tensor) -> torch.Tensor:
    """The tensor that owns the storage: a DTensor's local shard, the tensor inside a wrapper
    subclass (``AsyncCollectiveTensor``, which functional collectives return on a real run),
    else the tensor itself."""
    while is_traceable_wrapper_subclass(tensor):
        names, _ = tensor.__tensor_flatten__()  # type: ignore[attr-defined]
        tensor = getattr(tensor, names[0])
    return tensor


def _is_collective(func: Any) -> bool:
    """A c10d collective (not a barrier), or the wait of a functional collective."""
    if func is _WAIT:
        return True
    return bool(func.namespace == "c10d" and func is not _C10D.barrier.default)


class DistTracker(StorageTracker):
    """:class:`StorageTracker` for DTensor, FSDP2's resized storages and collectives."""

    def __init__(self) -> None:
        super().__init__()
        self._entry_fake_mode: Any = None
        self._original_resize: Any = None
        self._original_propagate: Any = None
        self._original_wait: Any = None
        self._paused = 0
        self._thread = threading.get_ident()
        self.after_collective: Any = None
        """Real runs: called after every collective (gloo's release made synchronous)."""
        self.current_key: dict[int, int] = {}
        """Storage id -> its key now (a resize gives a storage a new key)."""

    # Storages ------------------------------------------------------------------------------
    def key(self, tensor: torch.Tensor) -> int:
        tensor = local_tensor(tensor)
        sid = id(tensor.untyped_storage())
        before = len(self.nbytes)
        key = super().key(tensor)
        if len(self.nbytes) > before:
            self.current_key[sid] = key
        return self.current_key.get(sid, key)

    def known(self, tensor: torch.Tensor) -> int | None:
        sid = id(local_tensor(tensor).untyped_storage())
        if super().known(local_tensor(tensor)) is None:
            return None
        return self.current_key.get(sid)

    def _free(self, sid: int, key: int) -> None:
        current = self.current_key.pop(sid, key)
        super()._free(sid, current)

    def _resized(self, storage: torch.UntypedStorage) -> None:
        """Log a resized storage as a free of its old bytes and an allocation of its new ones."""
        sid = id(storage)
        old = self.current_key.get(sid)
        if old is None:
            return
        new_bytes = int(storage.nbytes())
        if new_bytes == self.nbytes[old]:
            return
        self.events.append(~old)
        key = len(self.nbytes)
        self.nbytes.append(new_bytes)
        self.flags.append(self.flags[old])
        self.events.append(key)
        self.current_key[sid] = key
        for table in (self.module_of, self.field_of):
            if old in table:
                table[key] = table[old]
        if self.on_alloc is not None:
            self.on_alloc(key)

    # Entering ------------------------------------------------------------------------------
    def __enter__(self) -> DistTracker:
        self._entry_fake_mode = active_fake_mode()
        self._original_resize = original = torch.UntypedStorage.resize_
        tracker = self

        @functools.wraps(original)
        def resize_(storage: torch.UntypedStorage, size: int) -> Any:
            out = original(storage, size)
            tracker._resized(storage)
            return out

        torch.UntypedStorage.resize_ = resize_  # type: ignore[method-assign]
        self._original_propagate = propagate = _Propagator._propagate_tensor_meta_non_cached

        @functools.wraps(propagate)
        def propagate_unseen(*args: Any, **kwargs: Any) -> Any:
            tracker._paused += 1
            try:
                return propagate(*args, **kwargs)
            finally:
                tracker._paused -= 1

        _Propagator._propagate_tensor_meta_non_cached = propagate_unseen  # type: ignore[method-assign]
        self._original_wait = wait = dist.Work.wait

        @functools.wraps(wait)
        def wait_unseen(work: Any, *args: Any, **kwargs: Any) -> Any:
            tracker._paused += 1
            try:
                return wait(work, *args, **kwargs)
            finally:
                tracker._paused -= 1

        dist.Work.wait = wait_unseen  # type: ignore[method-assign]
        super().__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        torch.UntypedStorage.resize_ = self._original_resize  # type: ignore[method-assign]
        _Propagator._propagate_tensor_meta_non_cached = self._original_propagate  # type: ignore[method-assign]
        dist.Work.wait = self._original_wait  # type: ignore[method-assign]
        super().__exit__(*exc)

    # Dispatch ------------------------------------------------------------------------------
    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        if any(t is DTensor or issubclass(t, DTensor) for t in types):
            return NotImplemented
        if threading.get_ident() != self._thread:
            # a communication backend's own work on its threads: its buffers, not the step's
            return func(*args, **(kwargs or {}))
        if self._paused or active_fake_mode() is not self._entry_fake_mode:
            # DTensor's sharding propagation (shapes only)
            return func(*args, **(kwargs or {}))
        if func is _WAIT and self._entry_fake_mode is not None:
            return args[0]
        out = super().__torch_dispatch__(func, types, args, kwargs)
        if func is _C10D._allgather_base_.default:
            self.flag(args[0], CommFlag.ALL_GATHER)
        elif func is _C10D._reduce_scatter_base_.default:
            self.flag(args[1], CommFlag.REDUCE_SCATTER)
        if self.after_collective is not None and _is_collective(func):
            self.after_collective()
        return out
