"""Replaying a tracker's event log: live bytes over time, peaks per phase, live set at a point.

Sizes are what the allocator hands out: under the CUDA target, PyTorch's caching allocator
rounds every request up to a multiple of 512 bytes (``round_size`` in
``c10/cuda/CUDACachingAllocator.cpp``: ``kMinBlockSize = 512``), and a zero-byte request
allocates nothing. Storages flagged as host memory count zero.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["CUDA_ROUNDING_BYTES", "Timeline", "allocated_bytes"]

CUDA_ROUNDING_BYTES = 512
"""``kMinBlockSize`` of c10/cuda/CUDACachingAllocator.cpp: every block is a multiple of it."""


def allocated_bytes(nbytes: int, round_to: int) -> int:
    """Bytes the allocator reserves for a request of ``nbytes`` (no rounding when ``round_to`` is 1)."""
    if nbytes <= 0:
        return 0
    if round_to <= 1:
        return nbytes
    return -(-nbytes // round_to) * round_to


@dataclass(slots=True)
class Timeline:
    """Live bytes after each event of a log (``key`` allocates, ``~key`` frees)."""

    sizes: list[int]
    events: list[int]
    levels: list[int]

    @classmethod
    def build(cls, sizes: list[int], events: list[int]) -> Timeline:
        levels = []
        level = 0
        for event in events:
            level += sizes[event] if event >= 0 else -sizes[~event]
            levels.append(level)
        return cls(sizes, events, levels)

    def at(self, index: int) -> int:
        """Live bytes once the first ``index`` events have happened."""
        return self.levels[index - 1] if index > 0 else 0

    def peak_between(self, start: int, stop: int) -> tuple[int, int]:
        """(bytes, position) of the highest level reached by events ``start .. stop-1``.

        The position is the event count at the peak (``at(position) == bytes``). The level at
        ``start`` itself counts, so an interval with no growth returns its starting level.
        """
        best, where = self.at(start), start
        levels = self.levels
        for index in range(start, min(stop, len(levels))):
            if levels[index] > best:
                best, where = levels[index], index + 1
        return best, where

    def live_at(self, position: int) -> set[int]:
        """Keys of the storages live after the first ``position`` events."""
        live: set[int] = set()
        for event in self.events[:position]:
            if event >= 0:
                live.add(event)
            else:
                live.discard(~event)
        return live
