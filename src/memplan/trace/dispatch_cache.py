"""A fast front for ``FakeTensorMode``'s dispatch cache, serving the tracker's ops.

A traced step repeats the same few hundred op signatures thousands of times (every layer of a
7B model runs the same ops on tensors of the same shapes). ``FakeTensorMode`` caches the
output metadata of such calls (``_cached_dispatch_impl``), but its cache key is built by
generic code (``_prep_args_for_hash``, ``extract_tensor_metadata``) that costs more than the
rest of the op, and each op crosses from the tracker back into C++ and into the fake mode.

:class:`DispatchCache` keys a call on the facts the fake cache keys on (the op; default dtype
and device; inference mode; each argument's type and value; each fake tensor argument's dtype,
shape, strides, device, layout, storage offset and size, ``requires_grad``, conj/neg bits),
read directly. The first time a signature repeats, the call still goes through the fake mode,
and it is remembered only if the fake mode made a valid cache entry for it; the entry's
outputs are then rebuilt here the way the fake mode rebuilds them on a cache hit
(``_get_output_tensor_from_cache_entry``): a new meta tensor of the recorded metadata, on the
storage of the input for a view, or the input itself for an in-place op. Whatever the fake mode
does not cache (data-dependent ops, tensors holding constants, symbolic shapes, non-fake
tensors) keeps going through it, every time.

Shortcuts on top, each giving exactly what the fake mode gives:

- ``prim.device`` and the other queries the fake mode serves before its cache
  (``_DISPATCH_META_HANDLERS``) use the same handlers. In a 7B training step two thirds of
  the calls the tracker sees are the autograd engine asking a tensor its device.
- ``item()`` of a tensor holding a constant (the optimizer's step counters) is computed on the
  constant, as the fake mode computes it (``_dispatch_impl``, constant propagation).
- ``aten._unsafe_view`` (a reshape whose output shares the input's storage, which the fake
  cache leaves out only because the op is not tagged as a view) is rebuilt as a view.
- An in-place ``_foreach_`` op (the optimizer step) on fake tensors holding no constant returns
  nothing and changes no tensor's metadata: the fake mode would run its meta kernel only to
  check the shapes (``foreach_run_and_map_input_device``), so it is not run. The step
  counters, whose values the fake mode keeps as constants, still go through it.
"""

from __future__ import annotations

import enum
import functools
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch._subclasses._fake_tensor_utils import _CacheKeyState
from torch._subclasses.fake_tensor import (
    _DISPATCH_META_HANDLERS,
    FakeTensor,
    FakeTensorMode,
    _BypassDispatchCache,
    _DispatchCacheValidEntry,
)

__all__ = ["DispatchCache"]

_SCALAR_TYPES = frozenset({int, float, bool, str, type(None)}) | frozenset(
    {torch.dtype, torch.device, torch.layout, torch.memory_format}
)
_DEVICE_HANDLER = _DISPATCH_META_HANDLERS[torch.ops.prim.device.default]
_UNSAFE_VIEW = torch.ops.aten._unsafe_view.default
MAX_ENTRIES = 1 << 16
"""Signatures kept; a long-lived process (a server) starts over past this many."""


class _Uncacheable(Exception):
    """An argument the fake cache would not key on, or keys on by facts not read here."""


_SeenOnce = object()
"""Plan of a signature met once: it went through the fake mode; the second time, it is learnt."""
_NotCached = object()
"""Plan of a signature the fake mode does not cache: it always goes through the fake mode."""


@dataclass(frozen=True, slots=True)
class TensorPlan:
    """How to rebuild one output tensor (the fields of the fake cache's ``TensorMetadata``)."""

    shape: tuple[int, ...]
    stride: tuple[int, ...]
    storage_offset: int
    dtype: torch.dtype
    layout: torch.layout
    device: torch.device
    requires_grad: bool
    is_conj: bool
    is_neg: bool
    alias_of: int | None
    """Index of the argument whose storage the output shares (views), else a new storage."""


@dataclass(frozen=True, slots=True)
class Inplace:
    """The output is the argument at ``index``."""

    index: int


@dataclass(frozen=True, slots=True)
class Value:
    """The output is a fixed Python value (``None``, an int)."""

    value: Any


@dataclass(frozen=True, slots=True)
class Several:
    """A tuple of outputs."""

    parts: tuple[Any, ...]


