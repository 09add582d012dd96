"""Replaying a tracker's event log: live bytes over time, peaks per phase, live set at a point.

Sizes are what the allocator hands out (:func:`memplan.trace.assemble.sizes_of`): under the
CUDA target each request rounded up to the caching allocator's 512-byte blocks
(:mod:`memplan.formulas.allocator`), a zero-byte request nothing, host storages zero.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Timeline"]


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
