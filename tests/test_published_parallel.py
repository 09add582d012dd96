"""Published figures for many GPUs: the ZeRO paper's table, Korthikanti et al.'s activations with
tensor and sequence parallelism, and DeepSpeed's own estimators, each beside memplan's exact
per-rank figure with the difference accounted for (docs/accuracy.md has the tables)."""

from __future__ import annotations

import contextlib
import importlib.util
import io
import re
from pathlib import Path

import pytest

from memplan.catalog import resolve
from memplan.cli.main import main
from memplan.estimate.dist_states import stage_states
from memplan.formulas.methods_parallel import (
    deepspeed_zero2_gpu_bytes,
    deepspeed_zero3_gpu_bytes,
    korthikanti_sp_bytes_per_layer,
    korthikanti_tp_bytes_per_layer,
    largest_layer_params,
    zero_paper_bytes,
)
from memplan.formulas.methods_training import korthikanti_activation_bytes_per_layer
from memplan.formulas.params import total_params
from memplan.formulas.training import param_tensors
from memplan.specs.parallel import ParallelPlan, Sharding
from memplan.specs.training import Attention, Precision, Target, TrainingSetup
from memplan.units import GB, GIB

RECORDED = Path(__file__).parent / "data" / "deepspeed" / "estimators.txt"


def test_zero_paper_table_through_the_cli(capsys: pytest.CaptureFixture[str]) -> None:
    """Rajbhandari et al. 2020, figure 1: 7.5B, N_d = 64, K = 12: 120 / 31.4 / 16.6 / 1.9 GB."""
    got = [round(sum(zero_paper_bytes(7.5e9, 64, s).values()) / GB, 1) for s in range(4)]
    assert got == [120.0, 31.4, 16.6, 1.9]
    assert main(["train", "llama-2-7b", "--gpus", "64", "--zero", "2", "--method", "zero-paper",
                 "--decimal"]) == 0  # fmt: skip
    out = capsys.readouterr().out
    psi = total_params(resolve("llama-2-7b"))
    assert f"{(2 * psi + 14 * psi / 64) / GB:,.2f} GB" in out


@pytest.mark.parametrize("stage", [1, 2, 3])
def test_exact_deepspeed_model_states_are_the_paper_formula_plus_padding(stage: int) -> None:
    """memplan's exact ZeRO model states for Llama-2-7B on 64 ranks (deepspeed-bf16, CPU target:
    no allocator rounding) equal the paper's with the real Psi, up to DeepSpeed's padding: the
    flat group to a multiple of 2 N (stages 1-2), each tensor to a multiple of N (stage 3)."""
    spec = resolve("llama-2-7b")
    setup = TrainingSetup(precision=Precision.DEEPSPEED_BF16, target=Target.CPU)
    plan = ParallelPlan(nodes=8, gpus_per_node=8, sharding=Sharding(f"zero{stage}"))
    st = stage_states(spec, setup, plan, 0, 0)
    exact = sum(st.params.values()) + sum(st.grads.values()) + sum(st.states.values())
    psi = total_params(spec)
    paper = sum(zero_paper_bytes(psi, 64, stage).values())
    padding = 16 * 2 * 64 if stage < 3 else 16 * len(param_tensors(spec))
    assert 0 <= exact - paper < padding
    assert st.persistent_comm["ipg_bucket"] == 10**9  # reduce_bucket_size 5e8 in bf16


def test_korthikanti_tp_formulas_reduce_to_eq1_at_t1() -> None:
    s, b, h, a = 2048, 1, 12288, 96  # GPT-3 175B (the paper's table 3 row)
    eq1 = korthikanti_activation_bytes_per_layer(s, b, h, a)
    assert korthikanti_tp_bytes_per_layer(s, b, h, a, 1) == eq1
    assert korthikanti_sp_bytes_per_layer(s, b, h, a, 1) == eq1
    # table 2: sequence parallelism divides the 10 sbh the TP formula leaves replicated
    tp, sp = (
        korthikanti_tp_bytes_per_layer(s, b, h, a, 8),
        korthikanti_sp_bytes_per_layer(s, b, h, a, 8),
    )
    assert tp - sp == pytest.approx(s * b * h * 10 * (1 - 1 / 8))


