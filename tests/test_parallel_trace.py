"""The analytic per-rank engine against the per-rank trace (fake process group), CUDA target.

Size-reduced Llama configs, plans of 8 ranks (the trace runs one rank in this process under a
fake process group of 8); every phase of the traced ranks within 1 % of the analytic figure,
exact where the engines agree to the byte. Plus the CLI: ``memplan trace --train`` and
``memplan compare`` with a plan, and the one-line refusals of what cannot be traced.
"""

from __future__ import annotations

import functools
import json

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

from memplan.cli.main import main
from memplan.errors import SetupError
from memplan.estimate.dist_report import parallel_training_report
from memplan.specs.hf import spec_from_config
from memplan.specs.parallel import Offload, ParallelPlan, Sharding
from memplan.specs.training import TrainingSetup
from memplan.trace.parallel import trace_parallel_training

pytestmark = pytest.mark.trace

CONFIG = {"model_type": "llama", "hidden_size": 64, "intermediate_size": 176,
          "num_hidden_layers": 2, "num_attention_heads": 8, "num_key_value_heads": 8,
          "vocab_size": 256, "max_position_embeddings": 1024, "tie_word_embeddings": False}  # fmt: skip
"""Every degree below divides heads, KV heads, widths and the vocabulary."""

SETUP = TrainingSetup(batch=2, seq=128)
"""The defaults otherwise: bf16-mixed, AdamW, sdpa, CUDA target (H100 kernels)."""

TOLERANCE = 0.01
PHASES = ("after_load", "end_of_forward", "peak_backward", "after_backward", "optimizer_step",
          "after_zero_grad")  # fmt: skip


def _plan(**kw: object) -> ParallelPlan:
    return ParallelPlan(gpus_per_node=8, **kw)  # type: ignore[arg-type]


PLANS = {
    "ddp": _plan(),
    "fsdp-full": _plan(sharding=Sharding.FSDP_FULL),
    "fsdp-shard-grad-op": _plan(sharding=Sharding.FSDP_SHARD_GRAD_OP),
    "tp8-sp": _plan(tp_degree=8, sequence_parallel=True),
    "fsdp2-tp4": _plan(tp_degree=4, sharding=Sharding.FSDP_FULL),
}


@functools.cache
def _bytes(name: str) -> tuple[dict[str, int], dict[str, int]]:
    """(analytic, trace) bytes per phase of rank 0 (each plan traced once per session)."""
    spec = spec_from_config(CONFIG, name="tiny-llama")
    plan = PLANS[name]
    trace = trace_parallel_training(CONFIG, SETUP, plan, ranks=[0])
    analytic = parallel_training_report(spec, SETUP, plan)
    mine = {p["name"]: p["bytes"] for p in analytic.scalars["ranks"][0]["phases"]}
    theirs = {p["name"]: p["bytes"] for p in trace.scalars["ranks"][0]["phases"]}
    return mine, theirs


def _errors(name: str) -> dict[str, float]:
    mine, theirs = _bytes(name)
    return {phase: (mine[phase] - theirs[phase]) / theirs[phase] for phase in theirs}


# Known disagreements (analytic - trace) / trace, measured at this size; strict: a fix on
# either side turns them into failures to remove here. The same gaps, in bytes on real gloo
# runs, are the strict xfails of tests/test_gloo_proof.py.
_FSDP_BACKWARD = (
    "FSDP2's backward high point: the analytic engine keeps the current and the prefetched "
    "layer gathered at the loss backward, the trace's high point comes after lm_head's "
    "reduce-scatter (peak_backward +7.14 % = +202,240 B full, +6.87 % shard-grad-op; every "
    "other phase exact: test_analytic_equals_the_trace_to_the_byte)"
)
_TP_VOCAB = (
    "TP shards the embeddings and lm_head by vocabulary rows (torchtitan's plan); the analytic "
    "engine replicates them (tp8-sp after_load +160.67 %, peak_backward +22.44 %; fsdp2-tp4 "
    "after_load +69.40 %, peak_backward +12.68 %: the toy vocabulary is most of the model)"
)
KNOWN = {
    "fsdp-full": _FSDP_BACKWARD,
    "fsdp-shard-grad-op": _FSDP_BACKWARD,
    "tp8-sp": _TP_VOCAB,
    "fsdp2-tp4": _TP_VOCAB,
}


@pytest.mark.parametrize(
    "name",
    [
        pytest.param(name, marks=[pytest.mark.xfail(strict=True, reason=KNOWN[name])])
        if name in KNOWN
        else name
        for name in PLANS
    ],
)
def test_analytic_within_one_percent_of_the_trace(name: str) -> None:
    errors = _errors(name)
    off = {phase: f"{100 * e:+.2f}%" for phase, e in errors.items() if abs(e) > TOLERANCE}
    assert not off, off


EXACT = {
    "ddp": PHASES,
    "fsdp-full": tuple(p for p in PHASES if p != "peak_backward"),
    "fsdp-shard-grad-op": tuple(p for p in PHASES if p != "peak_backward"),
}
"""Phases where the analytic engine equals the trace to the byte."""


@pytest.mark.parametrize("name", list(EXACT))
def test_analytic_equals_the_trace_to_the_byte(name: str) -> None:
    mine, theirs = _bytes(name)
    assert {p: mine[p] for p in EXACT[name]} == {p: theirs[p] for p in EXACT[name]}


def test_trace_cli_with_a_plan(tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    config = tmp_path / "config.json"
    config.write_text(json.dumps(CONFIG))
    argv = ["trace", str(config), "--train", "--gpus", "8", "--fsdp", "full", "--batch", "1",
            "--seq", "64", "--json"]  # fmt: skip
    assert main(argv) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["kind"] == "training/parallel" and out["method"] == "trace"
    (entry,) = out["ranks"]
    assert entry["ranks"] == [0] and entry["peak_bytes"] == out["peak_bytes"]
    assert [p["name"] for p in entry["phases"]] == list(PHASES)
    for phase in entry["phases"]:
        assert sum(phase["breakdown"].values()) == phase["bytes"]


def test_compare_cli_with_a_plan(tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    config = tmp_path / "config.json"
    config.write_text(json.dumps(CONFIG))
    argv = ["compare", str(config), "--gpus", "8", "--fsdp", "full", "--batch", "1", "--seq",
            "64", "--json"]  # fmt: skip
    assert main(argv) == 0
    out = json.loads(capsys.readouterr().out)
    rows = {row["line"]: row for row in out["rows"]}
    peak = rows["rank 0/peak"]
    assert peak["trace"] == out["trace"]["peak_bytes"]
    assert peak["analytic"] == out["analytic"]["peak_bytes"]
    assert all(row["trace"] is not None for row in rows.values() if "/phase/" in row["line"])


@pytest.mark.parametrize(
    ("plan", "words"),
    [
        (_plan(sharding=Sharding.ZERO_3), "DeepSpeed's runtime"),
        (_plan(pp_degree=2), "--pp 2"),
        (_plan(sharding=Sharding.FSDP_FULL, offload=Offload.PARAMS), "offload"),
    ],
)
def test_untraceable_plans_say_so_in_one_line(plan: ParallelPlan, words: str) -> None:
    with pytest.raises(SetupError, match=words) as info:
        trace_parallel_training(CONFIG, SETUP, plan)
    assert "\n" not in str(info.value)
