"""``memplan train`` in-process: the README's command, JSON contract, what fits, bad input."""

from __future__ import annotations

import pytest

from cli_helpers import check_sums, cli_json
from memplan.cli.main import main

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
    for text in ("fits on H100", "to spare", "largest micro-batch at seq 2048:",
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
    assert data["peak_phase"] in ("forward", "backward", "optimizer_step")
    assert data["max_batch_size"] == 0 and data["max_seq_len"] == 0
    assert data["headroom_bytes"] < 0
    assert isinstance(data["first_step_peak_bytes"], int)


def test_what_fits_on_a_given_memory(capsys: pytest.CaptureFixture[str]) -> None:
    data = cli_json(capsys, ["train", "llama-3.2-1b", "--batch", "2", "--seq", "1024",
                          "--precision", "bf16", "--gpu-memory", "80GiB", "--json"])  # fmt: skip
    assert data["fits"] is True
    assert data["headroom_bytes"] == data["usable_bytes"] - data["peak_bytes"] > 0
    assert data["max_batch_size"] > 2
    assert data["max_seq_len"] >= 1024


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


def test_every_optimizer_and_precision_runs(capsys: pytest.CaptureFixture[str]) -> None:
    for optimizer in ("adamw-fused", "adamw-forloop", "adam", "sgd", "sgd-momentum",
                      "adafactor", "lion", "adamw-8bit", "paged-adamw-8bit"):  # fmt: skip
        assert main(["train", "llama-3.2-1b", "--optimizer", optimizer, "--json"]) == 0
    for precision in ("fp32", "fp16", "bf16", "fp16-mixed", "deepspeed-bf16", "deepspeed-fp16"):
        assert main(["train", "llama-3.2-1b", "--precision", precision, "--json"]) == 0
    for extra in (["--checkpointing", "full"], ["--checkpointing", "selective"],
                  ["--attention", "eager"], ["--qlora", "--lora-rank", "16"],
                  ["--freeze-layers", "4", "--freeze-embeddings"], ["--target", "cpu"]):  # fmt: skip
        assert main(["train", "llama-3.2-1b", *extra, "--json"]) == 0
    capsys.readouterr()


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
