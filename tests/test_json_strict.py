"""Every ``--json`` output is strict JSON: no NaN, no Infinity, anywhere."""

from __future__ import annotations

import json
from typing import Any

import pytest

from memplan.cli.compare import Row, compare_report
from memplan.cli.main import main
from memplan.cli.render import print_report
from memplan.report import Item, Report


def strict_loads(text: str) -> Any:
    """``json.loads`` that refuses the non-standard constants Python would accept."""

    def refuse(constant: str) -> Any:
        raise ValueError(f"not strict JSON: {constant}")

    return json.loads(text, parse_constant=refuse)


COMMANDS = [
    ["params", "llama-2-7b"],
    ["models"],
    ["gpus"],
    ["train", "llama-3.2-1b", "--batch", "2", "--seq", "1024", "--gpu", "H100"],
    ["infer", "qwen2.5-7b", "--gpu", "L40S", "--weights", "awq-int4"],
    ["serve-capacity", "phi-3-mini", "--gpu", "H100"],
    ["time", "gpt2-xl", "--gpu", "A100", "--steps", "10", "--seq", "1024"],
    ["compare", "gpt2", "--seq", "512", "--no-trace", "--methods"],
    ["compare", "llama-2-7b", "--gpus", "8", "--zero", "3", "--no-trace", "--methods"],
]


@pytest.mark.parametrize("argv", COMMANDS, ids=lambda argv: "-".join(argv[:2]))
def test_json_output_is_strict(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main([*argv, "--json"]) == 0
    strict_loads(capsys.readouterr().out)


def test_the_strict_parser_refuses_infinity() -> None:
    with pytest.raises(ValueError, match="Infinity"):
        strict_loads('{"error": Infinity}')


def test_a_line_the_trace_does_not_have_has_no_infinite_error(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The trace has 0 B of autocast cache where the analytic engine has 512 B: the relative
    error is infinite, so the JSON gives the exact difference and no error."""
    analytic = Report(kind="training", model="m", breakdown=Item("peak", 1024))
    rows = [Row("peak", 512, 1024), Row("peak/autocast_cache", 0, 512), Row("phase/x", None, 1)]
    report = compare_report(analytic, analytic, rows, [], None)

    class Args:
        json = True

    print_report(report, Args())
    data = strict_loads(capsys.readouterr().out)
    assert data["kind"] == "compare/training"
    assert data["rows"] == [
        {"line": "peak", "trace": 512, "analytic": 1024, "difference_bytes": 512, "error": 1.0},
        {
            "line": "peak/autocast_cache",
            "trace": 0,
            "analytic": 512,
            "difference_bytes": 512,
            "error": None,
        },
        {"line": "phase/x", "trace": None, "analytic": 1, "difference_bytes": None, "error": None},
    ]
    assert data["lines_identical"] == 0


def test_a_report_holding_infinity_is_refused_not_printed() -> None:
    report = Report(kind="x", model="m", breakdown=Item("peak", 1), scalars={"ratio": float("inf")})

    class Args:
        json = True

    with pytest.raises(ValueError):
        print_report(report, Args())
