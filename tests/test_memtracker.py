"""The trace engine held against PyTorch's own MemTracker on real CPU runs (issue 8, item 4).

memplan's fake-tensor trace (``--target cpu``: CPU kernels, no allocator rounding) and a real
run of the same setup on cpu tensors measured by
``torch.distributed._tools.mem_tracker.MemTracker`` (``tests/memtracker_runs.py``; no memplan
code on that side) must agree to the byte: the peak, the first step's peak, the live bytes at
every phase boundary of both iterations, and the peak split by category.

How MemTracker's reference types map onto memplan's categories (torch 2.13 has no ``INP``
type: the inputs are given to ``track_external`` and come out as ``OTH``):

====================  =====================================================================
MemTracker            memplan
====================  =====================================================================
PARAM, BUFFER, GRAD   parameters, buffers, gradients (the same storages)
OTH                   inputs (input ids and labels; for generation, the prompt)
OPT                   optimizer_states; at a peak inside ``optimizer.step()`` also that
                      step's temporaries, which MemTracker types by when they are made
ACT + TEMP            activations + autocast_cache + temporaries; MemTracker splits by when a
                      storage was made (forward: ACT, backward: TEMP), memplan by what holds it
                      (the autograd graph: activations, nothing: temporaries). At a backward
                      peak the two splits differ by the forward's storages that the graph does
                      not hold and that are still alive: the loss and the seed gradient
                      ``ones_like(loss)`` that ``loss.backward()`` makes before any module's
                      backward starts, two fp32 scalars (transformers computes the loss on
                      fp32 logits): ``BORN_BEFORE_BACKWARD_BYTES``. At a forward peak
                      MemTracker's TEMP is empty. Generation runs under no_grad: the KV cache
                      and every temporary are ACT.
====================  =====================================================================

Known difference (strict xfail below): with gradient checkpointing MemTracker types part of
what the recomputation makes as TEMP, which its own docstring admits ("During AC in the
backward pass there might be misattribution between activation and temp memory, but the peak
memory will be tracked accurately"); memplan counts everything the recomputation allocates as
activations. Totals and every other category still agree.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("torch.distributed._tools.mem_tracker")

import torch

from memplan.report import Report
from memplan.specs.inference import InferenceSetup
from memplan.specs.training import Checkpointing, Optimizer, Precision, Target, TrainingSetup
from memplan.trace.inference import trace_inference
from memplan.trace.training import trace_training
from memtracker_runs import REF_TYPES, measure_inference, measure_training

pytestmark = pytest.mark.trace

CONFIGS = json.loads((Path(__file__).parent / "data" / "trace_tiny_configs.json").read_text())
FP32_SCALAR_BYTES = torch.tensor(0.0).element_size()
BORN_BEFORE_BACKWARD_BYTES = 2 * FP32_SCALAR_BYTES
"""The loss and its seed gradient: forward-phase storages in MemTracker's eyes, held by no
autograd node in memplan's."""
PHASES = ("after_load", "end_of_forward", "peak_backward", "after_backward", "after_zero_grad")
BATCH, SEQ = 2, 32

TRAINING_CASES = {
    # family, precision, checkpointing: what the case exercises (between them the peak falls
    # in the forward, the backward and the optimizer step, the three rows of the mapping)
    "llama-fp32": ("llama", Precision.FP32, False),  # grouped KV heads
    "qwen2-fp32": ("qwen2", Precision.FP32, False),  # tied embeddings, qkv biases
    "gpt2-fp32": ("gpt2", Precision.FP32, False),  # Conv1D, learned positions, dropout 0.1
    "mixtral-fp32": ("mixtral", Precision.FP32, False),  # MoE; the peak is in optimizer.step()
    "gpt_neox-fp32": ("gpt_neox", Precision.FP32, False),  # parallel residual, partial rotary
    "llama-bf16-mixed": ("llama", Precision.BF16_MIXED, False),  # CPU autocast; forward peak
    "llama-fp32-ckpt": ("llama", Precision.FP32, True),  # recomputation in the backward
}
_DTYPES = {Precision.FP32: torch.float32, Precision.BF16_MIXED: torch.float32}
_AUTOCAST = {Precision.BF16_MIXED: torch.bfloat16}


@functools.cache
def _training(case: str) -> tuple[Report, Any]:
    family, precision, checkpointing = TRAINING_CASES[case]
    setup = TrainingSetup(
        batch=BATCH,
        seq=SEQ,
        precision=precision,
        optimizer=Optimizer.ADAMW,
        target=Target.CPU,
        checkpointing=Checkpointing.FULL if checkpointing else Checkpointing.NONE,
    )
    report = trace_training(CONFIGS[family], setup)
    measured = measure_training(
        CONFIGS[family],
        batch=BATCH,
        seq=SEQ,
        dtype=_DTYPES[precision],
        autocast_dtype=_AUTOCAST.get(precision),
        checkpointing=checkpointing,
    )
    return report, measured


