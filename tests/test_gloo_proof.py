"""Proof on PyTorch's own distributed runtime: gloo, 2 and 4 processes, real small models.

One spawn per world size runs every case of :func:`memplan.trace.proof.gloo_cases` (DDP,
FSDP2 full / shard-grad-op / mixed precision / bf16, tensor and sequence parallelism, FSDP2 x
TP; Llama with grouped KV heads, Qwen2, Mixtral; pipelining, GPipe and 1F1B, on 2 ranks) and
measures each rank three ways: PyTorch's
``MemTracker`` / ``FSDPMemTracker``, memplan's tracker on the same real run, and memplan's
trace of the same rank under a fake process group. The results are shared by the tests of a
session (``gloo2`` / ``gloo4`` fixtures); by default a light subset of the cases (:data:`LIGHT`),
every case with ``MEMPLAN_GLOO_FULL=1``. Three claims:

1. the fake trace equals the real run, per phase and per category, on every rank;
2. memplan's tracker equals PyTorch's MemTracker on the real run, per phase, and on the model
   states (parameters, gradients, optimizer states, buffers);
3. the analytic per-rank report (``--target cpu``) equals the measurement, per rank, phase and
   category: where it does not yet, a strict xfail says by how much and why.

Pipelines (``memplan.trace.pipeline``) are measured by PyTorch's MemTracker alone (memplan's
tracker and the fake trace do not run them): the analytic per-stage report is held to it per
phase, and on the model states it names the same way (parameters, gradients, optimizer
states, buffers).
"""

from __future__ import annotations

import os

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

from memplan.estimate.dist_report import parallel_training_report
from memplan.specs.hf import spec_from_config
from memplan.trace.gloo import run_gloo
from memplan.trace.proof import (
    PIPELINE_MICRO_BATCHES,
    analytic_gaps,
    gloo_cases,
    measured_phases,
    memtracker_phases,
    pipeline_cases,
)

pytestmark = [pytest.mark.trace, pytest.mark.gloo, pytest.mark.xdist_group("gloo")]

CASES = {world: {case.name: case for case in gloo_cases(world)} for world in (2, 4)}
PIPELINE = {case.name: case for case in pipeline_cases()}
"""Pipeline cases (pp 2, GPipe and 1F1B): run in the 2-rank spawn, measured by MemTracker only."""

FULL = os.environ.get("MEMPLAN_GLOO_FULL", "") == "1"
"""Run every case (``MEMPLAN_GLOO_FULL=1``; ``make accuracy`` runs them all for
docs/accuracy.md). Otherwise the cases of :data:`LIGHT`, which keep the spawns within about
a minute on two cores."""

LIGHT = {
    2: ("llama/ddp", "llama/fsdp-shard-grad-op", "llama/fsdp-bf16-mixed", "qwen2/tp-sp",
        "mixtral/ddp"),
    4: ("llama-odd/fsdp-full",),
}  # fmt: skip
"""One case of each kind (DDP; FSDP2 without resharding, in mixed precision, and full with an
uneven shard on 4 ranks; tensor and sequence parallelism; MoE) on each family.

mixtral/fsdp-full is not one of them: in about 1 of 4 runs (twice, on two branches, with the
same bytes) PyTorch's MemTracker reads rank 0's peak_backward 250,880 B above memplan's
tracker on the same run (3,425,372 against 3,174,492 B: MemTracker holds a layer's sharded
gradient and reduce-scatter input at its high point, memplan's tracker a different moment);
the other runs agree to the byte. In one ``make accuracy`` run the real run without
MemTracker also differed from the fake trace, so the real gloo run itself varies, not only the
comparison of trackers. The cause is not pinned down: turning the cyclic garbage collector off
during the measured run did not remove it; the timing of gloo's worker threads against FSDP2's
reduce-scatters is the remaining suspect. An intermittent gap cannot be
a strict xfail, so CI runs mixtral/ddp for MoE instead; mixtral/fsdp-full runs with
MEMPLAN_GLOO_FULL=1 (and make accuracy), where the same can happen."""

HEAVY = pytest.mark.skipif(
    not FULL, reason="heavy gloo case: MEMPLAN_GLOO_FULL=1 runs it (so does make accuracy)"
)


def _run(world: int) -> dict:
    cases = [c for name, c in CASES[world].items() if FULL or name in LIGHT[world]]
    if world == 2:
        cases += PIPELINE.values()
    return run_gloo(world, cases, fake=True)


