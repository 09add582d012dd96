"""`memplan infer`: memory tree, KV cache, quantized weights, latency, bad input."""

from __future__ import annotations

import pytest

from cli_helpers import cli_json
from memplan.catalog import resolve
from memplan.catalog.gpus import resolve_gpu
from memplan.cli.main import main
from memplan.estimate.inference import inference_report
from memplan.specs.inference import InferenceSetup


def _json(argv: list[str], capsys: pytest.CaptureFixture[str]) -> dict:
    return cli_json(capsys, ["infer", *argv, "--json"])


def test_llama2_kv_and_peak(capsys: pytest.CaptureFixture[str]) -> None:
    data = _json(["meta-llama/Llama-2-7b-hf", "--batch", "2", "--prompt-len", "1000",
                  "--gen-len", "25", "--gpu", "A100"], capsys)  # fmt: skip
    # 1024 tokens kept (the 25th generated token is never fed back): 2 x 1024 x 0.5 MiB
    assert data["kv_cache_bytes"] == 2 * 1024 * 524_288
    assert data["peak_bytes"] == data["breakdown"]["total"]
    assert data["breakdown"]["children"][0]["key"] == "parameters"
    assert data["ttft_s"] > 0 and data["decode_regime"] == "memory-bound"


def test_fp8_cache_and_awq_weights(capsys: pytest.CaptureFixture[str]) -> None:
    base = _json(["meta-llama/Llama-3.1-8B", "--prompt-len", "4096", "--gen-len", "1"], capsys)
    fp8 = _json(["meta-llama/Llama-3.1-8B", "--prompt-len", "4096", "--gen-len", "1",
                 "--kv-dtype", "fp8"], capsys)  # fmt: skip
    assert 2 * (fp8["kv_cache_bytes"] - 0) == base["kv_cache_bytes"]
    awq = _json(["meta-llama/Llama-3.1-8B", "--weights", "int4-awq"], capsys)
    assert awq["weights_bytes"] < base["weights_bytes"] / 2


def test_static_cache_is_allocated_up_front() -> None:
    spec = resolve("meta-llama/Llama-2-7b-hf")
    setup = InferenceSetup(batch=1, prompt_len=100, gen_len=100, cache="static")
    report = inference_report(spec, setup)
    assert report.scalars["kv_cache_bytes"] == 200 * 524_288 + 8 * 32


def test_decode_turns_compute_bound_at_the_ridge_batch() -> None:
    spec = resolve("meta-llama/Llama-3.1-8B")
    gpu = resolve_gpu("H100")
    small = inference_report(spec, InferenceSetup(batch=1, prompt_len=128, gen_len=2), gpu)
    ridge = small.scalars["decode_ridge_batch"]
    assert ridge is not None and 50 < ridge < 2000
    big = InferenceSetup(batch=int(ridge * 1.5), prompt_len=128, gen_len=2)
    assert inference_report(spec, big, gpu).scalars["decode_regime"] == "compute-bound"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["meta-llama/Llama-3.1-70B", "--tp", "3"], "divisible"),
        (["gpt2-xl", "--weights", "int4-awq"], "divisible by 128"),
        (["gpt2", "--prompt-len", "1000", "--gen-len", "100"], "positions"),
        (["gpt2", "--gpu", "H1OO"], "unknown GPU"),
        (["gpt2", "--kv-dtype", "fp4"], "KV cache dtype"),
        (["gpt2", "--weights", "int3"], "unknown weight format"),
    ],
)
def test_cli_bad_input(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["infer", *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_max_batch_size_is_the_largest_that_fits() -> None:
    spec = resolve("meta-llama/Llama-3.1-8B")
    gpu = resolve_gpu("L40S")
    setup = InferenceSetup(batch=1, prompt_len=4096, gen_len=512)
    best = inference_report(spec, setup, gpu).scalars["max_batch_size"]
    assert best > 1
    fits = inference_report(spec, InferenceSetup(batch=best, prompt_len=4096, gen_len=512), gpu)
    over = inference_report(spec, InferenceSetup(batch=best + 1, prompt_len=4096, gen_len=512), gpu)
    assert fits.scalars["headroom_bytes"] >= 0 > over.scalars["headroom_bytes"]