def _categories(report: Report) -> dict[str, int]:
    return {child.key: int(child.total) for child in report.breakdown.children}


def memtracker_view(report: Report) -> dict[str, int]:
    """memplan's training peak in MemTracker's reference types (the table above)."""
    ours = _categories(report)
    held = ours.get("activations", 0) + ours.get("autocast_cache", 0)
    temporaries = ours.get("temporaries", 0)
    view = dict.fromkeys(REF_TYPES, 0)
    view.update(
        PARAM=ours["parameters"],
        BUFFER=ours.get("buffers", 0),
        GRAD=ours.get("gradients", 0),
        OPT=ours.get("optimizer_states", 0),
        OTH=ours.get("inputs", 0),
        Total=report.scalars["peak_bytes"],
    )
    phase = report.scalars["peak_phase"]
    if phase == "forward":
        view["ACT"] = held + temporaries
    elif phase == "backward":
        view["ACT"] = held + BORN_BEFORE_BACKWARD_BYTES
        view["TEMP"] = temporaries - BORN_BEFORE_BACKWARD_BYTES
    else:  # optimizer_step (or zero_grad): what the step makes is OPT
        view["ACT"] = held
        view["OPT"] += temporaries
    return view


def _phases(report: Report, prefix: str = "") -> dict[str, int]:
    phases = {p.name: p.bytes for p in report.phases}
    return {name: phases[prefix + name] for name in PHASES}


@pytest.mark.parametrize("case", [c for c in TRAINING_CASES if not c.endswith("ckpt")])
def test_training_equals_memtracker(case: str) -> None:
    report, (first, steady) = _training(case)
    assert report.scalars["peak_bytes"] == steady.peak["Total"]
    assert report.scalars["peak_phase"] == steady.peak_phase
    assert report.scalars["first_step_peak_bytes"] == first.peak["Total"]
    assert _phases(report) == steady.phases
    assert _phases(report, "first_step/") == first.phases
    assert memtracker_view(report) == steady.peak


@pytest.mark.xdist_group("memtracker-ckpt")
def test_checkpointing_totals_equal_memtracker() -> None:
    report, (first, steady) = _training("llama-fp32-ckpt")
    assert report.scalars["peak_bytes"] == steady.peak["Total"]
    assert report.scalars["peak_phase"] == steady.peak_phase
    assert report.scalars["first_step_peak_bytes"] == first.peak["Total"]
    assert _phases(report) == steady.phases
    assert _phases(report, "first_step/") == first.phases
    view = memtracker_view(report)
    for ref_type in ("PARAM", "BUFFER", "GRAD", "OPT", "OTH"):
        assert view[ref_type] == steady.peak[ref_type], ref_type
    assert view["ACT"] + view["TEMP"] == steady.peak["ACT"] + steady.peak["TEMP"]


@pytest.mark.xdist_group("memtracker-ckpt")
@pytest.mark.xfail(
    strict=True,
    reason="MemTracker types 16,384 B that the recomputation of layer 1 makes (a residual add, "
    "(B, S, H) fp32) as TEMP, memplan as activations (measured at the peak: MemTracker ACT "
    "272,136 / TEMP 167,936 B, memplan's view ACT 288,520 / TEMP 151,552 B; totals equal); "
    "MemTracker's docstring: 'During AC in the backward pass there might be misattribution "
    "between activation and temp memory'",
)
def test_checkpointing_split_equals_memtracker() -> None:
    report, (_, steady) = _training("llama-fp32-ckpt")
    assert memtracker_view(report) == steady.peak


INFERENCE_CASES = {
    "llama-bf16": ("llama", "bf16"),
    "mixtral-bf16": ("mixtral", "bf16"),
    "gpt2-fp32": ("gpt2", "fp32"),
}
_WEIGHTS = {"bf16": torch.bfloat16, "fp32": torch.float32}


@pytest.mark.parametrize("case", INFERENCE_CASES)
def test_generation_equals_memtracker(case: str) -> None:
    family, weights = INFERENCE_CASES[case]
    setup = InferenceSetup(batch=2, prompt_len=16, gen_len=3, weights=weights, target="cpu")
    report = trace_inference(CONFIGS[family], setup)
    measured = measure_inference(
        CONFIGS[family], batch=2, prompt_len=16, gen_len=3, dtype=_WEIGHTS[weights]
    )
    assert {p.name: p.bytes for p in report.phases} == measured.phases
    assert report.scalars["peak_phase"] == "prefill"
    ours = _categories(report)
    view = dict.fromkeys(REF_TYPES, 0)
    view.update(
        PARAM=ours["parameters"],
        BUFFER=ours.get("buffers", 0),
        OTH=ours.get("inputs", 0),
        ACT=ours.get("kv_cache", 0) + ours.get("temporaries", 0) + ours.get("activations", 0),
        Total=report.scalars["peak_bytes"],
    )
    assert view == measured.prefill_peak
