"""PyTorch's CUDA caching allocator: the facts both engines use, defined once.

From ``c10/cuda/CUDACachingAllocator.cpp`` (native allocator, default settings):

- every request is rounded up to a multiple of ``kMinBlockSize`` = 512 B (``round_size``);
- requests of at most ``kSmallSize`` = 1 MiB come from the small pool, whose segments are
  ``kSmallBuffer`` = 2 MiB; larger ones from the large pool, whose segments are
  ``kLargeBuffer`` = 20 MiB for requests under ``kMinLargeAlloc`` = 10 MiB and the request
  rounded up to ``kRoundLarge`` = 2 MiB above (``get_allocation_size``);
- a block is split only when the rest is worth keeping (``should_split``: at least 512 B in the
  small pool, more than 1 MiB in the large pool).

The trace replays these rules op by op (:mod:`memplan.trace.allocator`); the analytic engine
rounds each tensor (:func:`alloc_bytes`) and, for a fresh request, counts its block
(:func:`cuda_block_bytes`).
"""

from __future__ import annotations

__all__ = [
    "ALLOCATOR_ROUND_BYTES",
    "LARGE_BUFFER_BYTES",
    "MIN_LARGE_ALLOC_BYTES",
    "ROUND_LARGE_BYTES",
    "SMALL_BUFFER_BYTES",
    "SMALL_SIZE_BYTES",
    "alloc_bytes",
    "cuda_block_bytes",
]

ALLOCATOR_ROUND_BYTES = 512
"""``kMinBlockSize``: every block is a multiple of 512 bytes."""
SMALL_SIZE_BYTES = 1 << 20
"""``kSmallSize``: requests up to 1 MiB use the small pool."""
SMALL_BUFFER_BYTES = 2 << 20
"""``kSmallBuffer``: the segment size of the small pool."""
LARGE_BUFFER_BYTES = 20 << 20
"""``kLargeBuffer``: the segment for a large request under 10 MiB."""
MIN_LARGE_ALLOC_BYTES = 10 << 20
"""``kMinLargeAlloc``: from this size on, a segment is the request rounded to 2 MiB."""
ROUND_LARGE_BYTES = 2 << 20
"""``kRoundLarge``."""


def alloc_bytes(n_bytes: int, round_to: int = ALLOCATOR_ROUND_BYTES) -> int:
    """Bytes one allocation of ``n_bytes`` occupies (0 stays 0; ``round_to=1``: CPU, exact)."""
    if n_bytes <= 0:
        return 0
    return -(-n_bytes // round_to) * round_to


def cuda_block_bytes(n_bytes: int) -> int:
    """Bytes the caching allocator counts as allocated for one fresh request.

    A request is rounded up to 512 B; a large one (> 1 MiB) gets a segment of
    ``roundup(size, 2 MiB)`` (20 MiB below 10 MiB), and the block is split only when more than
    1 MiB would remain; otherwise the whole segment is the block and ``allocated_bytes`` counts
    all of it. Assumes no free block is reused (a fresh segment)."""
    rounded = max(ALLOCATOR_ROUND_BYTES, alloc_bytes(n_bytes))
    if rounded <= SMALL_SIZE_BYTES:
        return rounded
    if rounded < MIN_LARGE_ALLOC_BYTES:
        segment = LARGE_BUFFER_BYTES
    else:
        segment = alloc_bytes(rounded, ROUND_LARGE_BYTES)
    return rounded if segment - rounded > SMALL_SIZE_BYTES else segment