class DispatchCache:
    """Answers the calls the fake mode has cached, without re-entering it.

    The plans are shared by every trace of the process, as ``FakeTensorMode.cache`` is shared
    by every fake mode: a plan holds metadata only, and each session's fake tensors are
    rebuilt for its own fake mode.
    """

    _plans: ClassVar[dict[tuple[Any, ...], Any]] = {}

    def __init__(self, fake_mode: FakeTensorMode) -> None:
        self.fake_mode = fake_mode
        self._templates: dict[torch.device, dict[str, Any]] = {}
        self._unsafe_data_ptr = fake_mode._allow_unsafe_data_ptr_access
        self._caching = fake_mode.shape_env is None and fake_mode.cache_enabled
        """No symbolic shapes (this engine has none) and the fake mode's cache on."""
        self.hits = 0

    def device(self, func: Any, args: Any) -> Any:
        """``prim.device``, answered by the fake mode's own handler."""
        if len(args) == 1 and type(args[0]) is FakeTensor:
            return _DEVICE_HANDLER(args)
        return func(*args)

    def dispatch(self, func: Any, args: Any, kwargs: dict[str, Any]) -> Any:
        """``func(*args, **kwargs)`` as the fake mode would answer it."""
        kind = _kind_of(func)
        if kind is _Kind.META_QUERY and all(type(arg) is FakeTensor for arg in args):
            return _DISPATCH_META_HANDLERS[func](args)
        if kind is _Kind.SCALAR and not kwargs and self._holds_constant(args):
            # item() of a tensor holding a constant (the optimizer's step counters): the
            # fake mode computes it on the constant, exactly so (``_dispatch_impl``)
            with torch._C._DisableTorchDispatch():
                return func(args[0].constant)
        if not self._caching:
            return func(*args, **kwargs)
        try:
            key = self._key(func, args, kwargs)
        except _Uncacheable:
            return func(*args, **kwargs)
        if kind is _Kind.INPLACE_FOREACH:
            # on fake tensors holding no constant, nothing to compute: the op returns nothing
            # and changes no tensor's metadata (the fake mode would only check the shapes)
            return None
        plan = self._plans.get(key)
        if plan is not None and plan is not _SeenOnce:
            if plan is _NotCached:
                return func(*args, **kwargs)
            self.hits += 1
            return self._build(plan, args)
        if plan is None:
            # a signature met once is not worth the fake mode's cache key: only a repeated
            # one is learnt
            self._remember(key, _SeenOnce)
            return func(*args, **kwargs)
        return self._learn(key, func, args, kwargs)

    def _holds_constant(self, args: Any) -> bool:
        return (
            len(args) == 1
            and type(args[0]) is FakeTensor
            and args[0].fake_mode is self.fake_mode
            and args[0].constant is not None
        )

    # Learning a signature ------------------------------------------------------------------
    def _learn(self, key: tuple[Any, ...], func: Any, args: Any, kwargs: Any) -> Any:
        """Run through the fake mode; keep a plan if its answer can be rebuilt."""
        if func is _UNSAFE_VIEW:
            out = func(*args, **kwargs)
            self._remember(key, _alias_plan(out, args) or _NotCached)
            return out
        try:
            fake_key = self.fake_mode._cache_key(_CacheKeyState(None), func, args, kwargs)
        except _BypassDispatchCache:
            fake_key = None
        out = func(*args, **kwargs)
        entry = FakeTensorMode.cache.get(fake_key) if fake_key is not None else None
        if isinstance(entry, _DispatchCacheValidEntry):
            self._remember(key, _plan_of_entry(entry, func))
        else:
            self._remember(key, _NotCached)
        return out

    def _remember(self, key: tuple[Any, ...], plan: Any) -> None:
        if len(self._plans) >= MAX_ENTRIES:
            self._plans.clear()
        self._plans[key] = plan

    # Rebuilding outputs --------------------------------------------------------------------
    def _build(self, plan: Any, args: Any) -> Any:
        if type(plan) is TensorPlan:
            return self._tensor(plan, args)
        if type(plan) is Inplace:
            return args[plan.index]
        if type(plan) is Value:
            return plan.value
        return tuple(self._build(part, args) for part in plan.parts)

    def _tensor(self, plan: TensorPlan, args: Any) -> FakeTensor:
        """``_get_output_tensor_from_cache_entry`` without its generic steps (no symbolic
        sizes here): a meta tensor of the recorded metadata, wrapped as a fake tensor."""
        with torch._C._DisableTorchDispatch():
            empty = torch.empty_strided(
                plan.shape,
                plan.stride,
                dtype=plan.dtype,
                layout=plan.layout,
                device="meta",
                requires_grad=plan.requires_grad,
            )
            if plan.alias_of is not None:
                storage = args[plan.alias_of].untyped_storage()
                empty.set_(storage, plan.storage_offset, plan.shape, plan.stride)
        if plan.is_conj:
            torch._C._set_conj(empty, True)
        if plan.is_neg:
            torch._C._set_neg(empty, True)
        return self._wrap(empty, plan.device)

    def _wrap(self, meta: torch.Tensor, device: torch.device) -> FakeTensor:
        """``FakeTensor(fake_mode, meta, device)``: the same subclass instance, with the
        attributes its constructor sets (copied from one tensor it built) instead of its
        argument checks, which cost more than the op."""
        template = self._templates.get(device)
        if template is None:
            template = self._templates[device] = _fake_tensor_attributes(self.fake_mode, device)
        tensor = torch.Tensor._make_subclass(
            FakeTensor,
            meta,
            meta.requires_grad,
            dispatch_device=True,
            device_for_backend_keys=template["_fake_device"],
        )
        if self._unsafe_data_ptr:
            torch._C._set_warn_deprecated_on_mutable_data_ptr(tensor)
        else:
            torch._C._set_throw_on_mutable_data_ptr(tensor)
        tensor.__dict__.update(template)
        return tensor  # type: ignore[return-value]

    # Keys ----------------------------------------------------------------------------------
    def _key(self, func: Any, args: Any, kwargs: dict[str, Any]) -> tuple[Any, ...]:
        """The signature of a call (raises _Uncacheable for what the fake cache refuses)."""
        arg_key = self._arg_key
        return (
            func,
            torch.get_default_dtype(),
            torch._C._get_default_device(),
            torch.is_inference_mode_enabled(),
            tuple([arg_key(arg) for arg in args]),
            tuple([(name, arg_key(value)) for name, value in kwargs.items()]),
        )

    def _arg_key(self, value: Any) -> Any:
        kind = type(value)
        if kind is FakeTensor:
            return self._tensor_key(value)
        if kind in _SCALAR_TYPES:
            if kind is float and value != value:
                raise _Uncacheable  # NaN never equals itself: it would never be found again
            return (kind, value)
        if kind is list or kind is tuple:
            return (kind, tuple([self._arg_key(item) for item in value]))
        raise _Uncacheable

    def _tensor_key(self, tensor: FakeTensor) -> tuple[Any, ...]:
        """The facts ``extract_tensor_metadata`` gives the fake cache key (the memory format
        follows from shape and strides, quantization from the dtype)."""
        if (
            tensor.fake_mode is not self.fake_mode
            or tensor.constant is not None
            or tensor.layout is not torch.strided
        ):
            raise _Uncacheable
        return (
            tensor.dtype,
            tensor.shape,
            tensor.stride(),
            tensor.fake_device,
            tensor.storage_offset(),
            tensor.untyped_storage().nbytes(),
            tensor.requires_grad,
            tensor.is_conj(),
            tensor.is_neg(),
            tensor.is_inference(),
        )


