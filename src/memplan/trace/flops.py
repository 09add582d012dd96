"""FLOP formulas of the ops the trace counts: ``torch.utils.flop_counter``'s, plus grouped matmuls.

torch 2.13's ``flop_registry`` has no entry for ``aten._grouped_mm`` (the kernel behind
``torch.nn.functional.grouped_mm``, which transformers 5.23 runs for MoE experts by default),
nor for transformers' ``grouped_mm_fallback`` custom ops (its path for non-bf16 expert
weights, ``transformers/integrations/moe.py``). Counted as zero, a MoE model's expert matmuls
vanish from the trace's FLOPs. The formulas below count them as the matmuls they are; the
convention is ``flop_counter``'s (``2 m n k`` per (m, k) @ (k, n) product).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cache
from typing import Any

from torch.utils.flop_counter import flop_registry, shape_wrapper

__all__ = ["flop_formula", "grouped_mm_flops"]


def grouped_mm_flops(a_shape: tuple[int, ...], b_shape: tuple[int, ...]) -> int:
    """FLOPs of ``_grouped_mm(mat_a, mat_b, offs)``: ``2 x groups x m x k x n``.

    The layouts (``_meta_grouped_mm_common`` in torch 2.13's ``_meta_registrations.py``;
    ``F.grouped_mm``'s docstring):

    * 2d @ 3d, (T, k) @ (G, k, n) -> (T, n): the forward of the experts; the rows are split
      into G groups by ``offs``, each multiplied by its own (k, n) matrix: ``2 T k n``;
    * 3d @ 2d, (G, m, k) @ (k, N) -> (m, N): the columns split by ``offs``: ``2 m k N``;
    * 2d @ 2d, (m, K) @ (K, n) -> (G, m, n): the weight gradient, the shared dimension split
      by ``offs``, each slice to one group: ``2 m K n``;
    * 3d @ 3d, (G, m, k) @ (G, k, n): a batched matmul, ``2 G m k n``.

    Assumption: the groups cover the whole jagged dimension (``offs[-1]`` equals its length;
    the kernel skips rows beyond it). transformers' routing sends every token to ``top_k``
    experts, so its offsets do; under fake tensors their values cannot be read.
    """
    groups = a_shape[0] if len(a_shape) == 3 and len(b_shape) == 3 else 1
    m, k = a_shape[-2], a_shape[-1]
    n = b_shape[-1]
    return 2 * groups * m * k * n


@shape_wrapper
def _grouped_mm_flop(
    a_shape: tuple[int, ...], b_shape: tuple[int, ...], *args: Any, **kwargs: Any
) -> int:
    return grouped_mm_flops(a_shape, b_shape)


@shape_wrapper
def _grouped_mm_fallback_backward_flop(
    input_shape: tuple[int, ...], weight_shape: tuple[int, ...], *args: Any, **kwargs: Any
) -> int:
    """The input gradient and the weight gradient: each costs the forward's FLOPs."""
    return 2 * grouped_mm_flops(input_shape, weight_shape)


_EXTRA: dict[str, Callable[..., int]] = {
    "aten::_grouped_mm": _grouped_mm_flop,
    "transformers::grouped_mm_fallback": _grouped_mm_flop,
    "transformers::grouped_mm_fallback_backward": _grouped_mm_fallback_backward_flop,
}
"""Formulas by qualified op name (the transformers custom ops exist only once its MoE
integration is imported, so they are looked up by name, not by op object)."""


@cache
def flop_formula(packet: Any) -> Callable[..., int] | None:
    """The FLOP formula of an op (an ``OpOverloadPacket``), or None for ops that count zero.

    Called as ``formula(*args, **kwargs, out_val=out)``, like ``flop_registry``'s entries."""
    formula = flop_registry.get(packet)
    if formula is not None:
        return formula
    return _EXTRA.get(getattr(packet, "_qualified_op_name", ""))