@pytest.fixture(scope="session")
def gloo2() -> dict:
    return _run(2)


@pytest.fixture(scope="session")
def gloo4() -> dict:
    return _run(4)


def _results(request: pytest.FixtureRequest, world: int, name: str) -> list[dict]:
    return request.getfixturevalue(f"gloo{world}")[name]  # type: ignore[no-any-return]


def _phases(report: dict) -> dict[str, tuple[int, dict[str, int]]]:
    return {p["name"]: (p["bytes"], p.get("breakdown", {})) for p in report["phases"]}


def _ids(world: int) -> list:
    return [
        pytest.param(
            world,
            name,
            id=f"W{world}-{name}",
            marks=[] if name in LIGHT[world] else [pytest.mark.slow, HEAVY],
        )
        for name in CASES[world]
    ]


ALL = _ids(2) + _ids(4)


def _marked(known: dict[str, str]) -> list:
    out = []
    for param in ALL:
        reason = known.get(param.id)
        marks = [pytest.mark.xfail(strict=True, reason=reason)] if reason else []
        out.append(pytest.param(*param.values, id=param.id, marks=[*param.marks, *marks]))
    return out


# PyTorch's MemTracker keeps the autograd nodes of custom ops alive, and with them their
# keyword arguments: transformers' grouped-mm fallback for MoE experts keeps its int32 offsets
# (one per expert, 16 B here) for each of its two calls per layer and iteration. The run
# without MemTracker (``plain``) is the one the fake trace and the analytic engine are held to.
_MEMTRACKER_OFFSETS = "MemTracker keeps grouped_mm_fallback's offsets alive (+16 B per call)"
# gloo reduce-scatters by reducing a full copy of the input on its worker thread and cutting
# the result up in Work.wait(); PyTorch's MemTracker counts that copy, memplan's tracker does
# not (a backend's own buffer, as NCCL's are), and under mixed precision it sits at the
# backward's high point.
_GLOO_COPY = (
    "MemTracker counts gloo's copy of the fp32 reduce-scatter input (+91,904 B at "
    "peak_backward, llama bf16-mixed W2)"
)
MEMTRACKER_VS_FAKE = {
    "W2-llama/fsdp-bf16-mixed": _GLOO_COPY,
    "W2-mixtral/ddp": _MEMTRACKER_OFFSETS,
    "W2-mixtral/fsdp-full": _MEMTRACKER_OFFSETS,
    "W4-mixtral/fsdp-bf16-mixed": f"{_MEMTRACKER_OFFSETS}; {_GLOO_COPY}",
}
MEMTRACKER_VS_MEMPLAN = {
    "W2-llama/fsdp-bf16-mixed": _GLOO_COPY,
    "W4-mixtral/fsdp-bf16-mixed": _GLOO_COPY,
}


@pytest.mark.parametrize(("world", "name"), ALL)
def test_fake_trace_equals_the_real_run(
    request: pytest.FixtureRequest, world: int, name: str
) -> None:
    """Every phase of both iterations, every category and communication line, every rank."""
    for rank, result in enumerate(_results(request, world, name)):
        real = result.get("plain") or result["report"]
        assert _phases(result["fake"]) == _phases(real), f"rank {rank}"
        assert result["fake"]["sections"]["communication"] == real["sections"]["communication"]


@pytest.mark.parametrize(("world", "name"), _marked(MEMTRACKER_VS_FAKE))
def test_fake_trace_equals_pytorch_memtracker(
    request: pytest.FixtureRequest, world: int, name: str
) -> None:
    """The fake trace against PyTorch's own tracker on the real run, phase by phase."""
    for rank, result in enumerate(_results(request, world, name)):
        fake = {n: b for n, (b, _) in _phases(result["fake"]).items() if "/" not in n}
        assert fake == result["memtracker"]["phases"], f"rank {rank}"


# PyTorch's categories that mean what memplan's mean (the rest differ by definition:
# MemTracker's "Activation" is everything made in the forward, "Temp" in the backward).
_SAME_CATEGORIES = {
    "Parameter": "parameters",
    "Sharded Param": "parameters",
    "Gradient": "gradients",
    "Sharded Grad": "gradients",
    "Optstate": "optimizer_states",
    "OptState": "optimizer_states",
    "Buffer": "buffers",
}


