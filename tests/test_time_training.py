"""Training time: seed 004's GPT-2 XL run (about 132 days) and memplan's exact-FLOP figure."""

from __future__ import annotations

import json

import pytest

from memplan.catalog import resolve
from memplan.catalog.gpus import resolve_gpu
from memplan.cli.main import main
from memplan.errors import SetupError
from memplan.estimate.timing import TrainingRun, training_time_report
from memplan.formulas.time import cost_usd, gpu_hours, ridge_batch, training_time_s

SEED004 = ["gpt2-xl", "--steps", "400000", "--batch", "1024", "--seq", "1024", "--gpu", "A100"]
SEED004 += ["--dtype", "fp32", "--mfu", "0.5", "--json"]


def test_seed004_reproduced(capsys: pytest.CaptureFixture[str]) -> None:
    """Seed 004: 1.11325552e20 FLOPs at 9.75 TFLOP/s = 11,418,005.37 s, about 132 days."""
    assert main(["time", *SEED004, "--method", "seed004"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["flops"] == 111_325_552_312_320_000_000
    assert data["seconds"] == pytest.approx(11_418_005.37, abs=0.01)
    assert round(data["days"]) == 132


def test_seed004_setup_with_exact_flops(capsys: pytest.CaptureFixture[str]) -> None:
    """memplan's count of the same run: 48 layers and the lm_head, causal attention core."""
    assert main(["time", *SEED004]) == 0
    data = json.loads(capsys.readouterr().out)
    d, s, v, ff, layers, heads = 1600, 1024, 50257, 6400, 48, 25
    core = 2 * heads * (s * (s + 1) // 2) * 128
    forward = 1024 * (layers * (2 * s * (4 * d * d + 2 * d * ff) + core) + 2 * s * d * v)
    assert data["flops"] == 3 * forward * 400_000
    assert data["seconds"] == pytest.approx(data["flops"] / 9.75e12)
    assert data["days"] > 30 * 132  # the seed's formula leaves out 47 of the 48 layers


def test_cost_and_gpu_hours() -> None:
    spec = resolve("meta-llama/Llama-3.1-8B")
    run = TrainingRun(
        batch=512, seq=8192, tokens=10**12, n_gpus=256, mfu=0.4, price_per_gpu_hour=2.0
    )
    report = training_time_report(spec, run, resolve_gpu("H100"))
    s = report.scalars
    assert s["seconds"] == pytest.approx(s["flops"] / (256 * 989.5e12 * 0.4))
    assert s["gpu_hours"] == pytest.approx(s["seconds"] * 256 / 3600)
    assert s["cost_usd"] == pytest.approx(2 * s["gpu_hours"])
    assert s["steps"] == -(10**12 // -(512 * 8192))


def test_recompute_is_hardware_flops_only() -> None:
    spec = resolve("gpt2")
    plain = training_time_report(spec, TrainingRun(steps=10), resolve_gpu("A100")).scalars
    rec = training_time_report(spec, TrainingRun(steps=10, recompute=True), resolve_gpu("A100"))
    assert rec.scalars["flops"] == plain["flops"]
    assert rec.scalars["hardware_flops"] * 3 == plain["flops"] * 4
    assert rec.scalars["hfu"] == pytest.approx(0.4 * 4 / 3)


def test_time_formulas() -> None:
    assert training_time_s(1.95e13, 1, 19.5e12, 0.5) == pytest.approx(2.0)
    assert gpu_hours(3600, 8) == 8
    assert cost_usd(10, 2.5) == 25
    with pytest.raises(SetupError):
        training_time_s(1, 1, 1, 1.5)
    # weights 1 GB, no KV, 1 GFLOP per sequence, peak 1 TFLOP/s, 1 TB/s: B = 1e9 / (1e9 * 1) = 1
    assert ridge_batch(1e9, 0, 1e9, 1e12, 1e12, 1, 1) == pytest.approx(1.0)
    assert ridge_batch(1e9, 1e9, 1e9, 1e12, 1e12, 1, 1) is None


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["gpt2", "--steps", "10", "--gpu", "A100", "--mfu", "0"], "MFU"),
        (["gpt2", "--gpu", "A100"], "--steps"),
        (["gpt2", "--steps", "10", "--gpu", "V100", "--dtype", "bf16"], "no peak bf16"),
        (["gpt2", "--steps", "10"], "needs a GPU"),
    ],
)
def test_cli_bad_input(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["time", *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
