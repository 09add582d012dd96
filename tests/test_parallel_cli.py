"""The plan flags on train, time, compare and trace, run in-process."""

from __future__ import annotations

import pytest

from cli_helpers import check_sums, cli_json
from memplan.cli.main import main

TRAIN_7B = ["train", "llama-2-7b", "--seq", "4096", "--gpu", "H100"]


def _error(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("memplan: error: ") and "\n" not in err
    return err


def test_train_json_has_ranks_communication_and_plan(capsys: pytest.CaptureFixture[str]) -> None:
    data = cli_json(capsys, [*TRAIN_7B, "--gpus", "16", "--tp", "2", "--pp", "2", "--json"])
    assert data["kind"] == "training/parallel"
    assert data["plan"]["dp_degree"] == 4 and data["plan"]["world_size"] == 16
    assert data["peak_bytes"] == max(group["peak_bytes"] for group in data["ranks"])
    assert [g["stage"] for g in data["ranks"]] == [0, 1]
    assert data["ranks"][0]["ranks"] == [0, 1, 2, 3, 4, 5, 6, 7]
    for group in data["ranks"]:
        check_sums(group["breakdown"])
        assert {p["name"] for p in group["phases"]} >= {"after_load", "peak_backward"}
    kinds = {(c["parallelism"], c["op"]) for c in data["communication"]}
    assert ("tp", "all-reduce") in kinds and ("pp", "send/recv") in kinds
    assert ("dp", "all-reduce") in kinds
    assert 0 < data["mfu"] <= 1 and data["step_seconds"] > 0


def test_train_text_has_a_column_per_rank_group_and_advice(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main([*TRAIN_7B, "--gpus", "8", "--pp", "2"]) == 0
    out = capsys.readouterr().out
    assert "stage 0: ranks 0-3" in out and "stage 1: ranks 4-7" in out
    assert "communication per rank and step" in out
    assert "would bring rank" in out or "fits with" in out
    assert main([*TRAIN_7B, "--gpus", "8"]) == 0  # plain DDP: does not fit, ZeRO-3 helps
    out = capsys.readouterr().out
    assert "does NOT fit" in out and "ZeRO-3 would bring rank 0 to" in out


def test_fsdp_lowers_the_peak(capsys: pytest.CaptureFixture[str]) -> None:
    ddp = cli_json(capsys, [*TRAIN_7B, "--gpus", "8", "--json"])["peak_bytes"]
    fsdp = cli_json(capsys, [*TRAIN_7B, "--gpus", "8", "--fsdp", "full", "--json"])["peak_bytes"]
    assert fsdp < ddp


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["--gpus", "8", "--tp", "3"], "gpus(8) is not divisible by tp(3)"),
        (["--gpus", "8", "--dp", "2", "--tp", "2"], "dp(2) * tp(2) * pp(1) * cp(1) = 4 != gpus(8)"),
        (["--gpus", "12", "--tp", "12"], "multiple of 8"),
        (["--gpus", "8", "--pp", "2", "--zero", "3"], "ZeRO stage 0 or 1"),
        (["--gpus", "8", "--global-batch", "20", "--batch", "2"], "dp(8) * micro-batch(2) = 16"),
        (["--gpus", "8", "--ep", "2"], "no experts"),
        (["--gpus", "8", "--network", "fast"], "link rate"),
    ],
)
def test_bad_plans_get_one_line(
    capsys: pytest.CaptureFixture[str], argv: list[str], needle: str
) -> None:
    assert needle in _error(capsys, ["train", "llama-2-7b", *argv])


def test_time_with_a_plan(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["time", "llama-2-7b", "--steps", "1000", "--batch", "64", "--seq", "4096",
            "--gpu", "H100", "--gpus", "16", "--tp", "2", "--json"]  # fmt: skip
    data = cli_json(capsys, argv)
    assert data["plan"]["dp_degree"] == 8 and data["steps"] == 1000
    assert data["seconds"] == pytest.approx(1000 * data["step_seconds"])
    assert 0 < data["mfu"] <= 1
    given = cli_json(capsys, [*argv, "--mfu", "0.5"])
    assert given["mfu"] == 0.5
    plain = cli_json(capsys, ["time", "llama-2-7b", "--steps", "1000", "--batch", "64",
                              "--seq", "4096", "--gpu", "H100", "--gpus", "16", "--json"])  # fmt: skip
    assert plain["mfu"] == 0.4  # --gpus alone keeps the MFU model


def test_compare_with_a_plan_without_trace(capsys: pytest.CaptureFixture[str]) -> None:
    data = cli_json(capsys, ["compare", "llama-2-7b", "--gpus", "8", "--zero", "3",
                             "--no-trace", "--methods", "--json"])  # fmt: skip
    assert data["rows"][0]["line"] == "rank 0/peak" and data["rows"][0]["trace"] is None
    assert {m["method"] for m in data["methods"]} == {"zero-paper", "korthikanti-tp", "deepspeed"}
