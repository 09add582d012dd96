"""Textbook training-memory methods reproduce their sources exactly (seeds 001-004)."""

from __future__ import annotations

import dataclasses

import pytest

from memplan.catalog import resolve
from memplan.estimate.fit import fit_training
from memplan.estimate.training import estimate_training
from memplan.formulas.methods_training import (
    METHODS,
    calc_all_seed003,
    korthikanti_activation_bytes_per_layer,
    method_result,
    seed004_bytes,
    seed004_max_batch,
)
from memplan.formulas.params import total_params
from memplan.specs.hardware import custom_gpu
from memplan.specs.training import Precision, TrainingSetup
from memplan.units import GB


def test_seed003_calc_all_total() -> None:
    parts = calc_all_seed003(24, 1024, 384, 4, 8192, 4, amp=True, dropout=True)
    assert sum(parts.values()) == 2_094_331_968
    # the notebook's printed intermediate lines
    assert parts["activations"] == 1_521_360_960
    assert parts["lm_head_output"] == 402_653_184
    assert parts["parameters"] == 42_481_152
    assert parts["optimizer_states"] == 84_962_304


def test_seed003_fp32_gpt_activations() -> None:
    # calc_saved_gpt_activations(B=48, S=1024, D=512, NH=4, V=8192, n_layers=8, amp=False,
    # dropout=True) printed 13,527,425,152
    parts = calc_all_seed003(48, 1024, 512, 4, 8192, 8, amp=False, dropout=True)
    assert parts["activations"] == 13_527_425_152


def test_seed004_gpt2_xl_formula_and_its_batch_of_two() -> None:
    spec = resolve("gpt2-xl")
    assert seed004_bytes(spec, 0, 1024) == 32_746_342_400  # 3.27463424e10
    assert seed004_bytes(spec, 1, 1024) - seed004_bytes(spec, 0, 1024) == 15_941_046_272
    assert seed004_max_batch(spec, 1024, 80 * GB) == 2


def test_seed004_question_exact_answer() -> None:
    """Seed 004's question answered by memplan: GPT-2 XL, fp32, AdamW, 1024, 80 GB."""
    spec = resolve("gpt2-xl")
    setup = TrainingSetup(batch=1, seq=1024, precision=Precision.FP32)
    found = fit_training(spec, setup, custom_gpu(memory_bytes=80 * GB))
    assert found.max_batch_size == 5
    at_five = estimate_training(spec, dataclasses.replace(setup, batch=5)).scalars["peak_bytes"]
    at_six = estimate_training(spec, dataclasses.replace(setup, batch=6)).scalars["peak_bytes"]
    assert at_five <= found.fit.usable_bytes < at_six


def test_korthikanti_eq1() -> None:
    # s*b*h*(34 + 5*a*s/h) with s=2048, b=1, h=12288, a=96 (GPT-3 175B, the paper's table)
    assert korthikanti_activation_bytes_per_layer(2048, 1, 12288, 96) == (
        2048 * 12288 * 34 + 5 * 96 * 2048 * 2048
    )


def test_sixteen_n_rule() -> None:
    spec = resolve("meta-llama/Llama-2-7b-hf")
    result = method_result(spec, TrainingSetup(batch=1, seq=512), "16n")
    assert result.parts["model_states_16n"] == 16 * total_params(spec) == 16 * 6_738_415_616


@pytest.mark.parametrize("method", sorted(METHODS))
def test_every_method_reports_and_says_why(method: str) -> None:
    spec = resolve("meta-llama/Llama-2-7b-hf")
    report = estimate_training(spec, TrainingSetup(batch=1, seq=1024), method=method)
    assert report.scalars["method"] == method
    assert report.scalars["peak_bytes"] == int(report.breakdown.total) > 0
    assert any(note.startswith("differs from exact") for note in report.notes)
