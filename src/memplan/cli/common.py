"""Shared CLI helpers: the GPU flags every command takes, and model resolution.

``add_gpu_flags(parser)`` adds ``--gpu NAME``, ``--gpu-memory SIZE``, ``--tflops X``,
``--bandwidth RATE`` and (for commands with a fit verdict) ``--cuda-context SIZE``;
``gpu_from_args(args)`` turns them into a :class:`Gpu` (or None when none was given). A catalog GPU's figures can be overridden one by one (``--gpu H100 --gpu-memory
40GiB`` for a MIG slice or a shared card).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
from typing import Any

from memplan.errors import SetupError
from memplan.specs.hardware import COMPUTE_DTYPES, Gpu, custom_gpu
from memplan.units import MAX_COUNT, parse_count, parse_size

__all__ = [
    "MAX_COUNT",
    "add_gpu_flags",
    "add_pipeline_flags",
    "count",
    "cuda_context_from_args",
    "gpu_from_args",
    "layer_counts",
    "non_negative_int",
    "parse_bandwidth",
    "positive_int",
]


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    try:
        value = int(text.replace("_", ""))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    if value > MAX_COUNT:
        raise argparse.ArgumentTypeError(f"expected at most 2**40, got a {len(text)}-digit number")
    return value


def layer_counts(text: str) -> tuple[int, ...]:
    """argparse type: comma-separated positive layer counts (``--pp-partition 10,11,11``)."""
    return tuple(positive_int(part.strip()) for part in text.split(","))


def add_pipeline_flags(parser: Any) -> None:
    """``--pp`` and ``--pp-partition``, as ``vllm serve --pipeline-parallel-size`` and
    ``VLLM_PP_LAYER_PARTITION`` (serve-capacity and infer)."""
    parser.add_argument(
        "--pp",
        type=positive_int,
        default=1,
        metavar="P",
        help="pipeline-parallel stages (layers split as vLLM's get_pp_indices)",
    )
    parser.add_argument(
        "--pp-partition",
        type=layer_counts,
        default=None,
        metavar="N,N,...",
        help="decoder layers per stage, as vLLM's VLLM_PP_LAYER_PARTITION (default: its split)",
    )


def non_negative_int(text: str) -> int:
    """argparse type: an integer >= 0 (``--gen-len 0``, ``--freeze-layers 0``)."""
    if text.strip() == "0":
        return 0
    if text.strip().startswith("-"):
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}")
    return positive_int(text)


def count(text: str) -> int:
    """argparse type: a count with an optional decimal suffix or exponent (``2T``, ``1e12``)."""
    try:
        return parse_count(text)
    except SetupError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def parse_bandwidth(text: str) -> float:
    """``"3.35TB/s"``, ``"3350GB"``, ``"900e9"`` -> bytes per second."""
    stripped = text.strip()
    for suffix in ("/s", "ps"):
        if stripped.lower().endswith(suffix):
            stripped = stripped[: -len(suffix)]
    try:
        return float(parse_size(stripped))
    except SetupError:
        raise SetupError(
            f"cannot read the bandwidth {text!r}: write e.g. 3.35TB/s, 2039GB/s or 900e9"
        ) from None


def add_gpu_flags(parser: Any, *, cuda_context: bool = True) -> None:
    """``--gpu``, ``--gpu-memory``, ``--tflops``, ``--bandwidth`` and, where the command gives a
    fit verdict, ``--cuda-context`` (each optional)."""
    group = parser.add_argument_group("GPU")
    group.add_argument(
        "--gpu",
        metavar="NAME",
        help="a catalog GPU: H100, H100-SXM, A100-80GB, L40S, MI300X ... (see `memplan gpus`)",
    )
    group.add_argument(
        "--gpu-memory",
        metavar="SIZE",
        help="GPU memory with its unit, e.g. 24GiB or 80GB (overrides the catalog figure)",
    )
    group.add_argument(
        "--tflops",
        type=float,
        metavar="X",
        help="peak dense TFLOP/s in the compute dtype (overrides the catalog figure)",
    )
    group.add_argument(
        "--bandwidth",
        metavar="RATE",
        help="memory bandwidth, e.g. 3.35TB/s (overrides the catalog figure)",
    )
    if not cuda_context:
        return
    group.add_argument(
        "--cuda-context",
        metavar="SIZE",
        help="CUDA context size counted in the fit verdict (default 512MiB, a typical figure)",
    )


def cuda_context_from_args(args: Any) -> int | None:
    """``--cuda-context SIZE`` in bytes, or None (the typical default applies)."""
    text = getattr(args, "cuda_context", None)
    return parse_size(text) if text else None


def gpu_from_args(args: Any) -> Gpu | None:
    """The GPU the flags describe, or None when no GPU flag was given."""
    name = getattr(args, "gpu", None)
    memory = getattr(args, "gpu_memory", None)
    tflops = getattr(args, "tflops", None)
    bandwidth = getattr(args, "bandwidth", None)
    if name is None and memory is None and tflops is None and bandwidth is None:
        return None
    memory_bytes = parse_size(memory, flag="--gpu-memory") if memory is not None else None
    bandwidth_bytes = parse_bandwidth(bandwidth) if bandwidth is not None else None
    if tflops is not None and not (math.isfinite(tflops) and 0 < tflops < 1e9):
        raise SetupError(f"--tflops must be a positive number of TFLOP/s, got {tflops}")
    if name is None:
        if memory_bytes is None:
            raise SetupError("--tflops/--bandwidth describe a GPU: give --gpu-memory SIZE too")
        return custom_gpu(
            memory_bytes=memory_bytes, tflops=tflops, bandwidth_bytes_per_s=bandwidth_bytes
        )
    from memplan.catalog.gpus import resolve_gpu

    gpu = resolve_gpu(name)
    changes: dict[str, Any] = {}
    if memory_bytes is not None:
        changes["memory_bytes"] = memory_bytes
    if tflops is not None:
        changes["tflops"] = dict.fromkeys(COMPUTE_DTYPES, tflops)
    if bandwidth_bytes is not None:
        changes["memory_bandwidth_bytes_per_s"] = bandwidth_bytes
    if changes:
        overridden = ", ".join(sorted(changes))
        gpu = dataclasses.replace(
            gpu, sources=(*gpu.sources, f"overridden on the command line: {overridden}")
        )
        gpu = dataclasses.replace(gpu, **changes)
    return gpu
