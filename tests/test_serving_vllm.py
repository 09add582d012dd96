"""vLLM serving arithmetic: seed 002's Phi-3-mini weights, blocks, tokens, concurrency, errors."""

from __future__ import annotations

import dataclasses
import json

import pytest

from memplan.catalog import resolve
from memplan.catalog.gpus import resolve_gpu
from memplan.cli.main import main
from memplan.errors import SetupError
from memplan.estimate.serving import ServingSetup, serving_report, vllm_weights_item
from memplan.formulas import serving as vllm
from memplan.formulas.allocator import cuda_block_bytes
from memplan.units import GIB


def test_phi3_mini_weights_match_seed_002() -> None:
    """Seed 002: vLLM loaded Phi-3-mini-4k's weights in 7.1183 GB (GiB) on an H100.

    vLLM logs torch's allocated-bytes delta: 3,821,079,552 bf16 parameters (7,642,159,104 B),
    plus the caching allocator's whole 188 MiB segments for the two 187.875 MiB vocab tables
    (2 x 131,072 B), plus the rotary cos/sin cache (4096 x 96 x 2 B = 786,432 B)."""
    spec = resolve("microsoft/Phi-3-mini-4k-instruct")
    weights = vllm_weights_item(spec, "bf16", 1, 2)
    assert weights.find("model_weights").total == 7_642_159_104
    assert weights.find("allocator_rounding").total == 262_144
    assert weights.total == 7_643_207_680
    assert round(weights.total / GIB, 4) == 7.1183


def test_cuda_block_bytes() -> None:
    mib = 1 << 20
    assert cuda_block_bytes(100) == 512
    assert cuda_block_bytes(786_432) == 786_432  # small pool, split from a 2 MiB segment
    assert cuda_block_bytes(3 * mib) == 3 * mib  # split from a 20 MiB segment
    assert cuda_block_bytes(197_001_216) == 188 * mib  # 0.125 MiB left: not split
    assert cuda_block_bytes(int(19.5 * mib)) == 20 * mib
    assert cuda_block_bytes(int(18.5 * mib)) == int(18.5 * mib)  # 1.5 MiB left: split


def test_llama2_7b_capacity_by_hand() -> None:
    """Uniform full attention: page 2 x 16 x 32 x 128 x 2 B; blocks = avail // page // 32."""
    spec = resolve("meta-llama/Llama-2-7b-hf")
    page = vllm.page_size_bytes(spec, 16, 2, 1)
    assert page == 262_144
    layout = vllm.kv_cache_layout(spec)
    assert layout == vllm.KvCacheLayout(32, (None,))
    available = 20 * GIB
    blocks = vllm.num_blocks(available, page, layout)
    assert blocks == 20 * GIB // 262_144 // 32 == 2560
    assert vllm.kv_cache_tokens(blocks, layout, 16) == 40_960
    assert vllm.max_concurrency(blocks, layout, 4096, 8192, 16, page) == 2560 / 256


def test_gemma2_hybrid_groups() -> None:
    """Gemma-2-9B: 21 sliding + 21 full layers -> two groups of 21 sharing each page."""
    spec = resolve("google/gemma-2-9b")
    layout = vllm.kv_cache_layout(spec)
    assert layout.group_size == 21 and sorted(layout.groups, key=str) == [4096, None]
    page = vllm.page_size_bytes(spec, 16, 2, 1)
    assert page == 2 * 16 * 8 * 256 * 2
    blocks = vllm.num_blocks(10 * GIB, page, layout)
    assert blocks == 10 * GIB // page // 21
    assert vllm.kv_cache_tokens(blocks, layout, 16) == blocks // 2 * 16
    # one request of 8192 tokens: 512 full blocks + cdiv(min(4095 + 8192, 8192), 16) + 1 = 513
    assert vllm.max_concurrency(blocks, layout, 8192, 8192, 16, page) == blocks / (512 + 513)


def test_tp_kv_heads_replicated_and_checked() -> None:
    spec = resolve("meta-llama/Llama-3.1-70B")
    assert vllm.vllm_kv_heads_per_rank(spec, 4) == 2
    assert vllm.vllm_kv_heads_per_rank(spec, 16) == 1
    vllm.check_tp_degree(spec, 16)
    with pytest.raises(SetupError, match="divisible"):
        vllm.check_tp_degree(spec, 3)
    mla = resolve("deepseek-ai/DeepSeek-V2-Lite")
    assert vllm.page_size_bytes(mla, 16, 2, 8) == 16 * (512 + 64) * 2


