"""``training_time_report(spec, setup, gpu) -> Report``: time and cost of a training run.

FLOPs per step from :mod:`memplan.formulas.flops` (``method="exact"``: every matmul of the
model, the attention core under the chosen convention; ``method="one-layer-formula"``, formerly
``seed004``: seed 004's formula), time from :func:`memplan.formulas.time.training_time_s`.

Full training: backward = 2 x forward (an input gradient and a weight gradient per matmul).
LoRA and QLoRA: the base weights are frozen, so their matmuls need only the input gradient
(1 x their forward), the attention core still both of its operands' gradients (2 x), and the
adapters (``2 T r (in + out)`` forward per targeted linear) both (2 x). The first layer's
q/k/v input gradients, which autograd skips when the embeddings are frozen, are counted
(at most 1/n_layers of the projections).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from memplan.errors import SetupError
from memplan.formulas.flops import forward_flops_item, seed004_forward_flops
from memplan.formulas.time import (
    DEFAULT_MFU,
    cost_usd,
    gpu_hours,
    training_time_s,
)
from memplan.formulas.training import param_tensors
from memplan.report import Item, Report
from memplan.specs.hardware import Gpu
from memplan.specs.model import ModelSpec
from memplan.units import MAX_COUNT

__all__ = [
    "METHODS",
    "METHOD_ALIASES",
    "TrainingRun",
    "adapter_forward_flops",
    "training_time_report",
]

METHODS = ("exact", "one-layer-formula")
METHOD_ALIASES = {"seed004": "one-layer-formula"}
"""The name the seed-004 method had before."""


@dataclass(frozen=True, slots=True, kw_only=True)
class TrainingRun:
    """A training run: ``steps`` of ``batch x seq`` tokens (global batch), or ``tokens``."""

    batch: int = 1
    seq: int = 2048
    steps: int | None = None
    tokens: int | None = None
    n_gpus: int = 1
    dtype: str = "bf16"
    """The compute dtype whose peak TFLOP/s applies (fp32 for seed 004)."""
    mfu: float = DEFAULT_MFU
    method: str = "exact"
    convention: str = "causal"
    recompute: bool = False
    price_per_gpu_hour: float | None = None
    lora_rank: int = 0
    """LoRA rank (0: full training): frozen base, trainable adapters."""
    lora_targets: tuple[str, ...] = ()
    """The targeted linear modules (names as ``memplan.formulas.training.param_tensors``)."""
    qlora: bool = False
    """NF4 base weights: the same matmul FLOPs, plus dequantization (not a matmul)."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "method", METHOD_ALIASES.get(self.method, self.method))
        if (self.steps is None) == (self.tokens is None):
            raise SetupError("give the run length as exactly one of --steps or --tokens")
        for name in ("batch", "seq", "n_gpus"):
            if not 1 <= getattr(self, name) <= MAX_COUNT:
                raise SetupError(f"--{name.replace('n_', '')} must be an integer in [1, 2**40]")
        price = self.price_per_gpu_hour
        if price is not None and not (math.isfinite(price) and price >= 0):
            raise SetupError(f"--price-per-gpu-hour must be a non-negative number, got {price}")
        if self.method not in METHODS:
            raise SetupError(f"--method must be one of {', '.join(METHODS)}")

    @property
    def n_steps(self) -> int:
        if self.steps is not None:
            return self.steps
        assert self.tokens is not None  # checked in __post_init__
        return -(self.tokens // -(self.batch * self.seq))


def adapter_forward_flops(spec: ModelSpec, rows: int, rank: int, targets: tuple[str, ...]) -> int:
    """Forward FLOPs of the LoRA adapters: ``2 T r (in + out)`` per targeted linear (``x A^T``
    then ``(x A^T) B^T``; Hu et al. 2021, eq. 3)."""
    return sum(
        2 * rows * rank * (t.shape[0] + t.shape[1])
        for t in param_tensors(spec)
        if t.role == "linear" and t.layer >= 0 and t.module in targets
    )


def _lora_step_item(spec: ModelSpec, run: TrainingRun, forward: Item) -> Item:
    """One LoRA step: frozen matmuls get their input gradient only; the attention core and the
    adapters both gradients."""
    rows = run.batch * run.seq
    adapters = adapter_forward_flops(spec, rows, run.lora_rank, run.lora_targets)
    core = forward.get("layers/attention_core")
    frozen = forward.total - core
    step = Item("step", unit="flops")
    fwd = step.add(Item("forward", unit="flops"))
    forward.key = "base_model"
    fwd.add(forward)
    fwd.leaf("lora_adapters", adapters, f"2*T*r*(in+out) per targeted linear, r={run.lora_rank}")
    backward = step.add(Item("backward", unit="flops"))
    backward.leaf("frozen_matmuls_input_grad", frozen, "1 x their forward (no weight gradient)")
    backward.leaf("attention_core", 2 * core, "2 x forward (gradients of both operands)")
    backward.leaf("lora_adapters", 2 * adapters, "2 x forward (input and weight gradients)")
    if run.recompute:
        step.leaf("recomputed_forward", fwd.total, "full activation recomputation (HFU only)")
    return step


def _step_item(spec: ModelSpec, run: TrainingRun) -> Item:
    """FLOPs of one step: forward, backward (2 x forward), recomputed forward."""
    if run.method == "one-layer-formula":
        forward = Item(
            "forward",
            seed004_forward_flops(spec, batch=run.batch, seq=run.seq),
            "flops",
            "2*B*S*d*(4d + 2S + 3d_ff) (seed 004, as written)",
            "seed 004",
        )
    else:
        forward = forward_flops_item(
            spec, batch=run.batch, q_len=run.seq, convention=run.convention
        )
        if run.lora_rank:
            return _lora_step_item(spec, run, forward)
    step = Item("step", unit="flops")
    step.add(forward)
    step.leaf("backward", 2 * forward.total, "2 x forward (input and weight gradients)")
    if run.recompute:
        step.leaf("recomputed_forward", forward.total, "full activation recomputation (HFU only)")
    return step


def training_time_report(spec: ModelSpec, run: TrainingRun, gpu: Gpu) -> Report:
    """Seconds, GPU-hours and cost of ``run`` on ``run.n_gpus`` of ``gpu``."""
    step = _step_item(spec, run)
    forward = step.child("forward").total
    hardware_step = step.total
    model_step = hardware_step - (forward if run.recompute else 0)
    flops = model_step * run.n_steps
    peak = gpu.peak_flops_per_s(run.dtype)
    # MFU is defined on model FLOPs: time = model FLOPs / (peak x MFU); recomputation shows as
    # hardware FLOPs utilisation HFU = MFU x hardware / model FLOPs
    seconds = training_time_s(flops, run.n_gpus, peak, run.mfu)
    hours = gpu_hours(seconds, run.n_gpus)
    scalars: dict[str, object] = {
        "seconds": seconds,
        "days": seconds / 86400,
        "flops": flops,
        "hardware_flops": hardware_step * run.n_steps,
        "flops_per_step": model_step,
        "steps": run.n_steps,
        "tokens": run.n_steps * run.batch * run.seq,
        "tokens_per_s": run.n_steps * run.batch * run.seq / seconds,
        "gpu_hours": hours,
        "peak_flops_per_s": peak,
        "mfu": run.mfu,
        "hfu": run.mfu * hardware_step / model_step,
    }
    notes = [
        f"time = {flops:.6g} model FLOPs / ({run.n_gpus} x {peak / 1e12:g} TFLOP/s {run.dtype}"
        f" x MFU {run.mfu:g})",
        f"attention core counted under the '{run.convention}' convention"
        if run.method == "exact"
        else "seed 004's formula: one layer, no lm_head (as the seed wrote it)",
    ]
    if run.recompute:
        notes.append(
            "recomputation adds a forward: it counts in hardware FLOPs (HFU), not in model FLOPs"
        )
    n_linear = spec.n_layers - spec.n_attention_layers
    if n_linear:
        notes.append(
            f"linear attention not modelled: the {n_linear} Gated DeltaNet layers' FLOPs are "
            "counted as a softmax-attention layer's (projections and causal core)"
        )
    if run.lora_rank:
        notes.append(
            f"LoRA r={run.lora_rank} on {','.join(run.lora_targets)}: the frozen base needs no "
            f"weight gradients, so a step is {model_step / forward:.2f} x forward, not 3 x"
        )
    if run.qlora:
        notes.append(
            "QLoRA: bitsandbytes dequantizes each NF4 weight before its matmul (memory-bound, "
            "not in the matmul FLOPs): expect a lower MFU than bf16 LoRA (--mfu)"
        )
    if run.price_per_gpu_hour is not None:
        scalars["cost_usd"] = cost_usd(hours, run.price_per_gpu_hour)
    return Report(
        kind="time",
        model=spec.name,
        breakdown=step,
        setup={
            "gpu": gpu.name,
            "gpus": run.n_gpus,
            "batch": run.batch,
            "seq": run.seq,
            "steps": run.n_steps,
            "dtype": run.dtype,
            "mfu": run.mfu,
            "method": run.method,
            **(
                {"lora": f"rank {run.lora_rank}, {','.join(run.lora_targets)}"}
                if run.lora_rank
                else {}
            ),
            **({"qlora": "NF4 base weights"} if run.qlora else {}),
        },
        scalars=scalars,
        notes=notes,
    )
