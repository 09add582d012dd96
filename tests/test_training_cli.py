"""``memplan train`` in-process: the README's command, JSON contract, what fits, bad input."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import pytest

from cli_helpers import check_sums, cli_json
from memplan.catalog import resolve
from memplan.cli.main import main
from memplan.estimate.training import training_peak_bytes
from memplan.formulas.training import alloc_bytes
from memplan.specs.training import Precision, TrainingSetup

MAKE_RUN = [
    "train", "meta-llama/Llama-3.1-8B", "--batch", "1", "--seq", "2048",
    "--precision", "bf16-mixed", "--optimizer", "adamw", "--gpu", "H100-SXM",
]  # fmt: skip


def test_make_run_prints_a_readable_estimate(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(MAKE_RUN) == 0
    out = capsys.readouterr().out
    for text in ("peak", "parameters", "optimizer_states", "phases", "optimizer_step",
                 "does not fit on H100", "short by", "largest micro-batch at seq 2048: none",
                 "longest sequence at batch 1: none", "what to try"):  # fmt: skip
        assert text in out, text


def test_what_fits_lists_the_largest_batch_and_sequence(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([*MAKE_RUN[:-2], "--lora-rank", "16", "--gpu", "H100-SXM"]) == 0
    out = capsys.readouterr().out
    for text in ("fits on H100", "to spare", "usable for tensors", "largest micro-batch at seq 2048:",
                 "longest sequence at batch 1:"):  # fmt: skip
        assert text in out, text


def test_json_contract(capsys: pytest.CaptureFixture[str]) -> None:
    data = cli_json(capsys, [*MAKE_RUN, "--json"])
    assert data["peak_bytes"] == data["breakdown"]["total"]
    check_sums(data["breakdown"])
    keys = [child["key"] for child in data["breakdown"]["children"]]
    assert keys[:4] == ["parameters", "gradients", "optimizer_states", "activations"]
    assert [p["name"] for p in data["phases"]] == [
        "after_load", "end_of_forward", "peak_backward", "after_backward", "optimizer_step",
        "after_zero_grad",
    ]  # fmt: skip
    # the foreach AdamW step (a temporary per parameter) is this setup's highest point
    assert data["peak_phase"] == "optimizer_step"
    assert data["peak_bytes"] == _phases(data)["optimizer_step"] == max(_phases(data).values())
    assert data["max_batch_size"] == 0 and data["max_seq_len"] == 0
    assert data["headroom_bytes"] < 0
    assert isinstance(data["first_step_peak_bytes"], int)


def test_what_fits_on_a_given_memory(capsys: pytest.CaptureFixture[str]) -> None:
    data = cli_json(capsys, ["train", "llama-3.2-1b", "--batch", "2", "--seq", "1024",
                          "--precision", "bf16", "--gpu-memory", "80GiB", "--json"])  # fmt: skip
    assert data["fits"] is True
    assert data["headroom_bytes"] == data["usable_bytes"] - data["peak_bytes"] > 0
    # the largest batch and the longest sequence are where the next one no longer fits
    spec, setup = (
        resolve("llama-3.2-1b"),
        TrainingSetup(batch=2, seq=1024, precision=Precision.BF16),
    )
    usable, batch, seq = data["usable_bytes"], data["max_batch_size"], data["max_seq_len"]
    assert training_peak_bytes(spec, dataclasses.replace(setup, batch=batch)) <= usable
    assert training_peak_bytes(spec, dataclasses.replace(setup, batch=batch + 1)) > usable
    assert training_peak_bytes(spec, dataclasses.replace(setup, seq=seq)) <= usable
    assert training_peak_bytes(spec, dataclasses.replace(setup, seq=seq + 1)) > usable


def test_seed004_method_and_its_batch(capsys: pytest.CaptureFixture[str]) -> None:
    data = cli_json(capsys, ["train", "gpt2-xl", "--precision", "fp32", "--seq", "1024",
                          "--gpu-memory", "80GB", "--method", "seed004", "--json"])  # fmt: skip
    assert data["peak_bytes"] == 32_746_342_400 + 15_941_046_272
    assert data["max_batch_size"] == 2


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--batch", "0"], "argument --batch: expected a positive integer, got '0'"),
        (["--seq", "200000"], "exceeds"),
        (["--optimizer", "adamx"], "unknown optimizer 'adamx'"),
        (["--precision", "fp8"], "unknown precision 'fp8'"),
        (["--lora-rank", "5000", "--lora-targets", "q_proj"], "LoRA rank 5000 is larger"),
        (["--lora-rank", "8", "--lora-targets", "c_attn"], "unknown LoRA target c_attn"),
        (["--gpu", "H900"], "H900"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(
    capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    assert main(["train", "llama-3.2-1b", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("memplan: error:") and message in err
    assert len(err.splitlines()) == 1


def test_a_setup_that_does_not_fit_is_an_answer(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", "llama-2-70b", "--gpu", "A100-80GB"]) == 0
    assert "does not fit on A100-SXM-80GB" in capsys.readouterr().out
    data = cli_json(capsys, ["train", "llama-2-70b", "--gpu", "A100-80GB", "--json"])
    assert data["fits"] is False
    assert data["headroom_bytes"] == data["usable_bytes"] - data["peak_bytes"]
    assert data["max_batch_size"] == data["max_seq_len"] == 0


# Llama-3.2-1B (its config.json): 16 layers, hidden 2048, 8 KV heads of 64, MLP 8192, vocabulary
# 128256, tied embeddings. Each parameter tensor is its own CUDA block (512-B rounding).
LLAMA32 = "llama-3.2-1b"
H, KV, FF, V, LAYERS = 2048, 8 * 64, 8192, 128256, 16
SHAPES = [(V, H)] + LAYERS * [
    (H, H),
    (KV, H),
    (KV, H),
    (H, H),
    (FF, H),
    (FF, H),
    (H, FF),
    (H,),
    (H,),
]
SHAPES.append((H,))  # the final norm; the tied lm_head is the embedding


def _blocks(bytes_per_element: int) -> int:
    """Every parameter tensor at ``bytes_per_element``, each in whole 512-B blocks."""
    return sum(alloc_bytes(math.prod(shape) * bytes_per_element) for shape in SHAPES)


def _optimizer_states(optimizer: str) -> int:
    """States per optimizer for bf16-mixed (fp32 parameters, states in their dtype)."""
    each = {
        # two moments; torch keeps ``step`` on the host unless fused (one fp32 per tensor)
        "adamw": lambda n, shape: [4 * n, 4 * n],
        "adamw-forloop": lambda n, shape: [4 * n, 4 * n],
        "adam": lambda n, shape: [4 * n, 4 * n],
        "adamw-fused": lambda n, shape: [4 * n, 4 * n, 4],
        "sgd": lambda n, shape: [],
        "sgd-momentum": lambda n, shape: [4 * n],  # momentum_buffer
        "lion": lambda n, shape: [4 * n],  # exp_avg
        # transformers' Adafactor: fp32 row and column moments of a matrix, the full moment of a
        # vector, and an RMS 0-d tensor per parameter
        "adafactor": lambda n, shape: (
            [4 * n // shape[-1], 4 * n // shape[-2], 4] if len(shape) >= 2 else [4 * n, 4]
        ),
        # bitsandbytes: uint8 moments and an fp32 absmax per 256-element block from 4096
        # elements on (min_8bit_size), fp32 moments below
        "adamw-8bit": lambda n, shape: (
            [n, n, 4 * -(-n // 256), 4 * -(-n // 256)] if n >= 4096 else [4 * n, 4 * n]
        ),
    }[optimizer.removeprefix("paged-")]
    total = sum(alloc_bytes(size) for shape in SHAPES for size in each(math.prod(shape), shape))
    if optimizer.endswith("8bit"):
        total += 2 * alloc_bytes(256 * 4)  # the two shared 256-entry fp32 quantization maps
    return total


def _phases(data: dict[str, Any]) -> dict[str, int]:
    return {p["name"]: p["bytes"] for p in data["phases"]}


def _category(data: dict[str, Any], key: str) -> int:
    return next((c["total"] for c in data["breakdown"]["children"] if c["key"] == key), 0)


@pytest.mark.parametrize(
    "optimizer",
    ["adamw", "adamw-fused", "adamw-forloop", "adam", "sgd", "sgd-momentum", "adafactor",
     "lion", "adamw-8bit", "paged-adamw-8bit"],
)  # fmt: skip
def test_every_optimizer_keeps_its_states(
    capsys: pytest.CaptureFixture[str], optimizer: str
) -> None:
    data = cli_json(capsys, ["train", LLAMA32, "--optimizer", optimizer, "--json"])
    sgd = cli_json(capsys, ["train", LLAMA32, "--optimizer", "sgd", "--json"])
    assert _category(data, "optimizer_states") == _optimizer_states(optimizer)
    # before the forward, states are all that differ from plain SGD
    assert _phases(data)["after_load"] - _phases(sgd)["after_load"] == _optimizer_states(optimizer)


@pytest.mark.parametrize(
    ("precision", "param_bytes", "grad_bytes", "states"),
    [
        ("fp32", 4, 4, 2 * _blocks(4)),
        ("fp16", 2, 2, 2 * _blocks(2)),
        ("bf16", 2, 2, 2 * _blocks(2)),
        ("fp16-mixed", 4, 4, 2 * _blocks(4)),
        # fp32 Adam moments and an fp32 master copy (seed 001's 16 bytes per parameter)
        ("deepspeed-bf16", 2, 2, 3 * _blocks(4)),
        ("deepspeed-fp16", 2, 2, 3 * _blocks(4)),
    ],
)
def test_every_precision_keeps_its_widths(
    capsys: pytest.CaptureFixture[str], precision: str, param_bytes: int, grad_bytes: int,
    states: int,
) -> None:  # fmt: skip
    data = cli_json(capsys, ["train", LLAMA32, "--precision", precision, "--json"])
    phases = _phases(data)
    assert _category(data, "parameters") == _blocks(param_bytes)
    assert phases["after_backward"] - phases["after_load"] == _blocks(grad_bytes)
    assert _category(data, "optimizer_states") == states


@pytest.mark.parametrize(
    "extra",
    [["--checkpointing", "full"], ["--checkpointing", "selective"], ["--attention", "eager"]],
)
def test_activation_choices_leave_the_static_phases(
    capsys: pytest.CaptureFixture[str], extra: list[str]
) -> None:
    """Recomputation and the attention kernel change activations only: before the forward,
    after the backward, in the step and after it, memory is the default setup's."""
    static = ("after_load", "after_backward", "optimizer_step", "after_zero_grad")
    default = _phases(cli_json(capsys, ["train", LLAMA32, "--json"]))
    changed = _phases(cli_json(capsys, ["train", LLAMA32, *extra, "--json"]))
    assert {k: changed[k] for k in static} == {k: default[k] for k in static}