@pytest.mark.parametrize(("world", "name"), _marked(MEMTRACKER_VS_MEMPLAN))
def test_memplan_tracker_equals_pytorch_memtracker(
    request: pytest.FixtureRequest, world: int, name: str
) -> None:
    """Same real run, two trackers: the phases, and the model states at the quiet phases."""
    bucket_view = CASES[world][name].plan.gradient_as_bucket_view
    for rank, result in enumerate(_results(request, world, name)):
        ours = _phases(result["report"])
        theirs = result["memtracker"]
        for phase, total in theirs["phases"].items():
            # both breakdowns in the message: a disagreement says which category moved
            why = f"rank {rank} {phase}: {ours[phase][1]} vs {theirs['categories'][phase]}"
            assert ours[phase][0] == total, why
        for phase in ("after_load", "after_backward", "after_zero_grad"):
            mapped: dict[str, int] = {}
            for key, value in theirs["categories"][phase].items():
                if key in _SAME_CATEGORIES:
                    mapped[_SAME_CATEGORIES[key]] = mapped.get(_SAME_CATEGORIES[key], 0) + value
            if bucket_view:  # the gradients are DDP's buckets: MemTracker sees activations
                mapped.pop("gradients", None)
            mine = {k: ours[phase][1].get(k, 0) for k in mapped}
            assert mine == mapped, f"rank {rank} {phase}"


# Known disagreements of the analytic engine with the measurement (strict: a fix turns them
# into failures to remove here). Gaps are analytic minus measured, at batch 2, seq 32; every
# rank of a case shows the same gap.
_CPU_GQA = (
    "single-GPU engine, --target cpu, Llama/Qwen2/Mixtral with grouped KV heads and sdpa: "
    "+96,256 B of activations at end_of_forward (fp32; +48 B bf16)"
)
_CPU_ADAMW = (
    "AdamW step temporaries on the cpu target: -4,096 B (DDP), -2,048 B (FSDP2 or TP 2), "
    "-1,024 B (FSDP2 x TP 2)"
)
_FSDP_BACKWARD = (
    "FSDP2 backward high point: the analytic one has +256,256 B activations and -110,848 B "
    "communication (llama, fp32; qwen2 -106,752 B, llama-odd W4 -109,312 B, mixtral -360,704 "
    "B): it is placed at the loss backward, the measured one after lm_head's reduce-scatter"
)
_FSDP_KEEP = "shard-grad-op: +184,832 B communication at peak_backward (one layer's gathered "
_FSDP_KEEP += "parameters and reduce-scatter input the measurement does not hold there)"
_FSDP_HALF = (
    "FSDP2 in bf16 compute: +184,832 B (bf16-mixed) / +92,416 B (bf16) communication at "
    "peak_backward, buffers the measurement does not hold at its high point"
)
_TP_GQA = (
    "the cpu-target GQA gap above at tensor parallelism's half of the heads: +48,128 B "
    "activations at end_of_forward and peak_backward (tp 2; +44,032 B with sequence parallelism)"
)
_TP_2D = "FSDP2 x TP: communication +92,672 B at peak_backward"
_SP_INPUTS = "sequence parallelism passes position_ids: -256 B inputs"
_MOE = (
    "MoE backward high point: analytic +442,096 B activations, -360,704 B gradients (DDP) or "
    "communication (FSDP2) at peak_backward (fp32)"
)
ANALYTIC_STATES: dict[str, str] = {}
ANALYTIC_COMMUNICATION: dict[str, str] = {
    "W2-llama/fsdp-full": _FSDP_BACKWARD,
    "W2-llama/fsdp-shard-grad-op": _FSDP_KEEP,
    "W2-llama/fsdp-bf16-mixed": _FSDP_HALF,
    "W2-llama/fsdp-bf16": _FSDP_HALF,
    "W2-qwen2/fsdp-full": _FSDP_BACKWARD,
    "W2-mixtral/fsdp-full": _MOE,
    "W4-llama-odd/fsdp-full": _FSDP_BACKWARD,
    "W4-llama/fsdp-tp-sp": _TP_2D,
    "W4-mixtral/fsdp-bf16-mixed": _MOE + "; bf16-mixed: -205,696 B communication",
}
ANALYTIC_PHASES: dict[str, str] = {
    "W2-llama/ddp": f"{_CPU_GQA}; {_CPU_ADAMW}",
    "W2-llama/ddp-bucket-view": f"{_CPU_GQA}; {_CPU_ADAMW}",
    "W2-llama/ddp-bf16-mixed": "autocast's bf16 weight copies: analytic autocast_cache "
    f"+217,088 B, activations -217,040 B (the cpu trace counts them as saved tensors); {_CPU_ADAMW}",
    "W2-llama/fsdp-full": f"{_CPU_GQA}; {_FSDP_BACKWARD}",
    "W2-llama/fsdp-shard-grad-op": f"{_CPU_GQA}; {_FSDP_KEEP}",
    "W2-llama/fsdp-bf16-mixed": f"{_CPU_GQA}; {_FSDP_HALF}",
    "W2-llama/fsdp-bf16": f"{_CPU_GQA}; {_FSDP_HALF}",
    "W2-llama/tp": f"{_TP_GQA}; {_CPU_ADAMW}",
    "W2-llama/tp-sp": f"{_TP_GQA}; {_SP_INPUTS}; {_CPU_ADAMW}",
    "W2-qwen2/fsdp-full": f"{_CPU_GQA}; {_FSDP_BACKWARD}",
    "W2-qwen2/tp-sp": f"{_TP_GQA}; {_SP_INPUTS}; AdamW step temporaries -256 B",
    "W2-mixtral/ddp": f"{_CPU_GQA}; {_MOE}",
    "W2-mixtral/fsdp-full": f"{_CPU_GQA}; {_MOE}",
    "W4-llama-odd/fsdp-full": f"{_CPU_GQA}; {_FSDP_BACKWARD}",
    "W4-llama/fsdp-tp-sp": f"{_TP_GQA}; {_TP_2D}; {_SP_INPUTS}; {_CPU_ADAMW}",
    "W4-mixtral/fsdp-bf16-mixed": f"{_MOE}; {_FSDP_HALF}",
}


