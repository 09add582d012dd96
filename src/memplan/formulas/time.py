"""Seconds from FLOPs and bytes: training time and cost, prefill and decode latency (roofline).

Training: ``time = FLOPs / (n_gpus x peak FLOP/s x MFU)`` (Kaplan et al. 2020, section 2.1;
PaLM appendix B for MFU). Inference: a step takes the longer of its compute time and its
memory time (the roofline model, Williams et al. 2009): ``max(FLOPs / (peak x eta_c),
bytes / (bandwidth x eta_m))``. Prefill is compute-bound; decode reads every weight and the
whole KV cache per step, and is memory-bound until the batch reaches :func:`ridge_batch`.

Efficiency factors are explicit and overridable; their defaults are named below with where
they come from.
"""

from __future__ import annotations

from dataclasses import dataclass

from memplan.errors import SetupError

__all__ = [
    "DEFAULT_BANDWIDTH_EFFICIENCY",
    "DEFAULT_COMPUTE_EFFICIENCY",
    "DEFAULT_MFU",
    "Roofline",
    "cost_usd",
    "gpu_hours",
    "ridge_batch",
    "roofline_step_s",
    "training_time_s",
]

DEFAULT_MFU = 0.40
"""Model FLOPs utilisation for training: Llama 3 405B reached 38-43 % BF16 MFU on 8K-16K H100s
(Llama 3 paper, Dubey et al. 2024, table 4); PaLM 540B 46.2 % (Chowdhery et al. 2022, table 3).
Seed 004 assumes 50 %. Override with --mfu."""

DEFAULT_COMPUTE_EFFICIENCY = 0.6
"""Fraction of the dense peak a prefill's matmuls reach: memplan's assumed default (large
GEMMs reach 70-80 % of peak on H100, attention and small shapes less). Override with
--compute-efficiency; docs/accuracy.md compares it with seed 002's measurement."""

DEFAULT_BANDWIDTH_EFFICIENCY = 0.8
"""Fraction of the datasheet memory bandwidth a decode step's reads reach: memplan's assumed
default (streaming kernels reach 80-90 % of HBM peak). Override with --bandwidth-efficiency."""


def _check_fraction(name: str, value: float) -> None:
    if not 0 < value <= 1:
        raise SetupError(f"{name} must be in (0, 1], got {value}")


def training_time_s(flops: float, n_gpus: int, peak_flops_per_s: float, mfu: float) -> float:
    """``FLOPs / (n_gpus x peak x MFU)``."""
    _check_fraction("MFU", mfu)
    if n_gpus < 1:
        raise SetupError(f"the number of GPUs must be positive, got {n_gpus}")
    return flops / (n_gpus * peak_flops_per_s * mfu)


def gpu_hours(seconds: float, n_gpus: int) -> float:
    """GPU-hours: ``seconds x n_gpus / 3600``."""
    return seconds * n_gpus / 3600


def cost_usd(hours: float, price_per_gpu_hour: float) -> float:
    """``GPU-hours x price``."""
    if price_per_gpu_hour < 0:
        raise SetupError(f"--price-per-gpu-hour must not be negative, got {price_per_gpu_hour}")
    return hours * price_per_gpu_hour


@dataclass(frozen=True, slots=True)
class Roofline:
    """One step under the roofline: its two bounds and which one binds."""

    compute_s: float
    memory_s: float

    @property
    def seconds(self) -> float:
        return max(self.compute_s, self.memory_s)

    @property
    def regime(self) -> str:
        return "compute-bound" if self.compute_s >= self.memory_s else "memory-bound"


def roofline_step_s(
    flops: float,
    bytes_moved: float,
    peak_flops_per_s: float,
    bandwidth_bytes_per_s: float,
    compute_efficiency: float,
    bandwidth_efficiency: float,
) -> Roofline:
    """Compute time and memory time of one step at the given efficiencies."""
    _check_fraction("compute efficiency", compute_efficiency)
    _check_fraction("bandwidth efficiency", bandwidth_efficiency)
    return Roofline(
        compute_s=flops / (peak_flops_per_s * compute_efficiency),
        memory_s=bytes_moved / (bandwidth_bytes_per_s * bandwidth_efficiency),
    )


def ridge_batch(
    weight_bytes: float,
    kv_bytes_per_sequence: float,
    flops_per_sequence: float,
    peak_flops_per_s: float,
    bandwidth_bytes_per_s: float,
    compute_efficiency: float,
    bandwidth_efficiency: float,
) -> float | None:
    """The decode batch at which compute time reaches memory time.

    Solves ``B f / P = (W + B k) / M`` for B, with P and M the effective peak and bandwidth:
    ``B = W / (f M / P - k)``; None when the KV reads alone keep decode memory-bound."""
    peak = peak_flops_per_s * compute_efficiency
    bandwidth = bandwidth_bytes_per_s * bandwidth_efficiency
    denominator = flops_per_sequence * bandwidth / peak - kv_bytes_per_sequence
    if denominator <= 0:
        return None
    return weight_bytes / denominator