def test_what_trains_with_qlora_and_frozen_layers(capsys: pytest.CaptureFixture[str]) -> None:
    qlora = cli_json(capsys, ["train", LLAMA32, "--qlora", "--lora-rank", "16", "--json"])
    # QLoRA's recipe adapts every linear layer (specs/training.py QLORA_RECIPE): rank 16,
    # A (16 x in) and B (out x 16) on q, k, v, o, gate, up and down in every layer
    per_rank = (H + H) + 2 * (H + KV) + (H + H) + 3 * (H + FF)
    assert qlora["trainable_params"] == LAYERS * 16 * per_rank
    frozen = cli_json(
        capsys, ["train", LLAMA32, "--freeze-layers", "4", "--freeze-embeddings", "--json"]
    )
    layer = sum(math.prod(shape) for shape in SHAPES[1:10])
    total = sum(math.prod(shape) for shape in SHAPES)
    # the tied lm_head is the frozen embedding
    assert frozen["trainable_params"] == total - 4 * layer - V * H


def test_cpu_target_counts_bytes_without_blocks(capsys: pytest.CaptureFixture[str]) -> None:
    data = cli_json(capsys, ["train", LLAMA32, "--target", "cpu", "--json"])
    assert _category(data, "parameters") == 4 * sum(math.prod(shape) for shape in SHAPES)


def test_train_and_compare_methods_do_not_import_torch() -> None:
    import os
    import subprocess
    import sys

    script = (
        "import contextlib, io, sys\n"
        "from memplan.cli.main import main\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        "    assert main(['train', 'llama-3.1-8b', '--gpu', 'H100-SXM']) == 0\n"
        "    assert main(['train', 'gpt2-xl', '--method', 'seed004', '--seq', '1024']) == 0\n"
        "    assert main(['compare', 'gpt2', '--seq', '512', '--methods', '--no-trace']) == 0\n"
        "print(','.join(m for m in ('torch', 'transformers') if m in sys.modules))\n"
    )
    env = {**os.environ, "MEMPLAN_OFFLINE": "1"}
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == ""