def test_not_enough_memory_estimate_is_the_largest_that_fits() -> None:
    spec = resolve("meta-llama/Llama-3.1-70B")
    setup = ServingSetup(tp_degree=2, max_model_len=131072)
    report = serving_report(spec, setup, resolve_gpu("H100"))
    assert report.scalars["fits"] is False
    estimate = report.scalars["estimated_max_model_len"]
    layout = vllm.kv_cache_layout(spec)
    page = report.scalars["page_size_bytes"]
    available = report.scalars["available_kv_cache_bytes"]
    assert vllm.needed_bytes(layout, estimate, 8192, 16, page) <= available
    assert vllm.needed_bytes(layout, estimate + 1, 8192, 16, page) > available
    assert any("estimated maximum model length is" in note for note in report.notes)


def test_fp8_cache_doubles_tokens() -> None:
    spec = resolve("meta-llama/Llama-3.1-8B")
    gpu = resolve_gpu("H100-SXM")
    base = serving_report(spec, ServingSetup(max_model_len=8192), gpu).scalars
    fp8 = serving_report(spec, ServingSetup(max_model_len=8192, kv_cache_dtype="fp8"), gpu).scalars
    assert fp8["page_size_bytes"] * 2 == base["page_size_bytes"]
    assert fp8["num_gpu_blocks"] in (2 * base["num_gpu_blocks"], 2 * base["num_gpu_blocks"] + 1)


def test_cli_json(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(
        ["serve-capacity", "microsoft/Phi-3-mini-4k-instruct", "--gpu", "H100-SXM", "--json"]
    )
    assert code == 0
    data = json.loads(capsys.readouterr().out)
    assert data["kv_cache_tokens"] % 16 == 0 and data["kv_cache_tokens"] > 100_000
    assert data["max_concurrency"] == pytest.approx(data["num_gpu_blocks"] / 256, abs=1e-4)
    assert data["requested_bytes"] == int(85_520_809_984 * 0.9)
    # the tensors: weights, the KV cache blocks and the profiling run's activation peak
    kv = data["num_gpu_blocks"] * data["page_size_bytes"] * 32  # one group of 32 layers
    assert (
        data["peak_bytes"] == data["weights_bytes"] + kv + data["breakdown"]["children"][1]["total"]
    )
    assert data["fits"] is True and data["cuda_context_bytes"] == 512 * 2**20


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--gpu", "H100", "--gpu-memory-utilization", "1.5"], "(0, 1]"),
        (["--gpu", "H100", "--gpu-memory-utilization", "0"], "(0, 1]"),
        (["--gpu", "H100", "--max-model-len", "100000"], "beyond"),
        (["--gpu", "H10O"], "did you mean"),
        (["--gpu", "H100", "--tp", "3"], "divisible"),
        (["--gpu", "H100", "--kv-cache-dtype", "int3"], "KV cache dtype"),
        ([], "needs a GPU"),
    ],
)
def test_cli_bad_input(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["serve-capacity", "microsoft/Phi-3-mini-4k-instruct", *argv])
    err = capsys.readouterr().err
    assert code == 2
    assert message in err and err.count("\n") == 1 and "Traceback" not in err


def test_cli_quant_format_the_model_cannot_use(capsys: pytest.CaptureFixture[str]) -> None:
    """GPT-2 XL's 1600-wide inputs are not a multiple of AWQ's group of 128."""
    code = main(["serve-capacity", "gpt2-xl", "--gpu", "A100", "--weights", "int4-awq"])
    assert code == 2
    assert "divisible by 128" in capsys.readouterr().err


def test_requested_memory_is_total_times_utilization() -> None:
    gpu = dataclasses.replace(resolve_gpu("H200"), memory_bytes=100 * GIB)
    report = serving_report(resolve("Qwen/Qwen2.5-7B"), ServingSetup(max_model_len=32768), gpu)
    assert report.scalars["requested_bytes"] == 90 * GIB


def test_requested_memory_beside_the_context_must_fit_the_gpu() -> None:
    """vLLM refuses to start when the requested share and the CUDA context exceed the GPU."""
    gpu = dataclasses.replace(resolve_gpu("H200"), memory_bytes=100 * GIB)
    spec = resolve("Qwen/Qwen2.5-7B")
    setup = ServingSetup(max_model_len=32768, gpu_memory_utilization=0.999)
    report = serving_report(spec, setup, gpu, cuda_context_bytes=GIB)
    assert report.scalars["vllm_kv_check"] is True and report.scalars["fits"] is False
    assert report.scalars["headroom_bytes"] == 99 * GIB - int(0.999 * 100 * GIB)
