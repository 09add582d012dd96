"""Pure parts of the trace engine (no torch): allocator model, backend choice, timeline."""

from __future__ import annotations

import pytest

from memplan.errors import SetupError, UnknownGpuError
from memplan.formulas.allocator import alloc_bytes
from memplan.trace.allocator import (
    CachingAllocatorModel,
    allocation_size,
    round_size,
)
from memplan.trace.cuda_env import cublas_workspace_bytes, gpu_arch
from memplan.trace.timeline import Timeline

MIB = 2**20


def test_round_size_is_512_multiples() -> None:
    assert round_size(1) == 512
    assert round_size(512) == 512
    assert round_size(513) == 1024
    assert alloc_bytes(4, 512) == 512
    assert alloc_bytes(0, 512) == 0
    assert alloc_bytes(1000, 1) == 1000


def test_allocation_size_pools() -> None:
    assert allocation_size(512) == 2 * MIB  # small pool segment
    assert allocation_size(MIB) == 2 * MIB
    assert allocation_size(MIB + 512) == 20 * MIB  # large pool, < 10 MiB
    assert allocation_size(10 * MIB) == 10 * MIB  # rounded to 2 MiB
    assert allocation_size(11 * MIB) == 12 * MIB


def test_small_blocks_share_one_segment_and_split() -> None:
    model = CachingAllocatorModel()
    handles = [model.malloc(1000) for _ in range(4)]
    assert model.reserved_bytes == 2 * MIB
    assert model.n_segments == 1
    assert model.allocated_bytes == 4 * 1024
    for handle in handles:
        model.free(handle)
    assert model.allocated_bytes == 0
    # the whole segment merged back: a 2 MiB-1 KiB request... is large, another pool
    again = model.malloc(MIB)
    assert model.n_segments == 1  # served from the merged small segment
    model.free(again)


def test_large_pool_keeps_remainder_only_above_1_mib() -> None:
    model = CachingAllocatorModel()
    first = model.malloc(3 * MIB)  # a 20 MiB segment, split: 17 MiB remain free
    assert model.reserved_bytes == 20 * MIB
    second = model.malloc(16 * MIB + 512 * 1024)  # fits the 17 MiB block; rest 0.5 MiB kept whole
    assert model.n_segments == 1
    assert model.allocated_bytes == 20 * MIB  # the unsplit block counts whole
    model.free(first)
    model.free(second)
    assert model.allocated_bytes == 0
    big = model.malloc(20 * MIB)  # merged segment reused
    assert model.n_segments == 1
    model.free(big)


def test_fragmentation_needs_a_new_segment() -> None:
    model = CachingAllocatorModel()
    a = model.malloc(8 * MIB)
    b = model.malloc(8 * MIB)  # same 20 MiB segment: 4 MiB left
    model.free(a)  # 8 MiB hole before b
    c = model.malloc(12 * MIB)  # no free block of 12 MiB: new segment
    assert model.n_segments == 2
    assert model.reserved_bytes == 32 * MIB
    assert model.peak_reserved_bytes == 32 * MIB
    model.free(b)
    model.free(c)


def test_timeline_peaks_and_live_sets() -> None:
    sizes = [100, 200, 300]
    events = [0, 1, ~0, 2, ~1, ~2]
    timeline = Timeline.build(sizes, events)
    assert timeline.levels == [100, 300, 200, 500, 300, 0]
    assert timeline.peak_between(0, 6) == (500, 4)
    assert timeline.live_at(4) == {1, 2}
    assert timeline.at(0) == 0


def test_gpu_table_and_workspaces() -> None:
    assert gpu_arch(None).name == "H100-SXM-80GB"
    assert gpu_arch("nvidia-a100-sxm4-40gb").major == 8
    assert cublas_workspace_bytes(gpu_arch("H100")) == 32 * MIB
    assert cublas_workspace_bytes(gpu_arch("A100")) == 8 * MIB + 128 * 1024
    with pytest.raises(UnknownGpuError, match="unknown GPU"):
        gpu_arch("Voodoo3")
    with pytest.raises(SetupError, match="not a CUDA GPU"):
        gpu_arch("MI300X")


def test_cli_module_imports_without_torch() -> None:
    import subprocess
    import sys

    code = (
        "import sys, memplan.cli.trace, memplan.trace, memplan.cli.main as m; "
        "m.build_parser(); print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
