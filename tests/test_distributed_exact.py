"""Per-rank model states, buffers and activations under a plan: exact integers from first
principles (shapes, paddings and dtypes of DIST-NOTES.md), no torch needed."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from memplan.catalog import resolve
from memplan.estimate.dist_report import parallel_training_report
from memplan.estimate.dist_states import stage_states, stage_tensors
from memplan.estimate.distributed import rank_groups
from memplan.estimate.training import estimate_training
from memplan.formulas.parallel import in_flight_chunks, pipeline_bubble_fraction
from memplan.formulas.training import param_tensors
from memplan.specs.hf import spec_from_config
from memplan.specs.parallel import DeepSpeedConfig, ParallelPlan, Schedule, Sharding
from memplan.specs.training import Optimizer, Precision, Target, TrainingSetup
from memplan.units import GB

TINY = json.loads((Path(__file__).parent / "data" / "trace_tiny_configs.json").read_text())
CPU = TrainingSetup(batch=2, seq=32, precision=Precision.FP32, target=Target.CPU)


def _tiny(family: str = "llama", **changes: object):
    config = dict(TINY[family])
    config.update(changes)
    return spec_from_config(config, name=family)


def _plan(world: int, **kw: object) -> ParallelPlan:
    return ParallelPlan(gpus_per_node=world, **kw)  # type: ignore[arg-type]


def test_one_gpu_plan_is_the_single_gpu_step() -> None:
    """One replica runs no DDP (torchtitan and Megatron wrap data parallelism only over a
    group of more than one rank): no buckets, the single-GPU step to the byte."""
    spec = _tiny()
    single = estimate_training(spec, CPU)
    report = parallel_training_report(spec, CPU, ParallelPlan())
    group = report.scalars["ranks"][0]
    for mine, theirs in zip(group["phases"], single.phases, strict=True):
        parts = dict(mine["breakdown"])
        assert parts.pop("communication", 0) == 0
        assert {k: v for k, v in parts.items() if v} == {
            k: v for k, v in theirs.breakdown.items() if v
        }


def test_two_gpu_ddp_adds_its_buckets() -> None:
    spec = _tiny()
    states = stage_states(spec, CPU, _plan(2), 0, 0)
    # DDP's buckets: every gradient once (fp32 on the CPU target)
    assert states.persistent_comm == {"ddp_gradient_buckets": sum(
        t.numel * 4 for t in param_tensors(spec))}  # fmt: skip


def test_gradient_as_bucket_view_drops_the_separate_gradients() -> None:
    spec = _tiny()
    plain = stage_states(spec, CPU, _plan(2), 0, 0)
    view = stage_states(spec, CPU, _plan(2, gradient_as_bucket_view=True), 0, 0)
    assert sum(view.grads.values()) == 0
    assert view.persistent_comm == plain.persistent_comm == {"ddp_gradient_buckets": 4 * sum(
        t.numel for t in param_tensors(spec))}  # fmt: skip


@pytest.mark.parametrize("world", [2, 3, 4])
def test_fsdp_pads_every_rank_and_states_follow_the_view(world: int) -> None:
    """FSDP2: storage ceil(d0/W)*rest on every rank; AdamW states from the unpadded view, plus
    a 4-byte step per tensor on CPU (DIST-NOTES.md, held to the byte at W = 3 there)."""
    spec = _tiny()
    plan = _plan(world, sharding=Sharding.FSDP_FULL)
    tensors = param_tensors(spec)
    padded = sum(-(-t.shape[0] // world) * (t.numel // t.shape[0]) for t in tensors)
    for rank in range(world):
        st = stage_states(spec, CPU, plan, 0, rank)
        assert sum(st.params.values()) == 4 * padded
        assert sum(st.grads.values()) == 4 * padded
        view = 0
        for t in tensors:
            chunk = -(-t.shape[0] // world)
            rows = min(max(t.shape[0] - rank * chunk, 0), chunk)
            view += rows * (t.numel // t.shape[0])
        assert sum(st.states.values()) == 2 * 4 * view + 4 * len(tensors)


def test_fsdp_uneven_dims_make_distinct_rank_groups() -> None:
    spec = _tiny(vocab_size=250)  # 250 rows over 4 ranks: 63, 63, 63, 61
    groups = rank_groups(spec, CPU, _plan(4, sharding=Sharding.FSDP_FULL))
    assert [g.ranks for g in groups] == [(0, 1, 2), (3,)]
    assert groups[0].peak_bytes > groups[1].peak_bytes


def test_fsdp_bytes_per_parameter_by_precision() -> None:
    """bf16: parameters, gradients and AdamW states all bf16 (8 B per parameter over W);
    bf16-mixed: fp32 shards under MixedPrecisionPolicy (16 B over W)."""
    spec = _tiny()
    n = sum(t.numel for t in param_tensors(spec))  # every dim 0 here is divisible by 2
    for precision, per_param in ((Precision.BF16, 8), (Precision.BF16_MIXED, 16)):
        setup = dataclasses.replace(CPU, precision=precision, optimizer=Optimizer.ADAMW_FUSED)
        st = stage_states(spec, setup, _plan(2, sharding=Sharding.FSDP_FULL), 0, 0)
        steps = 4 * len(param_tensors(spec))  # fused AdamW: a 4-byte device step per tensor
        total = sum(st.params.values()) + sum(st.grads.values()) + sum(st.states.values())
        assert total - steps == per_param * n // 2


@pytest.mark.parametrize(("precision", "width"), [(Precision.BF16, 2), (Precision.FP32, 4)])
def test_deepspeed_ipg_bucket_is_reduce_bucket_size_elements(
    precision: Precision, width: int
) -> None:
    setup = dataclasses.replace(CPU, precision=precision)
    for stage in (1, 2, 3):
        st = stage_states(_tiny(), setup, _plan(2, sharding=Sharding(f"zero{stage}")), 0, 0)
        assert st.persistent_comm["ipg_bucket"] == 500_000_000 * width  # 1 GB bf16, 2 GB fp32
    small = _plan(2, sharding=Sharding.ZERO_2, deepspeed=DeepSpeedConfig(reduce_bucket_size=1000))
    assert stage_states(_tiny(), setup, small, 0, 0).persistent_comm["ipg_bucket"] == 1000 * width


def test_deepspeed_partitions() -> None:
    """ZeRO-1/2: a flat bf16 group padded to 2W elements, fp32 master and Adam states over W;
    ZeRO-3: ceil(numel/W) per tensor."""
    spec = _tiny()
    setup = dataclasses.replace(CPU, precision=Precision.BF16)
    n = sum(t.numel for t in param_tensors(spec))
    w = 3
    flat = -(-n // (2 * w)) * 2 * w
    z1 = stage_states(spec, setup, _plan(w, sharding=Sharding.ZERO_1), 0, 0)
    assert z1.params == {"flat_half": 2 * flat}
    assert z1.states == {"master_weights_fp32": 4 * flat // w, "optimizer_states": 8 * flat // w}
    assert sum(z1.grads.values()) == 2 * n
    z2 = stage_states(spec, setup, _plan(w, sharding=Sharding.ZERO_2), 0, 0)
    assert z2.grads == {"partition": 2 * flat // w}
    z3 = stage_states(spec, setup, _plan(w, sharding=Sharding.ZERO_3), 0, 0)
    part = sum(-(-t.numel // w) for t in param_tensors(spec))
    assert z3.params == {"partition": 2 * part}
    assert z3.states["optimizer_states"] == 8 * part


def test_tensor_parallel_shards_layers_and_vocabulary_and_replicates_the_norms() -> None:
    spec = resolve("llama-2-7b")
    tp = 8
    tensors = stage_tensors(spec, CPU, ParallelPlan(gpus_per_node=8, tp_degree=tp), 0)
    total = sum(t.numel for t in tensors)
    h, i, v, n_layers = 4096, 11008, 32000, 32
    per_layer = (4 * h * h + 3 * h * i) // tp + 2 * h  # q, k, v, o, gate, up, down; 2 norms
    # embeddings and lm_head by vocabulary rows (4,000 each), the final norm whole
    assert total == n_layers * per_layer + 2 * (v // tp) * h + h


def test_a_vocabulary_tp_does_not_divide_is_counted_at_its_largest_rank() -> None:
    """DTensor's Shard(0) splits as torch.chunk: 250 rows over 4 ranks are 63, 63, 63, 61."""
    spec = _tiny(vocab_size=250)
    tensors = stage_tensors(spec, CPU, ParallelPlan(gpus_per_node=4, tp_degree=4), 0)
    rows = {t.name: t.d0 for t in tensors if t.name in ("embed_tokens.weight", "lm_head.weight")}
    assert rows == {"embed_tokens.weight": 63, "lm_head.weight": 63}