def _analytic(world: int, name: str) -> list[dict]:
    case = CASES[world][name]
    spec = spec_from_config(case.config, name=name.split("/")[0])
    return parallel_training_report(spec, case.setup, case.plan).scalars["ranks"]  # type: ignore[no-any-return]


_STATES = ("parameters", "optimizer_states", "buffers")


def _gaps(request: pytest.FixtureRequest, world: int, name: str) -> list:
    results = _results(request, world, name)
    measured = {rank: measured_phases(result) for rank, result in enumerate(results)}
    return analytic_gaps(_analytic(world, name), measured)


@pytest.mark.parametrize(("world", "name"), _marked(ANALYTIC_STATES))
def test_analytic_model_states_equal_the_measurement(
    request: pytest.FixtureRequest, world: int, name: str
) -> None:
    """Parameters, optimizer states and buffers at every phase, gradients after backward: the
    sharding arithmetic (padding, dtypes, what TP splits), rank by rank."""
    gaps = [
        g for g in _gaps(request, world, name)
        if g.line in _STATES or (g.line == "gradients" and g.phase == "after_backward")
    ]  # fmt: skip
    assert not gaps, "\n".join(str(g) for g in gaps)


@pytest.mark.parametrize(("world", "name"), _marked(ANALYTIC_COMMUNICATION))
def test_analytic_communication_equals_the_measurement(
    request: pytest.FixtureRequest, world: int, name: str
) -> None:
    """The communication buffers (DDP's buckets, FSDP2's unsharded parameters and gradients,
    all-gather and reduce-scatter buffers) at every phase, rank by rank."""
    gaps = [g for g in _gaps(request, world, name) if g.line == "communication"]
    assert not gaps, "\n".join(str(g) for g in gaps)


@pytest.mark.parametrize(("world", "name"), _marked(ANALYTIC_PHASES))
def test_analytic_per_rank_equals_the_measurement(
    request: pytest.FixtureRequest, world: int, name: str
) -> None:
    """Every rank, phase and category of the analytic report against the real run."""
    gaps = _gaps(request, world, name)
    assert not gaps, "\n".join(str(g) for g in gaps)


@pytest.mark.parametrize(("world", "name"), ALL)
def test_distinct_rank_groups_are_the_measured_ones(
    request: pytest.FixtureRequest, world: int, name: str
) -> None:
    """Ranks the analytic engine puts in one group measure the same, and only those (FSDP2's
    padding makes the last rank of an uneven dimension differ)."""
    measured: dict[str, list[int]] = {}
    for rank, result in enumerate(_results(request, world, name)):
        measured.setdefault(repr(measured_phases(result)), []).append(rank)
    analytic = [list(group["ranks"]) for group in _analytic(world, name)]
    assert sorted(analytic) == sorted(measured.values())


