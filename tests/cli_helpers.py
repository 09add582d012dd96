"""Helpers for in-process CLI tests (imported by the test modules)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from memplan.cli.main import main


def cli_run(capsys: pytest.CaptureFixture[str], argv: list[str]) -> tuple[int, str, str]:
    """Run ``memplan ARGV`` in-process: (exit status, stdout, stderr)."""
    status = main(argv)
    out, err = capsys.readouterr()
    return status, out, err


def cli_json_of(capsys: pytest.CaptureFixture[str], argv: list[str]) -> dict[str, Any]:
    """Run ``memplan ARGV --json`` in-process; it must succeed (else its stderr is the
    message); return its JSON output."""
    status, out, err = cli_run(capsys, [*argv, "--json"])
    assert status == 0, err
    return json.loads(out)


def cli_json(capsys: pytest.CaptureFixture[str], argv: list[str]) -> dict[str, Any]:
    """Run ``memplan ARGV`` in-process; it must succeed; return its JSON output."""
    assert main(argv) == 0
    return json.loads(capsys.readouterr().out)


def check_sums(node: dict[str, Any]) -> None:
    """Every inner node of a JSON breakdown tree totals the sum of its children."""
    children = node.get("children", [])
    if children:
        assert node["total"] == sum(child["total"] for child in children), node["key"]
        for child in children:
            check_sums(child)