def test_korthikanti_beside_exact_per_layer() -> None:
    """Llama-2-7B, tp 8, seq 2048, eager attention and 16-bit activations: the exact
    per-layer activations sit within the gap the formula's GPT-3 assumptions leave (SwiGLU MLP
    width 11008 not 4h; no attention dropout; fp32 softmax, fp32 norm inputs)."""
    from memplan.estimate.distributed import local_step

    spec = resolve("llama-2-7b")
    s, h, t = 2048, spec.hidden_size, 8
    setup = TrainingSetup(
        batch=1, seq=s, precision=Precision.BF16, attention=Attention.EAGER, target=Target.CPU
    )
    exact = {}
    for sp in (False, True):
        plan = ParallelPlan(gpus_per_node=8, tp_degree=t, sequence_parallel=sp)
        exact[sp] = local_step(spec, setup, plan).layer_acts // spec.n_layers
        fn = korthikanti_sp_bytes_per_layer if sp else korthikanti_tp_bytes_per_layer
        formula = fn(s, 1, h, spec.n_heads, t)
        assert 0.5 < exact[sp] / formula < 2.0
    # what SP divides by t in a Llama layer: both RMSNorms' fp32 input, fp32 rsqrt, bf16 normed
    per_token = 2 * (4 * h + 4 + 2 * h)
    assert exact[False] - exact[True] == s * per_token - s // t * per_token


def _recorded_gpu_figures() -> dict[tuple[str, int, int], tuple[str, str]]:
    """(model, nodes, gpus per node) -> (ZeRO-2 no offload, ZeRO-3 no offload, zero_init=1)."""
    out = {}
    for block in RECORDED.read_text().split("## ")[1:]:
        head = block.splitlines()[0]
        name = head.split()[0]
        nodes = int(re.search(r"nodes=(\d+)", head).group(1))  # type: ignore[union-attr]
        per_node = int(re.search(r"gpus_per_node=(\d+)", head).group(1))  # type: ignore[union-attr]
        z2 = re.search(r"\|\s+([\d.]+)GB \| offload_optimizer=none", block)
        z3 = re.search(
            r"\|\s+([\d.]+)GB \| offload_param=none, offload_optimizer=none, zero_init=1", block
        )
        out[(name, nodes, per_node)] = (z2.group(1), z3.group(1))  # type: ignore[union-attr]
    return out


def test_deepspeed_estimators_match_their_recorded_output() -> None:
    """DeepSpeed 0.19.8's printed "GB" are GiB: memplan's ``deepspeed`` method divided by 2**30
    prints the same digits."""
    recorded = _recorded_gpu_figures()
    assert len(recorded) == 3
    for (name, nodes, per_node), (z2, z3) in recorded.items():
        spec = resolve(name)
        psi, n = total_params(spec), nodes * per_node
        assert f"{deepspeed_zero2_gpu_bytes(psi, n) / GIB:.2f}" == z2
        assert f"{deepspeed_zero3_gpu_bytes(psi, largest_layer_params(spec), n) / GIB:.2f}" == z3


@pytest.mark.skipif(importlib.util.find_spec("deepspeed") is None, reason="DeepSpeed not installed")
def test_recorded_output_is_what_deepspeed_prints() -> None:
    spec_ = importlib.util.spec_from_file_location(
        "record", Path(__file__).parent.parent / "scripts" / "record_deepspeed_estimators.py"
    )
    assert spec_ is not None and spec_.loader is not None
    module = importlib.util.module_from_spec(spec_)
    spec_.loader.exec_module(module)
    spec = resolve("llama-2-7b")
    with contextlib.redirect_stderr(io.StringIO()):
        text = module.run_estimators(total_params(spec), largest_layer_params(spec), 8, 8)
    assert text.strip() in RECORDED.read_text()