def test_kv_heads_replicate_beyond_their_count() -> None:
    spec = resolve("meta-llama/Llama-3.1-70B")  # 8 KV heads, head_dim 128
    tensors = stage_tensors(spec, CPU, ParallelPlan(nodes=2, gpus_per_node=8, tp_degree=16), 0)
    k = next(t for t in tensors if t.name == "layers.0.self_attn.k_proj.weight")
    assert k.numel == 128 * 8192  # one whole KV head per rank


def test_pipeline_in_flight_micro_batches() -> None:
    # 1F1B: stage i of p holds min(p - i, M); GPipe: all M; bubble (p - 1) / (v M)
    assert [in_flight_chunks(i, 4, 8, 1, False) for i in range(4)] == [4, 3, 2, 1]
    assert [in_flight_chunks(i, 4, 2, 1, False) for i in range(4)] == [2, 2, 2, 1]
    assert in_flight_chunks(0, 4, 8, 1, True) == 8
    assert in_flight_chunks(0, 4, 8, 2, False) == (4 - 0 - 1) * 2 + (2 - 1) * 4 + 1  # warm-up + 1
    assert pipeline_bubble_fraction(4, 8, 1) == 3 / 8
    spec = resolve("llama-2-7b")
    setup = dataclasses.replace(CPU, seq=1024)
    plan = ParallelPlan(gpus_per_node=4, pp_degree=4, micro_batches=8)
    groups = rank_groups(spec, setup, plan)
    acts = [g.phases["end_of_forward"]["activations"] for g in groups]
    assert acts[0] > acts[1] > acts[2]  # the first stage holds the most micro-batches
    gpipe = dataclasses.replace(plan, schedule=Schedule.GPIPE)
    assert (
        rank_groups(spec, setup, gpipe)[1].phases["end_of_forward"]["activations"]
        == acts[1] * 8 // 3
    )


