"""The analytic per-rank engine against full-size traces of parallel plans (recorded).

``scripts/trace_full_size.py`` traces Llama-2-7B and Llama-3-70B under FSDP2 and TP on 8 to
64 ranks (fake tensors, a fake process group, minutes per rank) and records every traced
rank's phases in ``tests/data/full_size_traces.json``; ``docs/accuracy.md`` shows them beside
the analytic report. Here the analytic engine, recomputed now (no torch), is held to them:
every phase within 1 %, to the byte where the engines agree. A change to either engine that
moves a figure fails here until the recording is redone (rerun the script).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from memplan.estimate.dist_report import parallel_training_report

ROOT = Path(__file__).resolve().parents[1]
RECORDED = json.loads((ROOT / "tests" / "data" / "full_size_traces.json").read_text())
sys.path.insert(0, str(ROOT / "scripts"))
from trace_full_size import parse  # noqa: E402

TOLERANCE = 0.01

# FSDP2's backward high point (as at toy size, tests/test_parallel_trace.py): the analytic
# engine holds the current and the prefetched layer gathered at the loss backward; the traced
# high point comes after lm_head's reduce-scatter. Every other phase is exact.
_FSDP_BACKWARD = "FSDP2's backward high point placed at the loss backward: peak_backward {}"
KNOWN = {
    ("llama-2-7b", "--gpus 8 --fsdp full"): _FSDP_BACKWARD.format("+2.177 %"),
    ("llama-2-7b", "--gpus 64 --fsdp full"): _FSDP_BACKWARD.format("+2.856 %"),
    ("llama-2-7b", "--gpus 8 --fsdp shard-grad-op"): _FSDP_BACKWARD.format("+1.628 %"),
    ("llama-3-70b", "--gpus 64 --fsdp full"): _FSDP_BACKWARD.format("+2.088 %"),
    ("llama-2-7b", "--gpus 8 --tp 8 --sp"): (
        "TP in bf16-mixed: the analytic engine counts autocast's bf16 weight copies, which the "
        "trace does not keep for DTensor weights (+0.214 GiB activations): end_of_forward "
        "+1.104 %, peak_backward +1.051 %; the model states are exact (vocabulary-sharded "
        "embeddings and lm_head) but for 32,768 B of position_ids the trace passes"
    ),
}
"""Recorded cases where a phase is more than 1 % off, with the measured error (strict)."""

EXACT_BUT = {
    ("llama-2-7b", "--gpus 8 --fsdp full"): {"peak_backward"},
    ("llama-2-7b", "--gpus 64 --fsdp full"): {"peak_backward"},
    ("llama-2-7b", "--gpus 8 --fsdp shard-grad-op"): {"peak_backward"},
    ("llama-3-70b", "--gpus 64 --fsdp full"): {"peak_backward"},
}
"""Recorded cases exact to the byte at every phase but these."""

WITHIN_BUT_NOT_EXACT = {
    ("llama-3-70b", "--gpus 64 --tp 8 --sp --fsdp full"): (
        "FSDP2 x TP within 1 %, not to the byte: the trace passes position_ids under sequence "
        "parallelism (-32,768 B inputs at every phase) and FSDP2's backward high point is "
        "placed at the loss backward (peak_backward +0.929 %)"
    ),
}
"""Recorded cases within the tolerance but not exact, with the measured gap (strict)."""


def _key(case: dict) -> tuple[str, str]:
    return case["model"], case["flags"]


def _pairs(case: dict) -> list[tuple[int, str, int, int]]:
    """(rank, phase, analytic bytes, traced bytes) of every traced rank and phase."""
    spec, setup, plan = parse(case["model"], case["flags"])
    groups = parallel_training_report(spec, setup, plan).scalars["ranks"]
    by_rank = {r: g for g in groups for r in g["ranks"]}
    out = []
    for entry in case["ranks"]:
        rank = entry["ranks"][0]
        mine = {p["name"]: int(p["bytes"]) for p in by_rank[rank]["phases"]}
        out += [(rank, p["name"], mine[p["name"]], int(p["bytes"])) for p in entry["phases"]]
    return out


def _params(known: dict) -> list:
    return [
        pytest.param(
            case,
            id=f"{case['model']} {case['flags']}",
            marks=[pytest.mark.xfail(strict=True, reason=known[_key(case)])]
            if _key(case) in known
            else [],
        )
        for case in RECORDED["cases"]
    ]


@pytest.mark.parametrize("case", _params(KNOWN))
def test_analytic_within_one_percent_of_the_full_size_trace(case: dict) -> None:
    off = {
        f"rank {rank} {phase}": f"{100 * (mine - traced) / traced:+.3f} %"
        for rank, phase, mine, traced in _pairs(case)
        if abs(mine - traced) > TOLERANCE * traced
    }
    assert not off, off


@pytest.mark.parametrize(
    "case",
    _params({**{k: v for k, v in KNOWN.items() if k not in EXACT_BUT}, **WITHIN_BUT_NOT_EXACT}),
)
def test_analytic_equals_the_full_size_trace_to_the_byte(case: dict) -> None:
    skip = EXACT_BUT.get(_key(case), set())
    gaps = {
        f"rank {rank} {phase}": mine - traced
        for rank, phase, mine, traced in _pairs(case)
        if phase not in skip and mine != traced
    }
    assert not gaps, gaps


def test_the_recording_covers_the_scripts_cases() -> None:
    """Every case of scripts/trace_full_size.py is recorded."""
    from trace_full_size import CASES

    assert [_key(case) for case in RECORDED["cases"]] == list(CASES)
