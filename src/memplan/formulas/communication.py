"""Collectives: bytes each rank sends per step, the link they cross, and their time.

**Contract:** plain arithmetic, valid on ints, floats and NumPy arrays (see
``memplan.formulas.parallel``).

Cost model (NCCL's own convention, nccl-tests ``doc/PERFORMANCE.md``): a collective on ``n``
ranks over a buffer of ``S`` bytes moves, per rank and direction,

- all-reduce (ring): ``2 (n - 1) / n * S`` (reduce-scatter then all-gather);
- all-reduce (tree): ``2 * S`` at most; NCCL's double binary tree reaches the same bus
  bandwidth as the ring for large messages, so memplan uses the ring figure for both;
- reduce-scatter and all-gather (ring): ``(n - 1) / n * S`` (``S`` the unsharded size);
- all-to-all: ``(n - 1) / n * S`` (balanced);
- send/recv (pipeline): ``S``.

Time is ``bytes / link bandwidth`` (one direction), the "bus bandwidth" nccl-tests reports; no
latency term (messages here are MiB to GiB). The link is NVLink when the group fits inside a
node and the network otherwise (ranks are laid out tp innermost, then cp, dp, pp: Megatron-LM's
default order ``tp-cp-ep-dp-pp``), so a group of ``n`` ranks at stride ``k`` spans ``n * k``
consecutive GPUs.
"""

from __future__ import annotations

from typing import Any

from memplan.formulas.parallel import where

__all__ = [
    "ALGORITHM_FACTORS",
    "all_gather_wire_bytes",
    "all_reduce_wire_bytes",
    "all_to_all_wire_bytes",
    "collective_seconds",
    "crosses_nodes",
    "reduce_scatter_wire_bytes",
]

Num = Any

ALGORITHM_FACTORS = {
    "all-reduce": "2 (n-1)/n (ring; tree reaches the same bus bandwidth for large messages)",
    "reduce-scatter": "(n-1)/n",
    "all-gather": "(n-1)/n",
    "all-to-all": "(n-1)/n (balanced routing)",
    "send/recv": "1",
}
"""Bytes on the wire per byte of buffer, per rank (nccl-tests PERFORMANCE.md)."""


def all_reduce_wire_bytes(size_bytes: Num, n: Num) -> Num:
    """Ring all-reduce: ``2 (n - 1) / n * S``."""
    return 2 * (n - 1) * size_bytes / n


def reduce_scatter_wire_bytes(size_bytes: Num, n: Num) -> Num:
    """Ring reduce-scatter of an ``S``-byte input: ``(n - 1) / n * S``."""
    return (n - 1) * size_bytes / n


def all_gather_wire_bytes(size_bytes: Num, n: Num) -> Num:
    """Ring all-gather into an ``S``-byte output: ``(n - 1) / n * S``."""
    return (n - 1) * size_bytes / n


def all_to_all_wire_bytes(size_bytes: Num, n: Num) -> Num:
    """Balanced all-to-all of an ``S``-byte buffer: ``(n - 1) / n * S`` leaves the rank."""
    return (n - 1) * size_bytes / n


def crosses_nodes(group_size: Num, stride: Num, gpus_per_node: Num) -> Num:
    """1 when a group of ``group_size`` ranks at ``stride`` spans more than one node."""
    return (group_size > 1) * (group_size * stride > gpus_per_node)


def collective_seconds(
    wire_bytes: Num, group_size: Num, stride: Num, gpus_per_node: Num, nvlink: Num, network: Num
) -> Num:
    """Seconds for ``wire_bytes`` over the group's slowest link (no latency term)."""
    inter = crosses_nodes(group_size, stride, gpus_per_node)
    return wire_bytes / where(inter, network, nvlink)