@pytest.mark.parametrize(("stage", "psis"), [(1, 2), (2, 2), (3, 3)])
def test_seed002_communication_beside_the_exact_bytes(
    capsys: pytest.CaptureFixture[str], stage: int, psis: int
) -> None:
    """Seed 002: 2 Psi per step for ZeRO-1/2, 3 Psi for ZeRO-3 (elements). The exact collectives
    move the same volume: padded half buffers, (n - 1)/n of each on the wire (ring)."""
    from cli_helpers import cli_json
    from memplan.formulas.methods_parallel import zero_paper_communication_elements

    spec = resolve("llama-2-7b")
    psi = total_params(spec)
    assert zero_paper_communication_elements(psi, stage) == psis * psi
    argv = ["train", "llama-2-7b", "--gpus", "64", "--zero", str(stage), "--json"]
    method = cli_json(capsys, [*argv, "--method", "zero-paper"])
    assert method["communication_elements_per_step"] == psis * psi
    exact = cli_json(capsys, argv)
    dp = [c for c in exact["communication"] if c["parallelism"] == "dp"]
    flat = -(-psi // 128) * 128  # padded to a multiple of 2 N
    sent = sum(c["bytes"] * c["calls_per_step"] for c in dp)
    assert sent == psis * 2 * flat  # bf16 buffers, one micro-batch per step
    wire = sum(c["wire_bytes_per_step"] for c in dp)
    assert wire == pytest.approx(sent * 63 / 64)


def _qwen25_05b_fsdp_rows(world: int) -> int:
    """Qwen2.5-0.5B's parameters as FSDP2 pads them on ``world`` ranks: each tensor's dim 0
    rounded up to a multiple of ``world`` (config.json: h 896, I 4864, 24 layers, 14 heads of
    64, 2 KV heads, vocabulary 151,936, tied embeddings, q/k/v biases)."""
    h, inter, kv, vocab = 896, 4864, 2 * 64, 151936

    def padded(d0: int, rest: int = 1) -> int:
        return -(-d0 // world) * world * rest

    layer = (
        padded(h, h) + padded(h)  # q_proj
        + 2 * (padded(kv, h) + padded(kv))  # k_proj, v_proj
        + padded(h, h)  # o_proj
        + 2 * padded(inter, h) + padded(h, inter)  # gate, up, down
        + 2 * padded(h)  # the two RMSNorms
    )  # fmt: skip
    return 24 * layer + padded(vocab, h) + padded(h)


@pytest.mark.parametrize("gpus", [8, 3])
def test_fsdp2_collectives_move_param_dtype_and_reduce_dtype_bytes(
    capsys: pytest.CaptureFixture[str], gpus: int
) -> None:
    """FSDP2 under bf16-mixed (MixedPrecisionPolicy(param_dtype=bf16, reduce_dtype=fp32)): the
    shards stay fp32, but the all-gathers move bf16 (twice per micro-batch: forward and
    backward) and the reduce-scatter fp32 gradients, each tensor padded to the shard count."""
    from cli_helpers import cli_json

    rows = _qwen25_05b_fsdp_rows(gpus)
    if gpus == 8:
        assert rows == 494_032_768  # every dim 0 divides: the published count
    argv = ["train", "Qwen/Qwen2.5-0.5B", "--gpus", str(gpus), "--fsdp", "full", "--json"]
    argv += ["--precision", "bf16-mixed", "--seq", "1024", "--global-batch", str(2 * gpus)]
    out = cli_json(capsys, argv)
    dp = {c["op"]: c for c in out["communication"] if c["parallelism"] == "dp"}
    assert dp["all-gather"]["bytes"] == rows * 2
    assert dp["all-gather"]["calls_per_step"] == 2 * 2  # two micro-batches of one
    assert dp["reduce-scatter"]["bytes"] == rows * 4
    assert dp["reduce-scatter"]["calls_per_step"] == 2
