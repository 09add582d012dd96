"""Live-storage tracking: every allocation and free of a traced step, by storage identity.

A :class:`StorageTracker` is a ``TorchDispatchMode`` placed above ``FakeTensorMode``. Each op's
outputs are looked at once; a storage never seen before is given a key, its size is recorded
and a ``weakref.finalize`` callback records its free. This follows the idea of PyTorch's
``torch.distributed._tools.mem_tracker`` (weak references to untyped storages) without its
per-module bookkeeping, which is what makes it an order of magnitude faster
(TRACE-NOTES.md, "Tooling facts").

Fake tensors report ``data_ptr() == 0``, so storages are told apart by object identity; the
Python storage object lives exactly as long as the C++ storage (PyObject preservation).

Nothing is summed at run time: the tracker keeps an event log (``key`` for an allocation,
``~key`` for a free) and flags per storage (parameter, gradient, saved activation, ...), which
may be set after the allocation. :mod:`memplan.trace.timeline` replays the log afterwards.
"""

from __future__ import annotations

import weakref
from typing import TYPE_CHECKING, Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from memplan.trace.flops import flop_formula

if TYPE_CHECKING:
    from memplan.trace.dispatch_cache import DispatchCache

__all__ = ["Flag", "StorageTracker"]

_PRIM_DEVICE = torch.ops.prim.device.default


class Flag:
    """Bit flags of a storage; the category of a storage is its highest-priority flag."""

    PARAMETER = 1
    BUFFER = 2
    GRADIENT = 4
    OPTIMIZER_STATE = 8
    INPUT = 16
    KV_CACHE = 32
    AUTOCAST_CACHE = 64
    ACTIVATION = 128
    HOST = 256
    """Lives in host memory on the emulated GPU (e.g. AdamW's ``step`` counters): not counted."""


class StorageTracker(TorchDispatchMode):
    """Records the allocation and the free of every storage that ops produce."""

    def __init__(self, dispatch_cache: DispatchCache | None = None) -> None:
        super().__init__()
        self.dispatch_cache = dispatch_cache
        """Answers the calls the fake mode has cached (None: every call goes to ``func``)."""
        self._key_by_id: dict[int, int] = {}
        self.nbytes: list[int] = []
        self.flags: list[int] = []
        self.events: list[int] = []
        self.module_of: dict[int, str] = {}
        self.field_of: dict[int, str] = {}
        self.count_flops = False
        self.flops = 0
        self.n_ops = 0
        self.module_stack: list[str] = [""]
        self.on_op: Any = None
        self.on_alloc: Any = None

    # Storages ------------------------------------------------------------------------------
    def key(self, tensor: torch.Tensor) -> int:
        """The key of ``tensor``'s storage, registering it (as allocated now) if new."""
        storage = tensor.untyped_storage()
        sid = id(storage)
        key = self._key_by_id.get(sid)
        if key is None:
            key = len(self.nbytes)
            self._key_by_id[sid] = key
            self.nbytes.append(int(storage.nbytes()))
            self.flags.append(0)
            self.events.append(key)
            weakref.finalize(storage, self._free, sid, key)
            if self.on_alloc is not None:
                self.on_alloc(key)
        return key

    def known(self, tensor: torch.Tensor) -> int | None:
        """The key of ``tensor``'s storage if it is tracked, else None (registers nothing)."""
        return self._key_by_id.get(id(tensor.untyped_storage()))

    def _free(self, sid: int, key: int) -> None:
        self._key_by_id.pop(sid, None)
        self.events.append(~key)

    def flag(self, tensor: torch.Tensor, flag: int) -> int:
        key = self.key(tensor)
        self.flags[key] |= flag
        return key

    def mark(self) -> int:
        """The current position in the event log (for phase boundaries)."""
        return len(self.events)

    def live_since(self, start: int) -> set[int]:
        """Keys of the storages allocated since event ``start`` and not freed since."""
        live: set[int] = set()
        for event in self.events[start:]:
            if event >= 0:
                live.add(event)
            else:
                live.discard(~event)
        return live

    # Dispatch ------------------------------------------------------------------------------
    @classmethod
    def _should_skip_dynamo(cls) -> bool:
        # TorchDispatchMode wraps ``__torch_dispatch__`` in ``torch._dynamo.disable`` (a frame
        # evaluation switch around every op) for modes used under torch.compile; nothing here
        # is compiled
        return False

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        self.n_ops += 1
        if self.on_op is not None and self.n_ops % 256 == 0:
            self.on_op(self.n_ops)
        cache = self.dispatch_cache
        if cache is not None and func is _PRIM_DEVICE:
            # two thirds of the calls: the autograd engine asking a fake tensor its device
            return cache.device(func, args)
        kwargs = kwargs or {}
        # what this method does itself (storage lookups, the call below) is not a user-level
        # torch call: keep torch-function modes (the CUDA emulation) out of it
        with torch._C.DisableTorchFunction():
            out = func(*args, **kwargs) if cache is None else cache.dispatch(func, args, kwargs)
            self._register_outputs(out)
            if self.count_flops:
                counter = flop_formula(func._overloadpacket)
                if counter is not None:
                    self.flops += int(counter(*args, **kwargs, out_val=out))
        return out

    def _register_outputs(self, out: Any) -> None:
        if isinstance(out, torch.Tensor):
            self.key(out)
        elif isinstance(out, (tuple, list)):
            for item in out:
                if isinstance(item, torch.Tensor):
                    self.key(item)
                elif isinstance(item, (tuple, list)):
                    for sub in item:
                        if isinstance(sub, torch.Tensor):
                            self.key(sub)