def test_zero_paper_table() -> None:
    """Rajbhandari et al. 2020, figure 1: 7.5B parameters, N_d = 64, K = 12."""
    from memplan.formulas.methods_parallel import zero_paper_bytes

    got = [round(sum(zero_paper_bytes(7.5e9, 64, s).values()) / GB, 1) for s in range(4)]
    assert got == [120.0, 31.4, 16.6, 1.9]


def test_offload_moves_states_to_the_host() -> None:
    from memplan.specs.parallel import Offload

    spec = _tiny()
    fsdp = _plan(2, sharding=Sharding.FSDP_FULL)
    on_gpu = stage_states(spec, CPU, fsdp, 0, 0)
    off = stage_states(spec, CPU, dataclasses.replace(fsdp, offload=Offload.PARAMS), 0, 0)
    assert off.params == off.grads == off.states == {}
    moved = sum(on_gpu.params.values()) + sum(on_gpu.grads.values()) + sum(on_gpu.states.values())
    assert sum(off.offloaded.values()) == moved + on_gpu.step_temporary
    z2 = _plan(2, sharding=Sharding.ZERO_2)
    setup = dataclasses.replace(CPU, precision=Precision.BF16)
    kept = stage_states(spec, setup, z2, 0, 0)
    off = stage_states(spec, setup, dataclasses.replace(z2, offload=Offload.OPTIMIZER), 0, 0)
    assert off.params == kept.params and off.states == {} and off.grads == {}
    assert off.offloaded["optimizer/master_weights_fp32"] == kept.states["master_weights_fp32"]
    report = parallel_training_report(
        spec, setup, dataclasses.replace(z2, offload=Offload.OPTIMIZER)
    )
    assert report.scalars["host_bytes_per_node"] == 2 * sum(off.offloaded.values())


