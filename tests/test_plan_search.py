"""``memplan plan`` (issue 10): the array evaluation of a plan grid equals the per-plan engine.

The grid (``estimate.plan_grid``) evaluates the same functions as ``memplan train`` /
``memplan time`` on NumPy arrays; these tests draw plans at random from the grids of several
models and clusters and compare every plan's worst-rank peak (bytes, exactly) and step time
(seconds, to the last bit of the float) with the scalar engine; a few go through the CLI.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import random
from typing import Any

import numpy as np
import pytest

from memplan.catalog import resolve
from memplan.catalog.gpus import resolve_gpu
from memplan.cli.main import main
from memplan.estimate.dist_time import step_time
from memplan.estimate.distributed import local_step, rank_groups
from memplan.estimate.plan_grid import (
    CHECKPOINTINGS,
    GridResult,
    PlanBatch,
    PlanRow,
    evaluate_grid,
    new_tables,
)
from memplan.estimate.plan_layout import SLOT_CELLS
from memplan.estimate.plan_layout import layout as lay_out
from memplan.estimate.plan_search import SearchSpace, enumerate_plans, plan_args
from memplan.specs.training import Attention, TrainingSetup

# (model, layers kept (None: all), nodes, GPUs a node, seq, global batch, plans drawn)
CASES = (
    ("Qwen/Qwen2.5-0.5B", None, 2, 8, 1024, 64, 2000),
    ("openai-community/gpt2", None, 1, 8, 512, 32, 3000),
    ("google/gemma-2-2b", None, 2, 4, 2048, 32, 1500),
    ("mistralai/Mixtral-8x7B-v0.1", 4, 1, 8, 1024, 32, 2000),
    ("deepseek-ai/DeepSeek-V2-Lite", 3, 1, 8, 512, 16, 1500),
)
"""Over 10,000 plans: dense (GQA, tied head, LayerNorm with dropout, sliding windows) and MoE
models (Mixtral: every layer MoE; DeepSeek-V2-Lite: a dense first layer, so pipeline stages
differ in kind), size-reduced in layers where the experts make the tables heavy."""


def _spec(name: str, layers: int | None) -> Any:
    spec = resolve(name)
    return spec if layers is None else dataclasses.replace(spec, n_layers=layers)


@functools.lru_cache(maxsize=len(CASES))
def _draw(case: Any) -> tuple[Any, TrainingSetup, list[PlanRow]]:
    """The plans drawn for ``case`` (cached: three tests draw from the first case)."""
    name, layers, nodes, per_node, seq, batch, n = case
    # gemma-2 soft-caps its attention logits: only eager attention computes that (and context
    # parallelism, which needs a fused kernel, is then removed by its rule)
    attention = Attention.EAGER if "gemma-2" in str(name) else Attention.SDPA
    spec = _spec(str(name), layers)
    setup = TrainingSetup(batch=1, seq=int(seq), attention=attention)
    space = SearchSpace(nodes=int(nodes), gpus_per_node=int(per_node), global_batch=int(batch),
                        max_tp=8)  # fmt: skip
    rows, removed, total = enumerate_plans(spec, setup, space)
    assert total == len(rows) + sum(removed.values())
    rng = random.Random(f"{name}-{nodes}x{per_node}")
    # whole structures (every micro-batch and checkpointing of a layout), drawn at random:
    # the scalar engine's per-layout caches then keep the test within its time budget
    by_plan: dict[int, list[PlanRow]] = {}
    for r in rows:
        by_plan.setdefault(id(r.plan), []).append(r)
    layouts = list(by_plan.values())
    rng.shuffle(layouts)
    drawn: list[PlanRow] = []
    for layout in layouts:
        if len(drawn) >= int(n):
            break
        drawn.extend(layout)
    return spec, setup, drawn


@pytest.mark.parametrize("case", CASES, ids=[c[0].split("/")[1] for c in CASES])
def test_grid_equals_engine(case: Any) -> None:
    spec, setup, rows = _draw(case)
    gpu = resolve_gpu("H100")
    grid = evaluate_grid(spec, setup, gpu, rows)
    assert len(rows) >= min(int(case[-1]), 500)
    mismatches = []
    for i, r in enumerate(rows):
        s = dataclasses.replace(setup, batch=r.micro_batch, checkpointing=r.checkpointing)
        groups = rank_groups(spec, s, r.plan)
        worst = max(groups, key=lambda g: g.peak_bytes)
        t = step_time(spec, s, r.plan, local_step(spec, s, r.plan), gpu)
        got = (int(grid.peak_bytes[i]), float(grid.step_s[i]), float(grid.mfu[i]))
        if got != (worst.peak_bytes, t.step_s, t.mfu) or grid.worst_stage[i] != worst.stage:
            mismatches.append((r, got, (worst.peak_bytes, t.step_s, t.mfu)))
    assert not mismatches, f"{len(mismatches)} of {len(rows)} differ, first: {mismatches[0]}"


def _fields(grid: GridResult) -> dict[str, Any]:
    out = {f.name: getattr(grid, f.name) for f in dataclasses.fields(grid) if f.name != "comm_s"}
    return out | {f"comm_s/{k}": v for k, v in grid.comm_s.items()}


def test_layout_does_not_change_a_number() -> None:
    """How the grid lays plans out (slots of one structure, single-stage slots first, spare
    cells, chunks sharing one set of tables) changes no number: the first case's plans
    shuffled (a slot per plan, pipelined and single-stage ones interleaved) and evaluated in
    chunks, one plan repeated past a slot's width, and one layout's plans repeated past it,
    give the arrays of one call in enumeration order, to the bit (that call is compared with
    the scalar engine above)."""
    spec, setup, rows = _draw(CASES[0])
    gpu = resolve_gpu("H100")
    whole = _fields(evaluate_grid(spec, setup, gpu, rows))
    order = list(range(len(rows)))
    random.Random(0).shuffle(order)
    tables = new_tables(spec, setup, gpu)
    parts = [_fields(evaluate_grid(spec, setup, gpu, [rows[i] for i in order[j : j + 300]],
                                   tables=tables)) for j in range(0, len(order), 300)]  # fmt: skip
    for name, value in whole.items():
        shuffled = [x for part in parts for x in part[name].tolist()]
        assert shuffled == value[order].tolist(), name
    n = 2 * SLOT_CELLS + 3
    repeated = _fields(evaluate_grid(spec, setup, gpu, [rows[7]] * n + rows[:40]))
    for name, value in whole.items():
        assert repeated[name].tolist() == [value[7]] * n + value[:40].tolist(), name
    # one layout's plans (every checkpointing of each micro-batch, in order) over and over:
    # one run of a structure past a slot's width, laid out by micro-batch and checkpointing
    first = [i for i, r in enumerate(rows) if r.plan is rows[0].plan]
    times = SLOT_CELLS // len(first) + 2
    run = PlanBatch.of([rows[i] for i in first] * times)
    laid = lay_out(new_tables(spec, setup, gpu), run, np)
    assert len(laid.structure) == 2 and laid.recompute.shape[2] == len(CHECKPOINTINGS)
    again = _fields(evaluate_grid(spec, setup, gpu, run))
    for name, value in whole.items():
        assert again[name].tolist() == value[first].tolist() * times, name


def test_drawn_plans_cover_the_space() -> None:
    """The draws reach every runtime, schedule and checkpointing (not one corner of the grid)."""
    _, _, rows = _draw(CASES[0])
    seen = {(r.plan.sharding, r.plan.schedule, r.checkpointing, r.plan.offload) for r in rows}
    assert len({s[0] for s in seen}) == 7
    assert len({s[1] for s in seen}) == 3
    assert len({s[2] for s in seen}) == 3
    assert len({s[3] for s in seen}) == 3


def _cli_json(argv: list[str], capsys: pytest.CaptureFixture[str]) -> Any:
    assert main(argv) == 0
    return json.loads(capsys.readouterr().out)


def test_cli_rows_reproduce(capsys: pytest.CaptureFixture[str]) -> None:
    """Drawn plans' flags (``plan_args``) through ``memplan train`` / ``memplan time``."""
    spec, setup, rows = _draw(CASES[0])
    gpu = resolve_gpu("H100")
    picked = rows[:12]
    grid = evaluate_grid(spec, setup, gpu, picked)
    for i, r in enumerate(picked):
        a = plan_args("Qwen/Qwen2.5-0.5B", setup, r, "H100")
        train = _cli_json(["train", *a["train"], "--json"], capsys)
        assert train["peak_bytes"] == int(grid.peak_bytes[i])
        assert train["step_seconds"] == float(grid.step_s[i])
        assert train["mfu"] == float(grid.mfu[i])
        time_ = _cli_json(["time", *a["time"], "--steps", "1", "--json"], capsys)
        assert time_["step_seconds"] == float(grid.step_s[i])
