"""The machinery around one traced run: fake mode, tracker, CUDA emulation, hooks.

A :class:`TraceSession` is entered once around building and running the model. It attributes
each storage to the module running when it was allocated and, after a forward, each saved
tensor to the autograd node and field that hold it
(``MmBackward0.self``, ``ScaledDotProductEfficientAttentionBackward0.log_sumexp``), in the
manner of seed 003, and to the module that made that node (module hooks record the autograd
sequence number at each module entry and exit). Walking the graph once costs far less than
``saved_tensors_hooks``, which doubles the time of a fake backward.
"""

from __future__ import annotations

import bisect
import contextlib
import functools
import gc
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn
from torch._subclasses.fake_tensor import FakeTensorMode

from memplan.trace.build import layer_index
from memplan.trace.cuda_env import GpuArch
from memplan.trace.dispatch_cache import DispatchCache
from memplan.trace.emulate import CudaEmulation
from memplan.trace.tracker import Flag, StorageTracker

__all__ = ["TraceSession"]


class TraceSession:
    """Fake mode + tracker + (CUDA target) emulation + module and saved-tensor hooks."""

    def __init__(
        self,
        *,
        fake: bool,
        cuda: bool,
        arch: GpuArch,
        sdpa_backend: str = "auto",
        autocast_dtype: torch.dtype | None = None,
        tracker: StorageTracker | None = None,
    ) -> None:
        self.fake = fake
        self.cuda = cuda
        self.fake_mode = FakeTensorMode() if fake else None
        # a tracker of its own (the distributed trace's) answers every op through the fake mode
        self.tracker = (
            tracker
            if tracker is not None
            else StorageTracker(
                DispatchCache(self.fake_mode) if self.fake_mode is not None else None
            )
        )
        self.emulation = (
            CudaEmulation(
                self.tracker, arch, sdpa_backend=sdpa_backend, autocast_dtype=autocast_dtype
            )
            if cuda
            else None
        )
        self.cpu_autocast_dtype = None if cuda else autocast_dtype
        self.names: dict[int, str] = {}
        self.alloc_module: dict[int, str] = {}
        self.in_backward = False
        self._recompute_depth = 0
        self._transitions: list[tuple[int, str]] = []
        self.checkpointed_layers = False
        self._stack = contextlib.ExitStack()

    # Entering ------------------------------------------------------------------------------
    def __enter__(self) -> TraceSession:
        stack = self._stack
        # Fake tensors take part in reference cycles that real ones do not; when Python's
        # cyclic collector frees them would make a trace vary by a few bytes from run to run.
        # It is switched off and run at the iteration boundaries instead (``collect``).
        if gc.isenabled():
            gc.disable()
            stack.callback(gc.enable)
        # what exists already (torch, transformers) is not scanned by those collections
        gc.freeze()
        stack.callback(gc.unfreeze)
        if self.fake_mode is not None:
            stack.enter_context(self.fake_mode)
        stack.enter_context(self.tracker)
        if self.emulation is not None:
            stack.enter_context(self.emulation)
        stack.enter_context(_module_hooks(self._pre_hook, self._post_hook))
        self.tracker.on_alloc = self._on_alloc
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stack.close()

    def collect(self) -> None:
        """Free what only reference cycles keep alive (at an iteration boundary)."""
        gc.collect()

    def flag_gradients(self, model: nn.Module) -> None:
        """Flag each trainable parameter's gradient as it is accumulated."""
        tracker = self.tracker

        def on_grad(param: torch.Tensor) -> None:
            if param.grad is not None:
                tracker.flag(param.grad, Flag.GRADIENT)

        for param in model.parameters():
            if param.requires_grad:
                param.register_post_accumulate_grad_hook(on_grad)

    def register_model(self, model: nn.Module) -> None:
        """Name every module and flag parameters and buffers."""
        self.names = {id(module): name for name, module in model.named_modules()}
        for param in model.parameters():
            self.tracker.flag(param, Flag.PARAMETER)
        for buffer in model.buffers():
            self.tracker.flag(buffer, Flag.BUFFER)

    @contextlib.contextmanager
    def autocast(self) -> Iterator[None]:
        """The autocast region of a forward (CUDA lists emulated, or real CPU autocast)."""
        if self.cpu_autocast_dtype is not None:
            with torch.autocast("cpu", dtype=self.cpu_autocast_dtype):
                yield
            return
        emulation = self.emulation
        if emulation is not None:
            emulation.autocast_on = emulation.autocast_dtype is not None
        try:
            yield
        finally:
            if emulation is not None:
                emulation.autocast_on = False
                emulation.clear_cache()

    # Hooks ---------------------------------------------------------------------------------
    def _pre_hook(self, module: nn.Module, args: Any) -> None:
        name = self.names.get(id(module), "other")
        self.tracker.module_stack.append(name)
        self._transitions.append((_sequence_nr(), name))

    def _post_hook(self, module: nn.Module, args: Any, output: Any) -> None:
        stack = self.tracker.module_stack
        if len(stack) > 1:
            stack.pop()
        self._transitions.append((_sequence_nr(), stack[-1]))

    def wrap_checkpointing(self, model: nn.Module) -> None:
        """Mark the recomputation of checkpointed layers (transformers' per-layer
        ``_gradient_checkpointing_func``): what it allocates is activations, and it runs in the
        forward's autocast state (torch.utils.checkpoint restores it), with its own cache."""
        for module in model.modules():
            original = getattr(module, "_gradient_checkpointing_func", None)
            if original is not None:
                module._gradient_checkpointing_func = functools.partial(self._checkpoint, original)

    def _checkpoint(self, original: Any, function: Any, *args: Any, **kwargs: Any) -> Any:
        def run(*inner_args: Any, **inner_kwargs: Any) -> Any:
            if not self.in_backward:
                return function(*inner_args, **inner_kwargs)
            with self._recompute_region():
                return function(*inner_args, **inner_kwargs)

        return original(run, *args, **kwargs)

    @contextlib.contextmanager
    def _recompute_region(self) -> Iterator[None]:
        emulation = self.emulation
        self._recompute_depth += 1
        if emulation is not None:
            emulation.autocast_on = emulation.autocast_dtype is not None
        try:
            yield
        finally:
            self._recompute_depth -= 1
            if emulation is not None:
                emulation.autocast_on = False
                emulation.clear_cache()

    def module_of_node(self, sequence_nr: int) -> str:
        """The innermost module that was running when the node ``sequence_nr`` was made."""
        index = bisect.bisect_right(self._transitions, (sequence_nr, "\uffff")) - 1
        return self._transitions[index][1] if index >= 0 else ""

    def _on_alloc(self, key: int) -> None:
        self.alloc_module[key] = self.tracker.module_stack[-1]
        if self._recompute_depth:
            # activations recomputed by gradient checkpointing during backward
            self.tracker.flags[key] |= Flag.ACTIVATION
            self.tracker.module_of.setdefault(key, self.tracker.module_stack[-1])

    # After a forward -----------------------------------------------------------------------
    def flag_graph_held(self, start: int, keep: set[int]) -> None:
        """Storages allocated since ``start`` and still live that nothing else claims are held
        by the autograd graph (e.g. a checkpointed layer's input): flag them as activations."""
        tracker = self.tracker
        for key in tracker.live_since(start) - keep:
            if tracker.flags[key] == 0:
                tracker.flags[key] = Flag.ACTIVATION
                tracker.module_of.setdefault(key, self.alloc_module.get(key, ""))

    def name_saved_fields(self, root: Any) -> None:
        """Walk the autograd graph from ``root``: flag every saved storage as an activation, and
        name it by the earliest node (in forward order) that saves it (``NodeName.field``) and
        by the module that was running when that node was made."""
        tracker = self.tracker
        best: dict[int, tuple[int, str]] = {}
        seen: set[int] = set()
        todo = [root]
        while todo:
            node = todo.pop()
            if node is None or id(node) in seen:
                continue
            seen.add(id(node))
            node_name = type(node).__name__
            order = node._sequence_nr()
            todo.extend(next_node for next_node, _ in node.next_functions)
            if self.checkpointed_layers and layer_index(self.module_of_node(order)) is not None:
                # reading a checkpointed node's saved tensor would run the recomputation
                continue
            for attr in _saved_attributes(node):
                try:
                    value = getattr(node, attr)
                except RuntimeError:
                    continue
                field = attr.removeprefix("_saved_")
                for tensor in _tensors(value):
                    key = tracker.known(tensor)
                    if key is not None and (key not in best or order < best[key][0]):
                        best[key] = (order, f"{node_name}.{field}")
        for key, (order, field) in best.items():
            tracker.flags[key] |= Flag.ACTIVATION
            tracker.field_of[key] = field
            tracker.module_of[key] = self.module_of_node(order)
        self._transitions.clear()


def _saved_attributes(node: Any) -> tuple[str, ...]:
    """The attributes through which an autograd node exposes what it saved: fixed by the
    class for nodes written in C++ (no instance ``__dict__``), per node for Python ones."""
    if hasattr(node, "__dict__"):
        return _saved_names(dir(node))
    return _saved_attributes_of_class(type(node))


@functools.cache
def _saved_attributes_of_class(node_type: type) -> tuple[str, ...]:
    return _saved_names(dir(node_type))


def _saved_names(names: list[str]) -> tuple[str, ...]:
    return tuple(name for name in names if name.startswith("_saved_") or name == "saved_tensors")


def _sequence_nr() -> int:
    return int(torch._C._autograd._get_sequence_nr())


def _tensors(value: Any) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, (tuple, list)):
        return [v for v in value if isinstance(v, torch.Tensor)]
    return []


@contextlib.contextmanager
def _module_hooks(pre: Any, post: Any) -> Iterator[None]:
    from torch.nn.modules.module import (
        register_module_forward_hook,
        register_module_forward_pre_hook,
    )

    handles = [register_module_forward_pre_hook(pre), register_module_forward_hook(post)]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
