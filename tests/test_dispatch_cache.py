"""The trace's dispatch cache gives exactly the tensors FakeTensorMode gives (trace extra).

The cache rebuilds outputs itself (trace/dispatch_cache.py); these checks hold each rebuilt
output against the fake mode's own on the same call: metadata, the storage it aliases, the
instance attributes and dispatch keys of the FakeTensor. A torch upgrade that changes what
FakeTensor's constructor sets fails here, before it can change a trace.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from torch._subclasses.fake_tensor import FakeTensor, FakeTensorMode  # noqa: E402

from memplan.trace.dispatch_cache import DispatchCache  # noqa: E402
from memplan.trace.tracker import StorageTracker  # noqa: E402

pytestmark = pytest.mark.trace

OPS: dict[str, Callable[[Any, Any], Any]] = {
    "add": lambda x, w: x + 1,
    "mm": lambda x, w: x @ w,
    "view": lambda x, w: x.view(32),
    "transpose": lambda x, w: x.t(),
    "slice": lambda x, w: x[1:3],
    "unsafe_view": lambda x, w: torch.ops.aten._unsafe_view(x, [32]),
    "inplace": lambda x, w: x.mul_(2),
    "split": lambda x, w: x.split(2),
    "to_bf16": lambda x, w: x.to(torch.bfloat16),
    "expand": lambda x, w: x[:, :1].expand(4, 8),
    "empty": lambda x, w: torch.empty(3, 5, dtype=torch.float16),
}


def _describe(out: Any, inputs: tuple[Any, ...]) -> Any:
    """Everything observable about an output: metadata, aliasing, the FakeTensor's state."""
    if isinstance(out, (tuple, list)):
        return [_describe(item, inputs) for item in out]
    storages = [t.untyped_storage()._cdata for t in inputs]
    storage = out.untyped_storage()._cdata
    return {
        "type": type(out),
        "shape": tuple(out.shape),
        "stride": out.stride(),
        "offset": out.storage_offset(),
        "dtype": out.dtype,
        "device": out.device,
        "requires_grad": out.requires_grad,
        "storage_bytes": out.untyped_storage().nbytes(),
        "aliases": storages.index(storage) if storage in storages else None,
        "is_input": next((i for i, t in enumerate(inputs) if t is out), None),
        "keys": str(torch._C._dispatch_key_set(out)),
        "attributes": {k: v for k, v in vars(out).items() if k != "fake_mode"},
        "same_mode": out.fake_mode is inputs[0].fake_mode,
    }


def _run(name: str, cached: bool) -> list[Any]:
    """The op three times under a tracker (the third call is answered by the cache)."""
    fake_mode = FakeTensorMode()
    tracker = StorageTracker(DispatchCache(fake_mode) if cached else None)
    described = []
    with fake_mode, tracker:
        for _ in range(3):
            x = torch.empty(4, 8)
            w = torch.empty(8, 8)
            described.append(_describe(OPS[name](x, w), (x, w)))
    return described


@pytest.mark.parametrize("name", sorted(OPS))
def test_cached_outputs_equal_the_fake_modes(name: str) -> None:
    assert _run(name, cached=True) == _run(name, cached=False)


def test_the_cache_answers_repeated_calls() -> None:
    fake_mode = FakeTensorMode()
    cache = DispatchCache(fake_mode)
    with fake_mode, StorageTracker(cache):
        x = torch.empty(16, 16)
        before = cache.hits
        for _ in range(4):
            x + 1
    assert cache.hits - before >= 2


def test_a_tensor_holding_a_constant_is_left_to_the_fake_mode() -> None:
    fake_mode = FakeTensorMode()
    with fake_mode, StorageTracker(DispatchCache(fake_mode)):
        step = torch.tensor(3.0)
        assert isinstance(step, FakeTensor) and step.constant is not None
        assert step.item() == 3.0
        step.add_(1)
        assert step.item() == 4.0  # the fake mode kept the constant up to date
