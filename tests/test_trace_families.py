"""Every family of the catalog traces, training and inference (size-reduced configs)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

from memplan.formulas.vision import vision_params
from memplan.specs.hf import spec_from_config
from memplan.specs.inference import InferenceSetup
from memplan.specs.training import TrainingSetup
from memplan.trace.inference import trace_inference
from memplan.trace.training import trace_training

pytestmark = pytest.mark.trace

CONFIGS = json.loads((Path(__file__).parent / "data" / "trace_tiny_configs.json").read_text())
KEYS = ("parameters", "gradients", "optimizer_states", "activations")


@pytest.mark.parametrize("family", sorted(CONFIGS))
def test_family_trains(family: str) -> None:
    report = trace_training(CONFIGS[family], TrainingSetup(batch=2, seq=32))
    tree = report.breakdown
    assert [c.key for c in tree.children][:2] == ["parameters", "gradients"] or tree.get(
        "gradients"
    ) == 0
    assert report.scalars["peak_bytes"] == tree.total
    assert report.scalars["peak_bytes"] >= report.scalars["first_step_peak_bytes"] > 0
    assert [p.name for p in report.phases[:6]] == [
        "after_load",
        "end_of_forward",
        "peak_backward",
        "after_backward",
        "optimizer_step",
        "after_zero_grad",
    ]
    # steady state before forward: bf16-mixed keeps fp32 parameters and two fp32 AdamW states;
    # a vision tower, which text inputs do not run, gets no gradient and so no state
    vision = vision_params(spec_from_config(dict(CONFIGS[family])))
    text = report.scalars["total_params"] - vision
    assert report.phases[0].bytes >= (3 * text + vision) * 4
    layers = report.sections["activations_end_of_forward"].find("layers")
    assert len(layers.children) >= 1


@pytest.mark.parametrize("family", sorted(CONFIGS))
def test_family_generates(family: str) -> None:
    report = trace_inference(CONFIGS[family], InferenceSetup(batch=2, prompt_len=16, gen_len=3))
    assert report.scalars["kv_cache_bytes"] > 0
    assert report.scalars["peak_bytes"] == report.breakdown.total
    assert report.breakdown.get("parameters") >= 2 * report.scalars["total_params"]
