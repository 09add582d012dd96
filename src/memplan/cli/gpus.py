"""``memplan gpus``: the GPU catalog with memory, dense peaks, bandwidths and sources."""

from __future__ import annotations

import json
import sys
from typing import Any

from memplan.specs.hardware import COMPUTE_DTYPES, Gpu
from memplan.units import GIB

__all__ = ["gpu_to_dict", "register", "run"]


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "gpus",
        help="list the GPU catalog",
        description="Catalog GPUs: memory, dense peak TFLOP/s by dtype, bandwidths, sources.",
    )
    parser.add_argument("--json", action="store_true", help="print the catalog as JSON")
    parser.add_argument("--sources", action="store_true", help="print each GPU's sources")
    parser.set_defaults(func=run)


def gpu_to_dict(gpu: Gpu) -> dict[str, Any]:
    return {
        "name": gpu.name,
        "aliases": list(gpu.aliases),
        "vendor": gpu.vendor,
        "memory_bytes": gpu.memory_bytes,
        "memory_estimated": gpu.memory_estimated,
        "datasheet_memory_bytes": gpu.datasheet_memory_bytes,
        "tflops_dense": dict(gpu.tflops),
        "memory_bandwidth_bytes_per_s": gpu.memory_bandwidth_bytes_per_s,
        "interconnect": gpu.interconnect,
        "interconnect_bytes_per_s": gpu.interconnect_bytes_per_s,
        "pcie_bytes_per_s": gpu.pcie_bytes_per_s,
        "sources": list(gpu.sources),
        "notes": list(gpu.notes),
    }


def _row(gpu: Gpu) -> list[str]:
    peaks = [f"{gpu.tflops[d]:g}" if d in gpu.tflops else "-" for d in COMPUTE_DTYPES]
    bandwidth = gpu.memory_bandwidth_bytes_per_s or 0
    link = gpu.interconnect_bytes_per_s or 0
    return [
        gpu.name,
        f"{'~' if gpu.memory_estimated else ''}{gpu.memory_bytes / GIB:.2f}",
        *peaks,
        f"{bandwidth / 1e12:.2f}",
        f"{link / 1e9:g} {gpu.interconnect}",
    ]


def run(args: Any) -> int:
    from memplan.catalog.gpus import list_gpus

    gpus = list_gpus()
    out = sys.stdout
    if args.json:
        json.dump([gpu_to_dict(g) for g in gpus], out, indent=2, allow_nan=False)
        out.write("\n")
        return 0
    header = ["GPU", "GiB", *(f"{d}" for d in COMPUTE_DTYPES), "TB/s", "GPU-GPU GB/s"]
    rows = [header, *(_row(g) for g in gpus)]
    widths = [max(len(r[i]) for r in rows) for i in range(len(header) - 1)]
    for row in rows:
        cells = [
            cell.rjust(w) if i else cell.ljust(w)
            for i, (cell, w) in enumerate(zip(row, widths, strict=False))
        ]
        out.write("  ".join(cells) + "  " + row[-1] + "\n")
    out.write(
        "\nGiB: the total cudaMemGetInfo reports (what a program can allocate from, and what "
        "vLLM's\n--gpu-memory-utilization multiplies), not the marketing size; ~ marks an "
        "estimate.\nTFLOP/s are dense peaks (TOP/s for int8). `memplan gpus --sources` gives "
        "each figure's source.\n"
    )
    if args.sources:
        for gpu in gpus:
            out.write(f"\n{gpu.name} (also: {', '.join(gpu.aliases) or '-'})\n")
            for source in (*gpu.sources, *gpu.notes):
                out.write(f"  - {source}\n")
    return 0