MEASURED = Path(__file__).parent / "data" / "distributed" / "fsdp2_gloo_tiny_llama.json"


def _fsdp2_tiny() -> tuple[dict[str, int], object]:
    measured = json.loads(MEASURED.read_text())["peak"]
    plan = _plan(2, sharding=Sharding.FSDP_FULL)
    return measured, rank_groups(_tiny(), CPU, plan)[0]


def test_fsdp2_gloo_states_to_the_byte() -> None:
    """Measured on gloo (scripts/measure_fsdp2_gloo.py): optimizer states (from the unpadded
    views, with the CPU step counters) and buffers at the peak."""
    measured, group = _fsdp2_tiny()
    at = group.phases[group.peak_phase]  # type: ignore[attr-defined]
    assert measured["OPT"] == at["optimizer_states"]
    assert measured["BUFFER"] == at["buffers"]


@pytest.mark.xfail(strict=True, reason="measured PARAM 566,656 B = shards + root + ONE gathered "
                   "layer; the analytic backward keeps the current and the prefetched layer at "
                   "every high point (+184,832 B, one layer) so that peaks stay monotone")  # fmt: skip
def test_fsdp2_gloo_gathered_parameters_to_the_byte() -> None:
    measured, group = _fsdp2_tiny()
    at = group.phases[group.peak_phase]  # type: ignore[attr-defined]
    assert measured["PARAM"] == at["parameters"] + at["communication"]


@pytest.mark.xfail(strict=True, reason="measured peak 2,132,508 B is 125,952 B (5.9 %) below "
                   "the analytic 2,258,460 B: one gathered layer less at the measured high point "
                   "(-184,832 B), which comes after lm_head's gradient exists (GRAD 110,848 B, "
                   "+58,880 B), the analytic one in the loss backward")  # fmt: skip
def test_fsdp2_gloo_peak_to_the_byte() -> None:
    measured, group = _fsdp2_tiny()
    assert measured["Total"] == group.peak_bytes  # type: ignore[attr-defined]


@pytest.mark.parametrize(("experts", "ep", "gpus", "cp"), [(6, 2, 8, 1), (4, 2, 8, 1),
                                                          (6, 3, 12, 1), (6, 2, 8, 2)])  # fmt: skip
def test_expert_parallel_fsdp_rank_groups_hold_equal_states(
    experts: int, ep: int, gpus: int, cp: int
) -> None:
    """FSDP2 shards experts over torchtitan's dp_shard_mod_ep (shard index dp_rank * cp // ep):
    the ranks grouped together hold the same states, and different groups different ones."""
    from memplan.estimate.distributed import _dp_classes

    spec = _tiny("mixtral", num_local_experts=experts)
    plan = _plan(gpus, ep_degree=ep, cp_degree=cp, sharding=Sharding.FSDP_FULL)
    states = {d: stage_states(spec, CPU, plan, 0, d).states for d in range(plan.dp)}
    groups = _dp_classes(spec, CPU, plan, 0)
    assert sorted(r for g in groups for r in g) == list(range(plan.dp))
    assert all(len({repr(states[r]) for r in g}) == 1 for g in groups)
    assert len({repr(states[g[0]]) for g in groups}) == len(groups)