def _plan_of_entry(entry: _DispatchCacheValidEntry, func: Any) -> Any:
    """The plan that rebuilds what the fake mode rebuilds from ``entry``."""
    parts = tuple(_plan_of_output(info, func) for info in entry.output_infos)
    return Several(parts) if entry.is_output_tuple else parts[0]


def _plan_of_output(info: Any, func: Any) -> Any:
    if info.inplace_idx is not None:
        return Inplace(info.inplace_idx)
    meta = info.metadata
    if meta is None:
        return Value(info.constant_value)
    view = isinstance(func, torch._ops.OpOverload) and func.is_view
    return TensorPlan(
        shape=tuple(meta.shape),
        stride=tuple(meta.stride),
        storage_offset=meta.storage_offset,
        dtype=meta.dtype,
        layout=meta.layout,
        device=meta.device,
        requires_grad=meta.requires_grad,
        is_conj=meta.is_conj,
        is_neg=meta.is_neg,
        alias_of=info.view_idx if view else None,
    )


def _alias_plan(out: Any, args: Any) -> TensorPlan | None:
    """An output that shares the storage of the first argument, rebuilt as a view of it."""
    if type(out) is not FakeTensor or not args or type(args[0]) is not FakeTensor:
        return None
    if out.untyped_storage()._cdata != args[0].untyped_storage()._cdata:
        return None
    return TensorPlan(
        shape=tuple(out.shape),
        stride=tuple(out.stride()),
        storage_offset=out.storage_offset(),
        dtype=out.dtype,
        layout=out.layout,
        device=out.fake_device,
        requires_grad=out.requires_grad,
        is_conj=out.is_conj(),
        is_neg=out.is_neg(),
        alias_of=0,
    )


def _fake_tensor_attributes(fake_mode: FakeTensorMode, device: torch.device) -> dict[str, Any]:
    """The instance attributes ``FakeTensor.__new__`` gives a plain output on ``device``."""
    with torch._C._DisableTorchDispatch():
        meta = torch.empty(0, device="meta")
    return dict(FakeTensor(fake_mode, meta, device).__dict__)


class _Kind(enum.Enum):
    """How :meth:`DispatchCache.dispatch` treats an op."""

    META_QUERY = "answered by the fake mode before its cache (prim.device, aten.size ...)"
    SCALAR = "aten._local_scalar_dense (item())"
    INPLACE_FOREACH = "aten::_foreach_*_, which returns nothing"
    OTHER = "the rest"


@functools.cache
def _kind_of(func: Any) -> _Kind:
    if func in _DISPATCH_META_HANDLERS:
        return _Kind.META_QUERY
    if func is torch.ops.aten._local_scalar_dense.default:
        return _Kind.SCALAR
    schema = getattr(func, "_schema", None)
    if (
        schema is not None
        and schema.name.startswith("aten::_foreach_")
        and schema.name.endswith("_")
        and not schema.returns
    ):
        return _Kind.INPLACE_FOREACH
    return _Kind.OTHER
