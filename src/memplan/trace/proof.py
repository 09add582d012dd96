"""The proof suite: small real models run on gloo, measured per rank, beside the analytic plan.

One list of cases per world size (:func:`gloo_cases`), each a real transformers family at toy
size (Llama with grouped KV heads, Qwen2, Mixtral) under a plan (DDP, FSDP2 full /
shard-grad-op / mixed precision, tensor and sequence parallelism, FSDP2 x TP), run by
:func:`memplan.trace.gloo.run_gloo` and compared here, rank by rank and phase by phase, with
the analytic engine's per-rank report (``--target cpu``). Pipelines (:func:`pipeline_cases`:
pp 2, GPipe and 1F1B, run by :mod:`memplan.trace.pipeline`) are measured by PyTorch's
MemTracker alone (:func:`memtracker_phases`). The tests (``tests/test_gloo_proof.py``) and
``docs/accuracy.md`` (``scripts/accuracy_proof.py``) both read these cases and these
comparisons.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from memplan.report import TRAINING_PHASES
from memplan.specs.parallel import ParallelPlan, Schedule, Sharding
from memplan.specs.training import Precision, Target, TrainingSetup

__all__ = [
    "PIPELINE_MICRO_BATCHES",
    "TINY",
    "Gap",
    "analytic_gaps",
    "case_setup",
    "gloo_cases",
    "measured_phases",
    "memtracker_phases",
    "pipeline_cases",
]

_COMMON = {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
           "max_position_embeddings": 512, "tie_word_embeddings": False}  # fmt: skip
TINY: dict[str, dict[str, Any]] = {
    "llama": {"model_type": "llama", "intermediate_size": 176, "num_key_value_heads": 2,
              "vocab_size": 256, **_COMMON},
    # 250 rows do not split evenly over 4 ranks: FSDP2 pads, the last rank differs
    "llama-odd": {"model_type": "llama", "intermediate_size": 176, "num_key_value_heads": 2,
                  "vocab_size": 250, **_COMMON},
    "qwen2": {"model_type": "qwen2", "intermediate_size": 160, "num_key_value_heads": 2,
              "vocab_size": 256, "use_sliding_window": False, **_COMMON},
    "mixtral": {"model_type": "mixtral", "intermediate_size": 96, "num_key_value_heads": 2,
                "vocab_size": 256, "num_local_experts": 4, "num_experts_per_tok": 2, **_COMMON},
}  # fmt: skip
"""Size-reduced configs of the families of issue 9 (every degree used below divides them)."""

FP32 = TrainingSetup(batch=2, seq=32, precision=Precision.FP32, target=Target.CPU)
"""The step of every case (cpu target: what the CPU kernels allocate, no rounding)."""


def case_setup(precision: Precision) -> TrainingSetup:
    return dataclasses.replace(FP32, precision=precision)


def _plan(world: int, **kw: Any) -> ParallelPlan:
    return ParallelPlan(gpus_per_node=world, **kw)


def gloo_cases(world: int) -> list[Any]:
    """The cases run on ``world`` gloo processes (2 or 4), in the order they run."""
    from memplan.trace.gloo import GlooCase

    full, keep = Sharding.FSDP_FULL, Sharding.FSDP_SHARD_GRAD_OP
    mixed, bf16 = case_setup(Precision.BF16_MIXED), case_setup(Precision.BF16)
    if world == 2:
        rows = [
            ("llama/ddp", "llama", _plan(2), FP32),
            ("llama/ddp-bucket-view", "llama", _plan(2, gradient_as_bucket_view=True), FP32),
            ("llama/ddp-bf16-mixed", "llama", _plan(2), mixed),
            ("llama/fsdp-full", "llama", _plan(2, sharding=full), FP32),
            ("llama/fsdp-shard-grad-op", "llama", _plan(2, sharding=keep), FP32),
            ("llama/fsdp-bf16-mixed", "llama", _plan(2, sharding=full), mixed),
            ("llama/fsdp-bf16", "llama", _plan(2, sharding=full), bf16),
            ("llama/tp", "llama", _plan(2, tp_degree=2), FP32),
            ("llama/tp-sp", "llama", _plan(2, tp_degree=2, sequence_parallel=True), FP32),
            ("qwen2/fsdp-full", "qwen2", _plan(2, sharding=full), FP32),
            ("qwen2/tp-sp", "qwen2", _plan(2, tp_degree=2, sequence_parallel=True), FP32),
            ("mixtral/ddp", "mixtral", _plan(2), FP32),
            ("mixtral/fsdp-full", "mixtral", _plan(2, sharding=full), FP32),
        ]
    elif world == 4:
        rows = [
            ("llama-odd/fsdp-full", "llama-odd", _plan(4, sharding=full), FP32),
            ("llama/fsdp-tp-sp", "llama",
             _plan(4, tp_degree=2, sequence_parallel=True, sharding=full), FP32),
            ("mixtral/fsdp-bf16-mixed", "mixtral", _plan(4, sharding=full), mixed),
        ]  # fmt: skip
    else:
        raise ValueError(f"no gloo cases for {world} ranks")
    return [
        GlooCase(
            name, TINY[family], setup, plan, plain=TINY[family].get("num_local_experts") is not None
        )
        for name, family, plan, setup in rows
    ]


PIPELINE_MICRO_BATCHES = 4
"""Micro-batches of each pipeline case: more than the 2 stages, so that 1F1B's first stage
runs forwards after a backward (all gradients live with 2 micro-batches in flight)."""


def pipeline_cases() -> list[Any]:
    """The pipeline cases (pp 2 on 2 gloo processes, :mod:`memplan.trace.pipeline`): the tiny
    Llama with grouped KV heads cut into two stages of one decoder layer, GPipe and 1F1B."""
    from memplan.trace.gloo import GlooCase

    return [
        GlooCase(
            f"llama/pp-{schedule.value}",
            TINY["llama"],
            FP32,
            _plan(2, pp_degree=2, schedule=schedule, micro_batches=PIPELINE_MICRO_BATCHES),
        )
        for schedule in (Schedule.GPIPE, Schedule.ONE_F_ONE_B)
    ]


_MEMTRACKER_STATES = {
    "Parameter": "parameters",
    "Gradient": "gradients",
    "Optstate": "optimizer_states",
    "Buffer": "buffers",
}
"""PyTorch MemTracker's categories that mean what memplan's do (its ``Activation`` is all
made in a forward, ``Temp`` all made in a backward: no counterpart)."""


def memtracker_phases(result: dict[str, Any]) -> dict[str, tuple[int, dict[str, int]]]:
    """Per phase: (bytes, model-state categories in memplan's names) of a rank measured by
    PyTorch's MemTracker alone (the pipeline cases)."""
    tracker = result["memtracker"]
    out = {}
    for phase, total in tracker["phases"].items():
        cats = tracker["categories"][phase]
        out[phase] = (int(total), {v: int(cats.get(k, 0)) for k, v in _MEMTRACKER_STATES.items()})
    return out


def measured_phases(result: dict[str, Any]) -> dict[str, tuple[int, dict[str, int]]]:
    """Per phase: (bytes, categories) of a rank's real run by memplan's tracker (the run
    without PyTorch's tracker where the case has one, ``plain``)."""
    report = result.get("plain") or result["report"]
    return {
        p["name"]: (int(p["bytes"]), dict(p.get("breakdown", {})))
        for p in report["phases"]
        if "/" not in p["name"]
    }


@dataclass(frozen=True, slots=True)
class Gap:
    """One line where the analytic engine and a measurement differ."""

    rank: int
    phase: str
    line: str
    """``total`` or a category."""
    measured: int
    analytic: int

    @property
    def delta(self) -> int:
        return self.analytic - self.measured

    def __str__(self) -> str:
        return f"rank {self.rank} {self.phase} {self.line}: {self.delta:+,} B"


def analytic_gaps(
    analytic_ranks: list[dict[str, Any]],
    measured: dict[int, dict[str, tuple[int, dict[str, int]]]],
    *,
    measured_categories_only: bool = False,
) -> list[Gap]:
    """Every (rank, phase, total or category) where the analytic figure is not the measured one.

    ``analytic_ranks``: the ``ranks`` entries of the analytic per-rank report; ``measured``:
    per rank, :func:`measured_phases` (or :func:`memtracker_phases`, with
    ``measured_categories_only``: only the categories the measurement names are compared).
    """
    by_rank = {r: group for group in analytic_ranks for r in group["ranks"]}
    gaps = []
    for rank, phases in sorted(measured.items()):
        theirs = {p["name"]: p for p in by_rank[rank]["phases"]}
        for phase in TRAINING_PHASES:
            total, cats = phases[phase]
            mine = theirs[phase]
            if int(mine["bytes"]) != total:
                gaps.append(Gap(rank, phase, "total", total, int(mine["bytes"])))
            mine_cats = {k: int(v) for k, v in mine["breakdown"].items() if v}
            keys = set(cats) if measured_categories_only else set(cats) | set(mine_cats)
            for key in sorted(keys):
                if cats.get(key, 0) != mine_cats.get(key, 0):
                    gaps.append(Gap(rank, phase, key, cats.get(key, 0), mine_cats.get(key, 0)))
    return gaps