# Pipelines: each stage of pp 2 on its own gloo rank, measured by PyTorch's MemTracker, beside
# the analytic per-stage report. Gaps are analytic minus measured (batch 2, seq 32, M = 4).
_PP_STATE_PHASES = ("after_load", "end_of_forward", "after_backward", "after_zero_grad")
"""Where MemTracker's model-state categories mean memplan's (at ``peak_backward`` and in the
optimizer step its "Optstate" includes the step's temporaries)."""
_PP_BUFFERS = (
    f"torch.distributed.pipelining allocates one receive buffer per micro-batch, kept across "
    f"steps (stage 0: the output gradients, stage 1: the inputs; {PIPELINE_MICRO_BATCHES} x "
    "b*s*h fp32 = 65,536 B), and its step takes the whole batch (token ids or labels of every "
    "micro-batch, +1,536 B): -67,072 B at every phase on both stages, where the analytic "
    "engine counts 2 send/recv buffers (32,768 B) inside the step and one micro-batch of "
    "inputs; AdamW's cpu step temporaries -4,096 B more at optimizer_step"
)
_PP_ACTS = (
    "activations per micro-batch in flight: +31,744 B on stage 0 (embeddings and layer 0), "
    "-772 B on stage 1 (layer 1, norm, lm_head and loss)"
)
PIPELINE_PHASES = {
    "W2-llama/pp-gpipe": (
        f"{_PP_BUFFERS}; {_PP_ACTS}: end_of_forward +92,672 / -37,392 B (stage 0 / 1); "
        "peak_backward +359,424 / +234,224 B: the analytic high point holds every gradient, "
        "the measured one (the first backward, every micro-batch in flight) 45,056 B / none"
    ),
    "W2-llama/pp-1f1b": (
        f"{_PP_BUFFERS}; {_PP_ACTS}, and stage 0 holds one more (b, s, h) fp32 send buffer "
        "(16,384 B) at its high point: end_of_forward +12,800 / -51,472 B, peak_backward "
        "+74,240 / -30,480 B (stage 0 / 1)"
    ),
}


def _pipeline(request: pytest.FixtureRequest, name: str) -> list:
    results = request.getfixturevalue("gloo2")[name]
    case = PIPELINE[name]
    spec = spec_from_config(case.config, name="llama")
    analytic = parallel_training_report(spec, case.setup, case.plan).scalars["ranks"]
    measured = {rank: memtracker_phases(result) for rank, result in enumerate(results)}
    return analytic_gaps(analytic, measured, measured_categories_only=True)


def _pipeline_ids(known: dict[str, str] | None = None) -> list:
    out = []
    for name in PIPELINE:
        reason = (known or {}).get(f"W2-{name}")
        marks = [pytest.mark.xfail(strict=True, reason=reason)] if reason else []
        out.append(pytest.param(name, id=f"W2-{name}", marks=marks))
    return out


@pytest.mark.parametrize("name", _pipeline_ids())
def test_pipeline_stage_states_equal_the_measurement(
    request: pytest.FixtureRequest, name: str
) -> None:
    """Each stage's parameters, gradients, optimizer states and buffers: the stage split
    (token embeddings on the first stage, the final norm and lm_head on the last, the decoder
    layers divided as ``stage_layers`` divides them), and the gradients at the end of the
    forwards (GPipe: none yet; 1F1B with more micro-batches than stages: all)."""
    gaps = [
        g for g in _pipeline(request, name) if g.line != "total" and g.phase in _PP_STATE_PHASES
    ]
    assert not gaps, "\n".join(str(g) for g in gaps)


@pytest.mark.parametrize("name", _pipeline_ids(PIPELINE_PHASES))
def test_pipeline_per_stage_equals_the_measurement(
    request: pytest.FixtureRequest, name: str
) -> None:
    """Every phase total of each stage (the in-flight micro-batches of the schedule, the
    send/recv buffers) against MemTracker on the real run."""
    gaps = [g for g in _pipeline(request, name) if g.line == "total"]
    assert not gaps, "\n".join(str(g) for g in gaps)


@pytest.mark.parametrize("name", _pipeline_ids())
def test_pipeline_stages_are_the_rank_groups(request: pytest.FixtureRequest, name: str) -> None:
    """One rank group per stage in the analytic report, and the two stages measure apart."""
    results = request.getfixturevalue("gloo2")[name]
    case = PIPELINE[name]
    spec = spec_from_config(case.config, name="llama")
    groups = parallel_training_report(spec, case.setup, case.plan).scalars["ranks"]
    assert [list(g["ranks"]) for g in groups] == [[0], [1]]
    assert memtracker_phases(results[0]) != memtracker_phases(results[1])
