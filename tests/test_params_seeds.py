"""Seed reproductions: parameter counts and weight memory from the seed documents."""

from __future__ import annotations

import pytest

from memplan.catalog import resolve
from memplan.formulas.methods_params import (
    method_params,
    seed000_params,
    seed000_swiglu_params,
    seed001_params,
    seed002_nominal_params,
    seed003_calc_params,
)
from memplan.formulas.params import param_totals, total_params
from memplan.formulas.weights import weights_total_bytes
from memplan.units import GIB


def test_llama2_7b_exact_count_is_seed000_measurement() -> None:
    # seed 000: "Total parameters6738415616" printed by the measured run
    assert total_params(resolve("meta-llama/Llama-2-7b-hf")) == 6_738_415_616


def test_seed000_closed_form_with_dff_4e() -> None:
    # seed 000, "llama_7B parameter number" (E = 4096, N = 32, V = 32000): "Calculated total
    # number of parameters = 8,852,344,832" for VE + N(4E^2 + E + 12E^2 + E) + E + VE, and
    # "if let 4=8/3, ... = 6,704,861,184": d_ff = 8/3 E makes the MLP's 12E^2 exactly 8E^2
    v, e, n = 32000, 4096, 32
    assert seed000_params(v, e, n) == 2 * v * e + n * (16 * e * e + 2 * e) + e == 8_852_344_832
    assert seed000_swiglu_params(v, e, n) == 2 * v * e + n * (12 * e * e + 2 * e) + e
    assert seed000_swiglu_params(v, e, n) == 6_704_861_184


def test_seed001_formula_leaves_out_the_norms() -> None:
    spec = resolve("llama-2-7b")
    assert seed001_params(32000, 4096, 32, 4096, 11008, 3) == 6_738_149_376
    result = method_params(spec, "seed001")
    assert result.total == 6_738_149_376
    # the 65 RMSNorm weight vectors (2 per layer + final) are the whole difference
    assert total_params(spec) - result.total == (2 * 32 + 1) * 4096


def test_seed003_calc_params() -> None:
    assert seed003_calc_params(512, 384, 8192, 1, True) == 4_920_960


def test_seed003_method_is_exact_for_gpt2() -> None:
    spec = resolve("gpt2")
    assert method_params(spec, "seed003").total == total_params(spec) == 124_439_808


def test_seed000_method_on_llama2_7b() -> None:
    assert method_params(resolve("llama-2-7b"), "seed000").total == 8_852_344_832


def test_phi3_mini_bf16_weights_seed002() -> None:
    # seed 002: vLLM logs "Loading model weights took 7.1183 GB" (GiB) for
    # Phi-3-mini-4k-instruct. The parameters alone are 3,821,079,552 x 2 B = 7.1173 GiB; the
    # remaining ~1 MiB is vLLM's own (its rotary cos/sin cache, 4096 x 96 bf16 = 0.75 MiB,
    # and allocator rounding), not parameters. Stated tolerance: 0.0015 GiB.
    spec = resolve("microsoft/Phi-3-mini-4k-instruct")
    assert total_params(spec) == 3_821_079_552
    size = weights_total_bytes(spec, "bf16")
    assert size == 7_642_159_104
    assert round(size / GIB, 4) == 7.1173
    assert abs(7.1183 - size / GIB) < 0.0015


def test_seed002_llama3_70b_approximation_beside_exact() -> None:
    # seed 002 takes 70e9 x 2 B = 130.4 GiB; the exact count is 70,553,706,496
    approx = 70_000_000_000 * 2 / GIB
    assert approx == pytest.approx(130.385, abs=1e-3)
    spec = resolve("meta-llama/Meta-Llama-3-70B")
    exact = weights_total_bytes(spec, "bf16")
    assert exact == 70_553_706_496 * 2
    assert round(exact / GIB, 1) == 131.4
    seed = method_params(spec, "seed002")
    assert seed.total == 70_000_000_000
    assert "130.4 GiB" in seed.why
    assert seed002_nominal_params("Qwen/Qwen3-30B-A3B") == 30_000_000_000
    assert seed002_nominal_params("openai-community/gpt2") is None


def test_moe_active_params() -> None:
    totals = param_totals(resolve("mixtral-8x7b"))
    assert totals.total == 46_702_792_704
    # 6 of 8 experts skipped in each of 32 layers, 3 x 4096 x 14336 each
    assert totals.active_per_token == 46_702_792_704 - 32 * 6 * 3 * 4096 * 14336
    assert totals.active_per_token == 12_879_925_248
