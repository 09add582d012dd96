"""Published per-GPU formulas for many GPUs, reproduced as their sources state them, to set beside
memplan's exact per-rank figures (``memplan train --method ...`` with a plan):

- ``zero-paper``: Rajbhandari et al. 2020, "ZeRO: Memory Optimizations Toward Training Trillion
  Parameter Models", figure 1 / table 1 (seed 002): model states per GPU with mixed-precision
  Adam (``K = 12``: fp32 master weights, momentum and variance), ``Psi`` parameters, ``N_d``
  data-parallel ranks: baseline ``(2 + 2 + K) Psi``, P_os ``2 Psi + 2 Psi + K Psi / N_d``,
  P_os+g ``2 Psi + (2 + K) Psi / N_d``, P_os+g+p ``(2 + 2 + K) Psi / N_d``. The paper's
  7.5B, 64-GPU example: 120 / 31.4 / 16.6 / 1.9 GB (decimal). Communication: 2 Psi per step for
  stages 1-2 (reduce-scatter + all-gather), 3 Psi for stage 3 (section 7).
- ``korthikanti-tp``: Korthikanti et al. 2022, "Reducing Activation Recomputation in Large
  Transformer Models", table 2: activations per layer with tensor parallelism
  ``s b h (10 + 24/t + 5 a s / (h t))`` bytes, and with sequence parallelism
  ``s b h / t (34 + 5 a s / h)`` (16-bit activations, GPT-3 layers, no recomputation).
- ``deepspeed``: DeepSpeed 0.19.8's own estimators
  (``deepspeed/runtime/zero/stage_1_and_2.py`` ``estimate_zero2_model_states_mem_needs``:
  ``2 Psi + 18 Psi / N`` on the GPU without offload; ``stage3.py``
  ``estimate_zero3_model_states_mem_needs``: ``4 * largest_layer + 18 Psi / N``), model states
  only. Their ``_all_cold`` printers divide by ``2**30`` and print "GB" (DIST-NOTES.md).
"""

from __future__ import annotations

from memplan.errors import SetupError
from memplan.formulas.params import total_params
from memplan.report import Item, Report
from memplan.specs.model import ModelSpec
from memplan.specs.parallel import ParallelPlan, Sharding
from memplan.specs.training import TrainingSetup

__all__ = [
    "PARALLEL_METHODS",
    "deepspeed_zero2_gpu_bytes",
    "deepspeed_zero3_gpu_bytes",
    "equivalent_zero_stage",
    "korthikanti_sp_bytes_per_layer",
    "korthikanti_tp_bytes_per_layer",
    "largest_layer_params",
    "parallel_method_report",
    "zero_paper_bytes",
    "zero_paper_communication_elements",
]

ZERO_PAPER_K = 12
"""The ZeRO paper's optimizer-state multiplier for mixed-precision Adam (section 3.1)."""


def zero_paper_bytes(psi: float, n_d: int, stage: int, k: int = ZERO_PAPER_K) -> dict[str, float]:
    """Per-GPU model-state bytes of ZeRO ``stage`` (0 = baseline), by part (figure 1)."""
    if stage not in (0, 1, 2, 3):
        raise SetupError(f"ZeRO stage must be 0-3, got {stage}")
    params = 2 * psi / (n_d if stage == 3 else 1)
    grads = 2 * psi / (n_d if stage >= 2 else 1)
    states = k * psi / (n_d if stage >= 1 else 1)
    return {"parameters_fp16": params, "gradients_fp16": grads, "optimizer_states_k12": states}


def korthikanti_tp_bytes_per_layer(s: int, b: int, h: int, a: int, t: int) -> float:
    """``s b h (10 + 24/t + 5 a s / (h t))``: Korthikanti et al. 2022, table 2, tensor parallel."""
    return s * b * h * (10 + 24 / t + 5 * a * s / (h * t))


def korthikanti_sp_bytes_per_layer(s: int, b: int, h: int, a: int, t: int) -> float:
    """``s b h / t (34 + 5 a s / h)``: table 2, tensor + sequence parallel."""
    return s * b * h / t * (34 + 5 * a * s / h)


