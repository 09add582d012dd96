"""Invariants of the per-rank engine over random models and plans (Hypothesis; 10,000+ cases).

- more data-parallel shards never raise a rank's sharded parameters, gradients or states;
- the worst rank's peak is monotone in the micro-batch and in the sequence length;
- every total is the sum of its parts (phases, the peak tree, the report's tree);
- the JSON round-trips;
- the arithmetic of ``formulas.parallel`` / ``formulas.communication`` gives on NumPy arrays
  what it gives on ints (the contract issue 10's search relies on).
"""

from __future__ import annotations

import json

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from memplan.estimate.dist_report import parallel_training_report
from memplan.estimate.dist_states import stage_states
from memplan.estimate.distributed import rank_groups
from memplan.formulas import communication as comm
from memplan.formulas import parallel as par
from memplan.specs.hf import spec_from_config
from memplan.specs.parallel import ParallelPlan, Schedule, Sharding
from memplan.specs.training import (
    Attention,
    Checkpointing,
    Optimizer,
    Precision,
    Target,
    TrainingSetup,
)


def _settings(examples: int) -> settings:
    return settings(
        max_examples=examples,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


def _pool() -> list[object]:
    """Random-shaped small models, built once (their plans are cached across examples)."""
    rng = np.random.default_rng(9)
    out = []
    for i in range(32):
        kv = int(rng.choice([1, 2, 4]))
        heads = kv * int(rng.choice([1, 2]))
        head_dim = int(rng.choice([4, 8]))
        config = {
            "model_type": ["llama", "qwen2", "mistral"][i % 3],
            "hidden_size": heads * head_dim * int(rng.choice([1, 2])),
            "head_dim": head_dim,
            "intermediate_size": 4 * int(rng.integers(2, 13)),
            "num_hidden_layers": int(rng.integers(1, 5)),
            "num_attention_heads": heads,
            "num_key_value_heads": kv,
            "vocab_size": int(rng.integers(17, 301)),
            "max_position_embeddings": 4096,
            "tie_word_embeddings": bool(i % 2),
        }
        out.append(spec_from_config(config, name=f"random-{i}"))
    return out


POOL = _pool()


def models() -> st.SearchStrategy[object]:
    return st.sampled_from(POOL)


@st.composite
def setups(draw: st.DrawFn) -> TrainingSetup:
    return TrainingSetup(
        batch=draw(st.integers(1, 3)),
        seq=8 * draw(st.integers(1, 8)),
        precision=draw(st.sampled_from([Precision.FP32, Precision.BF16, Precision.BF16_MIXED])),
        optimizer=draw(st.sampled_from([Optimizer.ADAMW, Optimizer.SGD_MOMENTUM])),
        checkpointing=draw(st.sampled_from(list(Checkpointing))),
        target=draw(st.sampled_from(list(Target))),
        attention=draw(st.sampled_from([Attention.SDPA, Attention.EAGER])),
    )


def _plans(spec: object, draw: st.DrawFn) -> ParallelPlan:
    heads = spec.n_heads  # type: ignore[attr-defined]
    tp = draw(st.sampled_from([t for t in (1, 2, 4) if heads % t == 0]))
    pp = draw(st.integers(1, min(2, spec.n_layers)))  # type: ignore[attr-defined]
    dp = draw(st.integers(1, 3))
    sharding = draw(st.sampled_from(list(Sharding)))
    if pp > 1 and sharding.zero_stage >= 2:
        sharding = Sharding.ZERO_1
    return ParallelPlan(
        gpus_per_node=dp * tp * pp,
        tp_degree=tp,
        pp_degree=pp,
        sharding=sharding,
        sequence_parallel=tp > 1 and draw(st.booleans()),
        micro_batches=draw(st.integers(1, 4)),
        schedule=draw(st.sampled_from([Schedule.ONE_F_ONE_B, Schedule.GPIPE])),
    )


@st.composite
def cases(draw: st.DrawFn) -> tuple[object, TrainingSetup, ParallelPlan]:
    spec = draw(models())
    setup = draw(setups())
    plan = _plans(spec, draw)
    return spec, setup, plan


def _worst(spec: object, setup: TrainingSetup, plan: ParallelPlan) -> int:
    return max(g.peak_bytes for g in rank_groups(spec, setup, plan))  # type: ignore[arg-type]


@_settings(3000)
@given(models(), setups(), st.sampled_from([s for s in Sharding if s.value not in ("ddp", "zero0", "fsdp-no-shard")]),
       st.integers(1, 5))  # fmt: skip
def test_more_shards_never_raise_sharded_states(
    spec: object, setup: TrainingSetup, sharding: Sharding, dp: int
) -> None:
    def states(world: int) -> tuple[int, int, int]:
        plan = ParallelPlan(gpus_per_node=world, sharding=sharding, hsdp_shard_degree=None)
        # data-parallel rank 0 holds full chunks of every tensor: the largest states
        worst = [stage_states(spec, setup, plan, 0, 0)]  # type: ignore[arg-type]
        params = max(sum(s.params.values()) for s in worst)
        grads = max(sum(s.grads.values()) for s in worst)
        opt = max(sum(s.states.values()) for s in worst)
        return params, grads, opt

    few, many = states(dp), states(dp + 1)
    replicated_params = sharding in (Sharding.ZERO_1, Sharding.ZERO_2, Sharding.FSDP_SHARD_GRAD_OP)
    if not replicated_params or sharding is Sharding.FSDP_SHARD_GRAD_OP:
        assert many[0] <= few[0]  # ZeRO-1/2 keep the whole flat group (its padding grows)
    if sharding is not Sharding.ZERO_1:
        assert many[1] <= few[1]
    assert many[2] <= few[2]


@_settings(1500)
@given(cases())
def test_peaks_monotone_in_micro_batch_and_sequence(
    case: tuple[object, TrainingSetup, ParallelPlan],
) -> None:
    spec, setup, plan = case
    base = _worst(spec, setup, plan)
    bigger_batch = TrainingSetup(**{**_fields(setup), "batch": setup.batch + 1})
    assert _worst(spec, bigger_batch, plan) >= base
    step = 8 * plan.tp_degree
    longer = TrainingSetup(**{**_fields(setup), "seq": setup.seq + step})
    assert _worst(spec, longer, plan) >= base


def _fields(setup: TrainingSetup) -> dict[str, object]:
    return {name: getattr(setup, name) for name in TrainingSetup.__dataclass_fields__}


def _check_tree(node: dict[str, object]) -> None:
    children = node.get("children")
    if children:
        assert node["total"] == sum(c["total"] for c in children)  # type: ignore[index, union-attr]
        for child in children:  # type: ignore[union-attr]
            _check_tree(child)


@_settings(1500)
@given(cases())
def test_every_total_is_the_sum_of_its_parts_and_json_round_trips(
    case: tuple[object, TrainingSetup, ParallelPlan],
) -> None:
    spec, setup, plan = case
    if plan.sequence_parallel and setup.seq % plan.tp_degree:
        return
    report = parallel_training_report(spec, setup, plan)  # type: ignore[arg-type]
    data = report.to_dict()
    assert json.loads(json.dumps(data)) == data
    _check_tree(data["breakdown"])
    assert data["peak_bytes"] == max(g["peak_bytes"] for g in data["ranks"])
    covered = sorted(r for g in data["ranks"] for r in g["ranks"])
    assert covered == list(range(plan.world_size))
    for group in data["ranks"]:
        _check_tree(group["breakdown"])
        assert group["breakdown"]["total"] == group["peak_bytes"]
        for phase in group["phases"]:
            assert phase["bytes"] == sum(phase["breakdown"].values())
            assert group["peak_bytes"] >= phase["bytes"]


@_settings(4000)
@given(st.integers(0, 2**32 - 1))
def test_formulas_run_on_arrays_as_on_ints(seed: int) -> None:
    rng = np.random.default_rng(seed)
    highs = (10**6, 4096, 512, 512, 64, 64, 2)
    lows = (1, 1, 1, 0, 1, 1, 0)
    rows = [tuple(int(rng.integers(lo, hi + 1)) for lo, hi in zip(lows, highs, strict=True))
            for _ in range(4)]  # fmt: skip
    d0, rest, world, rank, pp, m, flag = (np.array(col) for col in zip(*rows, strict=True))
    stage = rank % pp
    vectors = {
        "padded": par.fsdp_padded_shard_numel(d0, rest, world),
        "view": par.fsdp_local_view_numel(d0, rest, world, rank % world),
        "flat": par.deepspeed_flat_padded_numel(d0 * rest, world),
        "zero3": par.zero3_partition_numel(d0 * rest, world),
        "round": par.round_up(d0, 512),
        "flight": par.in_flight_chunks(stage, pp, m, 1 + flag, flag),
        "layers": par.layers_in_stage(d0, pp, stage),
        "ar": comm.all_reduce_wire_bytes(d0 * 1.0, world),
        "inter": comm.crosses_nodes(world, rest, 8),
    }
    for i, (a, b, w, r, p, mm, f) in enumerate(rows):
        s = r % p
        scalars = {
            "padded": par.fsdp_padded_shard_numel(a, b, w),
            "view": par.fsdp_local_view_numel(a, b, w, r % w),
            "flat": par.deepspeed_flat_padded_numel(a * b, w),
            "zero3": par.zero3_partition_numel(a * b, w),
            "round": par.round_up(a, 512),
            "flight": par.in_flight_chunks(s, p, mm, 1 + f, f),
            "layers": par.layers_in_stage(a, p, s),
            "ar": comm.all_reduce_wire_bytes(a * 1.0, w),
            "inter": comm.crosses_nodes(w, b, 8),
        }
        for name, value in scalars.items():
            assert vectors[name][i] == value, name
