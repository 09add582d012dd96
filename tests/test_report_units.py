"""The report tree and the units module: the invariants every renderer relies on."""

from __future__ import annotations

import json

import pytest

from memplan.errors import SetupError
from memplan.report import Item, Phase, Report
from memplan.units import GIB, format_bytes, format_count, parse_size


def _tree() -> Item:
    root = Item("peak")
    root.leaf("parameters", 3 * GIB, formula="N x 2 B")
    acts = root.add(Item("activations"))
    acts.leaf("layer0", 1024)
    acts.leaf("layer1", 2048)
    return root


def test_inner_total_is_the_sum_of_children() -> None:
    root = _tree()
    assert root.find("activations").total == 3072
    assert root.total == 3 * GIB + 3072


def test_to_dict_keeps_integers_and_structure() -> None:
    data = _tree().to_dict()
    assert data["total"] == 3 * GIB + 3072
    assert isinstance(data["total"], int)
    assert [c["key"] for c in data["children"]] == ["parameters", "activations"]
    assert data["children"][0]["formula"] == "N x 2 B"


def test_flatten_paths_and_get() -> None:
    root = _tree()
    paths = [path for path, _ in root.flatten()]
    assert paths == [
        "peak",
        "peak/parameters",
        "peak/activations",
        "peak/activations/layer0",
        "peak/activations/layer1",
    ]
    assert root.get("activations/layer1") == 2048
    assert root.get("missing", default=-1) == -1


def test_report_json_contract() -> None:
    report = Report(
        kind="training",
        model="m",
        breakdown=_tree(),
        scalars={"peak_bytes": 123},
        phases=[Phase("after_load", 10)],
    )
    data = json.loads(json.dumps(report.to_dict()))
    assert data["peak_bytes"] == 123
    assert data["breakdown"]["key"] == "peak"
    assert data["phases"] == [{"name": "after_load", "bytes": 10}]


@pytest.mark.parametrize(
    ("text", "expected"),
    [("80GiB", 80 * GIB), ("80GB", 80 * 10**9), ("24e9", 24 * 10**9), ("1.5 GiB", 3 * GIB // 2)],
)
def test_parse_size(text: str, expected: int) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["", "lots", "80 parsecs", "-1GiB", "0"])
def test_parse_size_rejects_bad_input(text: str) -> None:
    with pytest.raises(SetupError):
        parse_size(text)


def test_formatting_labels_units() -> None:
    assert format_bytes(12.5 * GIB) == "12.50 GiB"
    assert format_bytes(12.5 * 10**9, decimal=True) == "12.50 GB"
    assert format_bytes(100) == "100 B"
    assert format_count(6738415616) == "6,738,415,616"