def largest_layer_params(spec: ModelSpec) -> int:
    """Parameters of the largest single module (DeepSpeed's ``largest_layer_params``: the
    largest ``sum(p.numel() for p in m.parameters(recurse=False))``): the embedding or
    lm_head matrix for every catalog model."""
    from memplan.formulas.training import param_tensors

    sizes: dict[str, int] = {}
    for t in param_tensors(spec):
        module = t.name.rsplit(".", 1)[0]
        sizes[module] = sizes.get(module, 0) + t.numel
    return max(sizes.values())


def deepspeed_zero2_gpu_bytes(psi: int, n_gpus: int) -> int:
    """``2 Psi + int(18 Psi / N)`` (DeepSpeed's ZeRO-2 estimator, no offload)."""
    return 2 * psi + int(18 * psi / n_gpus)


def deepspeed_zero3_gpu_bytes(psi: int, largest: int, n_gpus: int) -> int:
    """``4 * largest_layer + int(18 Psi / N)`` (DeepSpeed's ZeRO-3 estimator, no offload)."""
    return 4 * largest + int(18 * psi / n_gpus)


def zero_paper_communication_elements(psi: float, stage: int) -> float:
    """Elements each rank sends per step (ZeRO paper section 7; seed 002): ``2 Psi`` for
    data parallelism and stages 1-2 (reduce-scatter + all-gather), ``3 Psi`` for stage 3."""
    return 3 * psi if stage == 3 else 2 * psi


def _report(spec: ModelSpec, method: str, parts: dict[str, float], source: str) -> Report:
    root = Item("peak", note=f"textbook method: {method}")
    for key, value in parts.items():
        root.leaf(key, value, source=source)
    return Report(
        kind="training/parallel",
        model=spec.name,
        breakdown=root,
        setup={"method": method},
        scalars={"peak_bytes": int(root.total), "method": method},
        notes=[f"{method}: {source}", "model states per GPU only (activations not counted)"
               if method != "korthikanti-tp" else "activations of all layers only"],
    )  # fmt: skip


def equivalent_zero_stage(plan: ParallelPlan) -> int:
    """The ZeRO stage whose sharding the plan's matches (FSDP full: 3, shard-grad-op: 2)."""
    if plan.sharding.is_deepspeed:
        return plan.sharding.zero_stage
    return {Sharding.FSDP_FULL: 3, Sharding.FSDP_HYBRID: 3, Sharding.FSDP_SHARD_GRAD_OP: 2}.get(
        plan.sharding, 0
    )


def parallel_method_report(
    spec: ModelSpec, setup: TrainingSetup, plan: ParallelPlan, method: str
) -> Report:
    """A labelled textbook figure for ``plan`` (see the module docstring)."""
    psi = total_params(spec)
    stage = equivalent_zero_stage(plan)
    if method == "zero-paper":
        parts = zero_paper_bytes(psi, plan.dp, stage)
        report = _report(spec, method, parts, "Rajbhandari et al. 2020, figure 1 (K = 12)")
        elements = zero_paper_communication_elements(psi, stage)
        report.scalars["communication_elements_per_step"] = elements
        report.notes.append(
            f"communication per rank and step: {'3' if stage == 3 else '2'} Psi = "
            f"{elements:,.0f} elements (seed 002; memplan's exact bytes: `--method exact`)"
        )
        return report
    if method == "deepspeed":
        n = plan.world_size
        total = (
            deepspeed_zero3_gpu_bytes(psi, largest_layer_params(spec), n)
            if stage == 3
            else deepspeed_zero2_gpu_bytes(psi, n)
        )
        return _report(spec, method, {f"zero{3 if stage == 3 else 2}_model_states": total},
                       "DeepSpeed 0.19.8 estimate_zero2/3_model_states_mem_needs")  # fmt: skip
    if method == "korthikanti-tp":
        fn = (
            korthikanti_sp_bytes_per_layer
            if plan.sequence_parallel
            else korthikanti_tp_bytes_per_layer
        )
        per_layer = fn(setup.seq, setup.batch, spec.hidden_size, spec.n_heads, plan.tp_degree)
        layers = spec.n_layers / plan.pp_degree
        return _report(spec, method, {"activations": per_layer * layers},
                       "Korthikanti et al. 2022, table 2")  # fmt: skip
    known = ", ".join(PARALLEL_METHODS)
    raise SetupError(f"unknown method {method!r} with a parallel plan: choose exact, {known}")


PARALLEL_METHODS = ("zero-paper", "korthikanti-tp", "deepspeed")
"""Methods ``memplan train --method`` takes with a plan."""
