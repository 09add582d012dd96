"""A model of PyTorch's CUDA caching allocator: reserved memory and fragmentation.

Pure Python (no torch), replayed over the allocation sequence a trace records. It follows
``c10/cuda/CUDACachingAllocator.cpp`` (native allocator, default settings, one stream; the
sizes are defined once, in :mod:`memplan.formulas.allocator`):

- requests are rounded up to a multiple of 512 B (``round_size``, ``kMinBlockSize``);
- requests of at most 1 MiB (``kSmallSize``) use the small pool, whose segments are 2 MiB
  (``kSmallBuffer``); larger ones use the large pool, whose segments are 20 MiB
  (``kLargeBuffer``) for requests under 10 MiB (``kMinLargeAlloc``) and the request rounded up
  to 2 MiB (``kRoundLarge``) above (``get_allocation_size``);
- a request takes the smallest cached free block of its pool that fits (best fit,
  ``get_free_block``), else a new segment (``cudaMalloc``);
- the block is split when the rest is worth keeping (``should_split``: at least 512 B in the
  small pool, more than 1 MiB in the large pool); otherwise the whole block is handed out, and
  counted as allocated;
- a freed block merges with free neighbours of its segment (``try_merge_blocks``); segments are
  never returned to the driver (no ``empty_cache``, no memory pressure modelled).
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass

from memplan.formulas.allocator import (
    ALLOCATOR_ROUND_BYTES,
    LARGE_BUFFER_BYTES,
    MIN_LARGE_ALLOC_BYTES,
    ROUND_LARGE_BYTES,
    SMALL_BUFFER_BYTES,
    SMALL_SIZE_BYTES,
    alloc_bytes,
)

__all__ = ["CachingAllocatorModel", "allocation_size", "round_size"]


def round_size(size: int) -> int:
    """``round_size``: at least 512 B, a multiple of 512 B."""
    return max(ALLOCATOR_ROUND_BYTES, alloc_bytes(size))


def allocation_size(size: int) -> int:
    """``get_allocation_size``: the segment ``cudaMalloc``'d for a (rounded) request."""
    if size <= SMALL_SIZE_BYTES:
        return SMALL_BUFFER_BYTES
    if size < MIN_LARGE_ALLOC_BYTES:
        return LARGE_BUFFER_BYTES
    return alloc_bytes(size, ROUND_LARGE_BYTES)


@dataclass(slots=True, eq=False)
class _Block:
    addr: int
    size: int
    small: bool
    free: bool = True
    prev: _Block | None = None
    next: _Block | None = None


class CachingAllocatorModel:
    """Replays ``malloc``/``free`` and tracks allocated and reserved bytes."""

    def __init__(self) -> None:
        self._free: dict[bool, list[tuple[int, int]]] = {True: [], False: []}
        self._by_addr: dict[int, _Block] = {}
        self._live: dict[int, _Block] = {}
        self._next_addr = 0
        self._next_handle = 0
        self.allocated_bytes = 0
        self.reserved_bytes = 0
        self.peak_allocated_bytes = 0
        self.peak_reserved_bytes = 0
        self.n_segments = 0

    def malloc(self, nbytes: int) -> int:
        """Allocate ``nbytes``; returns a handle for :meth:`free`."""
        size = round_size(nbytes)
        small = size <= SMALL_SIZE_BYTES
        block = self._take_free(size, small) or self._new_segment(size, small)
        rest = block.size - size
        if rest >= ALLOCATOR_ROUND_BYTES if small else rest > SMALL_SIZE_BYTES:
            tail = _Block(block.addr + size, rest, small, True, block, block.next)
            if block.next is not None:
                block.next.prev = tail
            block.next = tail
            block.size = size
            self._by_addr[tail.addr] = tail
            self._insert_free(tail)
        block.free = False
        handle = self._next_handle
        self._next_handle += 1
        self._live[handle] = block
        self.allocated_bytes += block.size
        self.peak_allocated_bytes = max(self.peak_allocated_bytes, self.allocated_bytes)
        return handle

    def free(self, handle: int) -> None:
        block = self._live.pop(handle)
        self.allocated_bytes -= block.size
        block.free = True
        for neighbour in (block.prev, block.next):
            if neighbour is not None and neighbour.free:
                self._remove_free(neighbour)
                block = self._merge(block, neighbour)
        self._insert_free(block)

    # Internals -----------------------------------------------------------------------------
    def _take_free(self, size: int, small: bool) -> _Block | None:
        pool = self._free[small]
        index = bisect.bisect_left(pool, (size, -1))
        if index == len(pool):
            return None
        _, addr = pool.pop(index)
        return self._by_addr[addr]

    def _new_segment(self, size: int, small: bool) -> _Block:
        segment = allocation_size(size)
        block = _Block(self._next_addr, segment, small)
        self._next_addr += segment
        self._by_addr[block.addr] = block
        self.reserved_bytes += segment
        self.peak_reserved_bytes = max(self.peak_reserved_bytes, self.reserved_bytes)
        self.n_segments += 1
        return block

    def _insert_free(self, block: _Block) -> None:
        bisect.insort(self._free[block.small], (block.size, block.addr))

    def _remove_free(self, block: _Block) -> None:
        pool = self._free[block.small]
        index = bisect.bisect_left(pool, (block.size, block.addr))
        del pool[index]

    def _merge(self, block: _Block, other: _Block) -> _Block:
        first, second = (block, other) if block.addr < other.addr else (other, block)
        first.size += second.size
        first.next = second.next
        if second.next is not None:
            second.next.prev = first
        del self._by_addr[second.addr]
        return first
