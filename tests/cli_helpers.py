"""Helpers for in-process CLI tests (imported by the test modules)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from memplan.cli.main import main


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
