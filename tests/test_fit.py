"""The fit verdict: one function for every command, the memory outside the tensors by name.

Before: ``memplan train --gpu`` reserved 512 MiB + Hopper's 32 MiB cuBLAS workspace on every
GPU and ignored ``--cuda-context``; ``memplan infer`` put the context and the workspace inside
``peak_bytes``. Now ``peak_bytes`` is the tensors' peak everywhere, and the verdict subtracts
the named lines: the context (given or typical), the workspaces of the GPU's architecture
(``CublasHandlePool.cpp``: 32 MiB on sm90 only), two for a training step, one for inference.
"""

from __future__ import annotations

import dataclasses

import pytest

from cli_helpers import cli_json
from memplan.catalog import resolve
from memplan.catalog.gpus import resolve_gpu
from memplan.estimate.fit import fit_on_gpu, largest
from memplan.formulas.overheads import cublas_workspace_bytes, outside_tensors_item
from memplan.specs.hardware import custom_gpu
from memplan.units import GIB, MIB

PRE_HOPPER = 4096 * 1024 * 2 + 16 * 1024 * 8  # ":4096:2:16:8"


@pytest.mark.parametrize(
    ("gpu", "expected"),
    [
        ("H100-SXM", 32 * MIB),
        ("H200", 32 * MIB),
        ("GH200", 32 * MIB),
        ("A100", PRE_HOPPER),
        ("L40S", PRE_HOPPER),
        ("B200", PRE_HOPPER),  # sm100: the 32 MiB default is for 9.0 only
        ("RTX-5090", PRE_HOPPER),
        ("V100", PRE_HOPPER),
        ("MI300X", 128 * MIB),  # ROCm gfx942
        ("MI250X", 32 * MIB),
    ],
)
def test_workspace_follows_the_catalog_architecture(gpu: str, expected: int) -> None:
    assert cublas_workspace_bytes(resolve_gpu(gpu))[0] == expected


def test_unknown_architecture_takes_the_larger_default_and_says_so() -> None:
    size, how = cublas_workspace_bytes(custom_gpu(memory_bytes=24 * GIB))
    assert size == 32 * MIB and "unknown" in how


def test_verdict_arithmetic() -> None:
    outside = outside_tensors_item(resolve_gpu("A100"), cuda_context_bytes=300 * MIB)
    assert outside.total == 300 * MIB + PRE_HOPPER
    verdict = fit_on_gpu(10 * GIB, 9 * GIB, outside, "test")
    assert verdict.usable_bytes == 10 * GIB - 300 * MIB - PRE_HOPPER
    assert verdict.headroom_bytes == verdict.usable_bytes - 9 * GIB and verdict.fits
    short = fit_on_gpu(10 * GIB, 10 * GIB, outside)
    assert not short.fits and short.headroom_bytes == -(300 * MIB + PRE_HOPPER)


def test_largest_is_the_last_that_fits() -> None:
    assert largest(lambda n: n <= 37, 1 << 20) == 37
    assert largest(lambda n: n <= 5, 4) == 4
    assert largest(lambda n: False, 100) == 0


def test_train_honours_cuda_context_and_the_gpu(capsys: pytest.CaptureFixture[str]) -> None:
    """A100: 400 MiB given + 2 x 8.125 MiB, where the old check took 512 + 32 MiB."""
    argv = ["train", "llama-3.2-1b", "--batch", "2", "--seq", "1024", "--precision", "bf16"]
    data = cli_json(capsys, [*argv, "--gpu", "A100", "--cuda-context", "400MiB", "--json"])
    memory = resolve_gpu("A100").memory_bytes
    assert data["cuda_context_bytes"] == 400 * MIB
    assert data["cublas_workspace_bytes"] == 2 * PRE_HOPPER
    assert data["usable_bytes"] == memory - 400 * MIB - 2 * PRE_HOPPER
    assert data["headroom_bytes"] == data["usable_bytes"] - data["peak_bytes"]
    h100 = cli_json(capsys, [*argv, "--gpu", "H100", "--json"])
    assert h100["usable_bytes"] == resolve_gpu("H100").memory_bytes - 512 * MIB - 64 * MIB


def test_infer_peak_is_the_tensors_and_the_verdict_counts_the_rest(
    capsys: pytest.CaptureFixture[str],
) -> None:
    data = cli_json(capsys, ["infer", "llama-3.2-1b", "--batch", "4", "--prompt-len", "1024",
                             "--gen-len", "2", "--gpu", "L40S", "--json"])  # fmt: skip
    assert data["peak_bytes"] == data["breakdown"]["total"]
    keys = [child["key"] for child in data["breakdown"]["children"]]
    assert "overheads" not in keys and "cuda_context" not in str(data["breakdown"])
    assert data["cuda_context_bytes"] == 512 * MIB and data["cublas_workspace_bytes"] == PRE_HOPPER
    memory = resolve_gpu("L40S").memory_bytes
    assert data["headroom_bytes"] == memory - 512 * MIB - PRE_HOPPER - data["peak_bytes"]


def test_python_api_gives_the_cli_numbers(capsys: pytest.CaptureFixture[str]) -> None:
    import memplan
    from memplan.specs.inference import InferenceSetup
    from memplan.specs.training import Precision, TrainingSetup

    setup = TrainingSetup(batch=2, seq=1024, precision=Precision.BF16)
    api = memplan.train("llama-3.2-1b", setup, gpu="H100", cuda_context_bytes=GIB).scalars
    cli = cli_json(capsys, ["train", "llama-3.2-1b", "--batch", "2", "--seq", "1024",
                            "--precision", "bf16", "--gpu", "H100", "--cuda-context", "1GiB",
                            "--json"])  # fmt: skip
    for key in ("peak_bytes", "usable_bytes", "headroom_bytes", "max_batch_size", "max_seq_len"):
        assert api[key] == cli[key], key
    report = memplan.infer("llama-3.2-1b", InferenceSetup(batch=8), gpu="H100")
    assert (
        report.scalars["headroom_bytes"]
        == report.scalars["usable_bytes"] - report.scalars["peak_bytes"]
    )


def test_inference_max_batch_is_the_largest_that_fits() -> None:
    from memplan.estimate.inference import inference_report
    from memplan.specs.inference import InferenceSetup

    spec = resolve("meta-llama/Llama-3.1-8B")
    gpu = dataclasses.replace(resolve_gpu("L40S"), memory_bytes=30 * GIB)
    best = inference_report(spec, InferenceSetup(prompt_len=4096, gen_len=512), gpu)
    batch = best.scalars["max_batch_size"]
    assert batch > 1
    at = inference_report(spec, InferenceSetup(batch=batch, prompt_len=4096, gen_len=512), gpu)
    over = inference_report(
        spec, InferenceSetup(batch=batch + 1, prompt_len=4096, gen_len=512), gpu
    )
    assert at.scalars["fits"] and not over.scalars["fits"]
