"""ParallelPlan: defaults, resolution of dp, and one-line errors naming every factor."""

from __future__ import annotations

import argparse

import pytest

from memplan.catalog import resolve
from memplan.cli.parallel import add_parallel_flags, parse_link_rate, plan_from_args
from memplan.errors import SetupError
from memplan.specs.parallel import (
    DeepSpeedConfig,
    Offload,
    ParallelPlan,
    Schedule,
    Sharding,
    validate_plan,
)


def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--seq", type=int, default=2048)
    add_parallel_flags(parser)
    return parser.parse_args(list(argv))


def test_dp_is_what_remains() -> None:
    plan = ParallelPlan(nodes=2, gpus_per_node=8, tp_degree=4, pp_degree=2)
    assert plan.dp_degree == 2
    assert plan.world_size == 16


def test_given_dp_must_match_every_factor() -> None:
    with pytest.raises(
        SetupError, match=r"dp\(2\) \* tp\(4\) \* pp\(2\) \* cp\(1\) = 16 != gpus\(8\)"
    ):
        ParallelPlan(gpus_per_node=8, dp_degree=2, tp_degree=4, pp_degree=2)


def test_world_not_divisible() -> None:
    with pytest.raises(
        SetupError, match=r"gpus\(8\) is not divisible by tp\(3\) \* pp\(1\) \* cp\(1\) = 3"
    ):
        ParallelPlan(gpus_per_node=8, tp_degree=3)


def test_deepspeed_defaults_are_its_source() -> None:
    # deepspeed/runtime/zero/config.py (0.19.8): pp_int(5e8), pp_int(5e7), pp_int(1e5), pp_int(1e9)
    ds = DeepSpeedConfig()
    assert ds.reduce_bucket_size == 500_000_000
    assert ds.allgather_bucket_size == 500_000_000
    assert ds.stage3_prefetch_bucket_size == 50_000_000
    assert ds.stage3_param_persistence_threshold == 100_000
    assert ds.stage3_max_live_parameters == 1_000_000_000
    assert ds.contiguous_gradients is True
    assert ds.overlap(3) is True and ds.overlap(2) is False


def test_tp_must_divide_heads() -> None:
    spec = resolve("llama-2-7b")  # 32 heads
    plan = ParallelPlan(gpus_per_node=6, tp_degree=6)
    with pytest.raises(SetupError, match=r"tp\(6\) must divide .* attention heads \(32\)"):
        validate_plan(spec, plan, micro_batch=1, seq=2048)


def test_tp_beyond_kv_heads_replicates_them() -> None:
    spec = resolve("meta-llama/Llama-3.1-70B")  # 64 heads, 8 KV heads
    validate_plan(
        spec, ParallelPlan(nodes=2, gpus_per_node=8, tp_degree=16), micro_batch=1, seq=2048
    )
    qwen = resolve("qwen2.5-7b")  # 28 heads, 4 KV heads
    with pytest.raises(SetupError, match=r"tp\(7\) .* KV heads \(4\) or be a multiple"):
        validate_plan(qwen, ParallelPlan(gpus_per_node=7, tp_degree=7), micro_batch=1, seq=2048)


def test_pp_at_most_layers_and_ep_divides_experts() -> None:
    spec = resolve("llama-2-7b")
    with pytest.raises(SetupError, match=r"pp\(64\) exceeds .* 32 layers"):
        validate_plan(
            spec, ParallelPlan(nodes=8, gpus_per_node=8, pp_degree=64), micro_batch=1, seq=2048
        )
    with pytest.raises(SetupError, match="no experts"):
        validate_plan(spec, ParallelPlan(gpus_per_node=2, ep_degree=2), micro_batch=1, seq=2048)
    mixtral = resolve("mixtral-8x7b")
    with pytest.raises(SetupError, match=r"ep\(3\) must divide .* experts \(8\)"):
        validate_plan(mixtral, ParallelPlan(gpus_per_node=3, ep_degree=3), micro_batch=1, seq=2048)


def test_global_batch_divisible() -> None:
    spec = resolve("llama-2-7b")
    plan = ParallelPlan(gpus_per_node=6, global_batch=512)
    with pytest.raises(
        SetupError, match=r"global batch\(512\) .* dp\(6\) \* micro-batch\(2\) = 12"
    ):
        validate_plan(spec, plan, micro_batch=2, seq=2048)
    ok = ParallelPlan(gpus_per_node=8, global_batch=512)
    validate_plan(spec, ok, micro_batch=2, seq=2048)
    assert ok.resolved_micro_batches(2) == 32


def test_plan_only_choices() -> None:
    with pytest.raises(SetupError, match="--sp"):
        ParallelPlan(gpus_per_node=2, sequence_parallel=True)
    with pytest.raises(SetupError, match="ZeRO stage 0 or 1"):
        ParallelPlan(gpus_per_node=4, pp_degree=2, sharding=Sharding.ZERO_3)
    with pytest.raises(SetupError, match="CPUOffloadPolicy"):
        ParallelPlan(gpus_per_node=4, sharding=Sharding.FSDP_FULL, offload=Offload.OPTIMIZER)
    with pytest.raises(SetupError, match="virtual-stages"):
        ParallelPlan(gpus_per_node=4, pp_degree=4, schedule=Schedule.INTERLEAVED)
    with pytest.raises(SetupError, match=r"ep\(4\) must divide dp\(2\)"):
        ParallelPlan(gpus_per_node=4, tp_degree=2, ep_degree=4)


def test_flags_make_the_plan() -> None:
    spec = resolve("llama-2-7b")
    assert plan_from_args(_args(), spec) is None
    plan = plan_from_args(_args("--gpus", "64", "--tp", "8", "--zero", "3"), spec)
    assert plan is not None
    assert (plan.nodes, plan.gpus_per_node, plan.dp_degree) == (8, 8, 8)
    assert plan.sharding is Sharding.ZERO_3
    plan = plan_from_args(_args("--nodes", "2", "--gpus-per-node", "4", "--fsdp", "hybrid"), spec)
    assert plan is not None and plan.hybrid_shard_degree == 4
    with pytest.raises(SetupError, match="multiple of 8"):
        plan_from_args(_args("--gpus", "12"), spec)


def test_link_rates() -> None:
    assert parse_link_rate("400Gb/s") == 50e9
    assert parse_link_rate("50GB/s") == 50e9
    assert parse_link_rate("900e9") == 900e9
    with pytest.raises(SetupError, match="link rate"):
        parse_link_rate("fast")
