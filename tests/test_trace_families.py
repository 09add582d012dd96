"""Every family of the catalog traces, training and inference (size-reduced configs), and its
figures equal the analytic engine's where both count the same tensors.

Training: the default setup (bf16-mixed, AdamW foreach, sdpa, CUDA target), batch 2,
sequence 32. The lines that do not depend on the activations (the phases before the forward and
after the backward, the first step's peak, parameters, gradients, optimizer states, inputs,
buffers) are exact for every family. The activation lines are exact where the analytic engine
models the family at this size; elsewhere a strict xfail gives the measured gap.
Inference: batch 2, prompt 16, 3 tokens, bf16; the KV cache at the end and the weights are
exact (the cache at the prefill peak depends on the layer the peak falls in:
``tests/test_kv_trace.py`` compares it where that is the last).
"""

from __future__ import annotations

import dataclasses
import functools
import json
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

from memplan.estimate.training import estimate_training
from memplan.formulas.kv_cache import kv_cache_item
from memplan.formulas.training import alloc_bytes, param_tensors
from memplan.report import TRAINING_CATEGORIES, TRAINING_PHASES, Report
from memplan.specs.hf import spec_from_config
from memplan.specs.inference import InferenceSetup
from memplan.specs.training import Attention, TrainingSetup
from memplan.trace.inference import trace_inference
from memplan.trace.training import trace_training

pytestmark = pytest.mark.trace

CONFIGS = json.loads((Path(__file__).parent / "data" / "trace_tiny_configs.json").read_text())
SETUP = TrainingSetup(batch=2, seq=32)
STATIC_PHASES = ("after_load", "after_backward", "optimizer_step", "after_zero_grad")
STATIC_CATEGORIES = ("parameters", "gradients", "optimizer_states", "inputs", "buffers")
ACTIVATION_PHASES = ("end_of_forward", "peak_backward")

# Measured gaps of the analytic engine (analytic minus trace, bytes) on these size-reduced
# configs. Where a cause is known it is named; the families agree at full size on the peak
# (docs/accuracy.md, "Every model type at full size").
ACTIVATION_GAPS = {
    "deepseek_v2": "end_of_forward and peak_backward -14,336 B; peak equal",
    "deepseek_v3": "peak -21,504 B (activations -16,896, temporaries -4,608 B; analytic peak "
    "in the forward, trace in the backward); end_of_forward, peak_backward -15,872 B",
    "falcon": "end_of_forward and peak_backward -2,048 B; peak equal",
    "gpt2": "peak and peak_backward -29,184 B (temporaries -32,768, activations +4,096, "
    "autocast_cache -512 B); the config keeps GPT-2's default dropout of 0.1",
    "gpt_neox": "end_of_forward and peak_backward -2,048 B; peak equal",
    "mixtral": "peak_backward -7,168 B; peak equal",
    "olmo2": "peak +50,688 B (analytic peak in the forward, trace in the backward: "
    "temporaries +49,664, activations +1,024 B)",
    "qwen2_moe": "end_of_forward and peak_backward +2,048 B; peak equal",
    "qwen3_next": "peak -588,800 B (activations -581,120, temporaries -7,680 B), "
    "end_of_forward and peak_backward -581,120 B: the Gated DeltaNet layers are counted as "
    "softmax-attention layers (linear attention is not modelled analytically; memplan train "
    "says so in a note)",
    "qwen3_moe": "peak, end_of_forward, peak_backward +2,048 B (activations)",
}


@functools.cache
def _reports(family: str) -> tuple[Report, Report]:
    """(trace, analytic) for ``family``; the analytic engine runs the attention the trace ran."""
    trace = trace_training(CONFIGS[family], SETUP)
    eager = any("traced with eager" in note for note in trace.notes)
    setup = dataclasses.replace(SETUP, attention=Attention.EAGER) if eager else SETUP
    return trace, estimate_training(spec_from_config(CONFIGS[family]), setup)


def _lines(report: Report, phases: tuple[str, ...], categories: tuple[str, ...]) -> dict[str, int]:
    by_phase = {p.name: p.bytes for p in report.phases}
    by_category = {c.key: int(c.total) for c in report.breakdown.children}
    out = {f"phase/{name}": by_phase[name] for name in phases}
    out.update({f"peak/{name}": by_category.get(name, 0) for name in categories})
    return out


def _family(family: str, *, xfail: bool = False) -> object:
    marks = [pytest.mark.xdist_group(f"family-{family}")]
    if xfail and family in ACTIVATION_GAPS:
        marks.append(pytest.mark.xfail(strict=True, reason=ACTIVATION_GAPS[family]))
    return pytest.param(family, marks=marks, id=family)


@pytest.mark.parametrize("family", [_family(f) for f in sorted(CONFIGS)])
def test_family_trains(family: str) -> None:
    trace, analytic = _reports(family)
    tree = trace.breakdown
    present = [c.key for c in tree.children]
    assert present == [
        key for key in TRAINING_CATEGORIES if key in ("parameters", "activations") or tree.get(key)
    ]
    assert trace.scalars["peak_bytes"] == tree.total
    assert [p.name for p in trace.phases] == [
        *TRAINING_PHASES,
        *(f"first_step/{name}" for name in TRAINING_PHASES),
    ]
    layers = trace.sections["activations_end_of_forward"].find("layers")
    n_layers = spec_from_config(CONFIGS[family]).n_layers
    assert [c.key for c in layers.children] == [str(i) for i in range(n_layers)]
    assert _lines(trace, STATIC_PHASES, STATIC_CATEGORIES) == _lines(
        analytic, STATIC_PHASES, STATIC_CATEGORIES
    )
    assert trace.scalars["first_step_peak_bytes"] == analytic.scalars["first_step_peak_bytes"]


@pytest.mark.parametrize("family", [_family(f, xfail=True) for f in sorted(CONFIGS)])
def test_family_activations_equal_the_analytic_engine(family: str) -> None:
    trace, analytic = _reports(family)
    categories = ("activations", "autocast_cache", "temporaries")
    ours = _lines(analytic, ACTIVATION_PHASES, categories)
    theirs = _lines(trace, ACTIVATION_PHASES, categories)
    ours["peak"], theirs["peak"] = analytic.scalars["peak_bytes"], trace.scalars["peak_bytes"]
    assert ours == theirs


@pytest.mark.parametrize("family", sorted(CONFIGS))
def test_family_generates(family: str) -> None:
    prompt, gen = 16, 3
    setup = InferenceSetup(batch=2, prompt_len=prompt, gen_len=gen)
    report = trace_inference(CONFIGS[family], setup)
    spec = spec_from_config(CONFIGS[family])
    assert report.scalars["peak_bytes"] == report.breakdown.total
    assert report.scalars["peak_phase"] == "prefill"
    # bf16 weights, each tensor its own CUDA block (tied embeddings once)
    assert report.breakdown.get("parameters") == sum(
        alloc_bytes(t.numel * 2) for t in param_tensors(spec)
    )
    common = dict(batch=2, dtype_bytes=2, cache="dynamic", max_cache_len=prompt + gen)
    # after the last step: the prompt and every generated token but the last
    end = kv_cache_item(spec, n_tokens=prompt + gen - 1, decoded=True, **common)
    # the sliding layers' int64 counters included: the trace flags them as kv_cache
    assert report.scalars["kv_cache_bytes"] == end.total
