"""The first ten minutes (issue 12): defaults, names, strict inputs, as a new user meets them.

Each test runs the CLI in-process and checks the exact line or JSON field a user sees.
"""

from __future__ import annotations

import pytest

from cli_helpers import cli_json_of as _json
from cli_helpers import cli_run as _run
from memplan.catalog import find_entry, resolve
from memplan.catalog.gpus import list_gpus, resolve_gpu
from memplan.units import GIB, MIB, format_sig, parse_count


def _error(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    status, out, err = _run(capsys, argv)
    assert status == 2 and out == ""
    assert len(err.splitlines()) == 1, err
    return err.strip()


# Strict inputs ------------------------------------------------------------------------------
def test_a_float_batch_is_one_line_not_a_usage_dump(capsys: pytest.CaptureFixture[str]) -> None:
    assert _error(capsys, ["train", "gpt2", "--batch", "2.5"]) == (
        "memplan: error: argument --batch: expected a positive integer, got '2.5' "
        "(see `memplan train --help`)"
    )


def test_gpu_memory_needs_a_unit(capsys: pytest.CaptureFixture[str]) -> None:
    assert _error(capsys, ["infer", "gpt2", "--gpu-memory", "24"]) == (
        "memplan: error: --gpu-memory 24 has no unit: write 24GiB (2^30 bytes) or 24GB (10^9 bytes)"
    )
    assert _json(capsys, ["infer", "gpt2", "--gpu-memory", "24GiB"])["gpu_memory_bytes"] == 24 * GIB


def test_unknown_lora_target_lists_the_modules(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["train", "llama-3.2-1b", "--lora-rank", "8", "--lora-targets", "q_proj,foo"]
    assert _error(capsys, argv) == (
        "memplan: error: unknown LoRA target foo for meta-llama/Llama-3.2-1B: its linear "
        "modules are q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj "
        "(or all-linear, attention)"
    )


def test_lora_alpha_without_a_rank(capsys: pytest.CaptureFixture[str]) -> None:
    assert _error(capsys, ["train", "llama-3.2-1b", "--lora-alpha", "32"]) == (
        "memplan: error: --lora-alpha scales LoRA adapters: give --lora-rank R too (or --qlora),"
        " or drop --lora-alpha for full training"
    )


def test_vllm_block_sizes(capsys: pytest.CaptureFixture[str]) -> None:
    assert _error(capsys, ["serve-capacity", "gpt2", "--gpu", "L4", "--block-size", "7"]) == (
        "memplan: error: argument --block-size: invalid choice: 7 (choose from 1, 8, 16, 32, 64,"
        " 128, 256) (see `memplan serve-capacity --help`)"
    )
    data = _json(capsys, ["serve-capacity", "gpt2", "--gpu", "L4", "--block-size", "32"])
    assert data["setup"]["block_size"] == 32


def test_counts_take_suffixes_and_exponents(capsys: pytest.CaptureFixture[str]) -> None:
    assert parse_count("2T") == parse_count("2e12") == 2 * 10**12
    assert parse_count("300B") == 3 * 10**11 and parse_count("1.5M") == 1_500_000
    base = ["time", "llama-3.2-1b", "--gpu", "H100"]
    assert _json(capsys, [*base, "--tokens", "2T"])["tokens"] == 2 * 10**12
    assert _json(capsys, [*base, "--tokens", "1e12"])["tokens"] == 10**12
    assert "cannot read the count '2X'" in _error(capsys, [*base, "--tokens", "2X"])


# Defaults that match how people run jobs ----------------------------------------------------
def test_sequence_default_never_exceeds_the_context(capsys: pytest.CaptureFixture[str]) -> None:
    assert _json(capsys, ["train", "gpt2"])["setup"]["seq"] == 1024
    assert _json(capsys, ["train", "llama-3.2-1b"])["setup"]["seq"] == 2048
    assert _json(capsys, ["time", "gpt2", "--steps", "1", "--gpu", "H100"])["setup"]["seq"] == 1024


def test_qlora_alone_is_the_standard_recipe(capsys: pytest.CaptureFixture[str]) -> None:
    data = _json(capsys, ["train", "llama-3.1-8b", "--qlora", "--gpu", "RTX-4090"])
    assert data["setup"] == {
        "batch": 1,
        "seq": 2048,
        "precision": "bf16",
        "optimizer": "paged-adamw-8bit",
        "attention": "sdpa",
        "checkpointing": "full",
        "lora": "rank 64, alpha 16, all linear layers "
        "(q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj)",
        "qlora": "NF4 base weights with double quantization (bitsandbytes), bf16 compute, "
        "fp32 adapters",
    }
    # Unsloth and Hugging Face publish 6-10 GB for an 8B QLoRA at batch 1
    assert 6 * GIB < data["peak_bytes"] < 10 * GIB and data["fits"] is True


def test_qlora_parts_can_be_overridden(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["train", "llama-3.1-8b", "--qlora", "--lora-rank", "16", "--lora-targets",
            "q_proj,v_proj", "--optimizer", "adamw", "--checkpointing", "none"]  # fmt: skip
    setup = _json(capsys, argv)["setup"]
    assert setup["lora"] == "rank 16, alpha 16, q_proj,v_proj"
    assert (setup["optimizer"], setup["checkpointing"], setup["precision"]) == (
        "adamw",
        "none",
        "bf16",
    )


def test_checkpoint_quantization_is_the_default_format(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["serve-capacity", "deepseek-ai/DeepSeek-V3", "--gpu", "H200", "--tp", "8"]
    data = _json(capsys, argv)
    assert data["setup"]["weights"] == "fp8-block"
    assert data["notes"][0] == (
        "weights: fp8-block, as the checkpoint stores them (quantization_config quant_method "
        "'fp8'); --weights bf16 for the unquantized model"
    )
    assert data["weights_bytes"] < 80 * GIB and data["kv_cache_tokens"] > 0  # bf16: 156 GiB
    assert _json(capsys, ["params", "deepseek-v3"])["sections"]["weights (fp8-block)"]


def test_fp32_checkpoint_says_bf16_is_usual(capsys: pytest.CaptureFixture[str]) -> None:
    data = _json(capsys, ["infer", "google/gemma-2-9b"])
    assert data["setup"]["weights"] == "fp32"
    assert data["notes"][0] == (
        "the checkpoint is stored in fp32, but nearly everyone loads it in bf16 "
        "(--weights bf16: 17.21 GiB of weights)"
    )


# Models and GPUs as people name them ----------------------------------------------------------
@pytest.mark.parametrize(
    ("name", "base"),
    [
        ("Qwen/Qwen2.5-7B-Instruct", "Qwen/Qwen2.5-7B"),
        ("google/gemma-2-9b-it", "google/gemma-2-9b"),
        ("meta-llama/Llama-2-7b-chat-hf", "meta-llama/Llama-2-7b-hf"),
        ("meta-llama/Llama-3.1-8B-Instruct", "meta-llama/Llama-3.1-8B"),
        ("Llama-3.2-1B-Instruct", "meta-llama/Llama-3.2-1B"),
    ],
)
def test_instruct_variants_resolve_offline(name: str, base: str) -> None:
    entry = find_entry(name)
    assert entry is not None and entry.variant_of == base
    assert resolve(name).n_layers == resolve(base).n_layers


def test_variants_use_their_own_config_values() -> None:
    assert resolve("Qwen/Qwen2.5-7B").max_position_embeddings == 131072
    assert resolve("Qwen/Qwen2.5-7B-Instruct").max_position_embeddings == 32768
    base, instruct = resolve("mixtral-8x22b"), resolve("mistralai/Mixtral-8x22B-Instruct-v0.1")
    assert (base.vocab_size, instruct.vocab_size) == (32000, 32768)


def test_infer_on_the_help_example_model(capsys: pytest.CaptureFixture[str]) -> None:
    data = _json(capsys, ["infer", "Qwen/Qwen2.5-7B-Instruct"])
    assert data["model"] == "Qwen/Qwen2.5-7B-Instruct" and data["peak_bytes"] > 14 * GIB


@pytest.mark.parametrize(
    ("name", "canonical", "mib"),
    [
        ("NVIDIA A100 80GB PCIe", "A100-PCIe-80GB", 81039),
        ("NVIDIA H100 80GB HBM3", "H100-SXM-80GB", 81559),
        ("NVIDIA A10G", "A10G", 22587),
        ("Tesla T4", "T4", 14909),
        ("NVIDIA L40S", "L40S", 45599),
        ("NVIDIA GeForce RTX 4090", "RTX-4090", 24248),
    ],
)
def test_nvidia_smi_names_and_usable_memory(name: str, canonical: str, mib: int) -> None:
    gpu = resolve_gpu(name)
    assert (gpu.name, gpu.memory_bytes) == (canonical, mib * MIB)


def test_every_gpu_memory_figure_has_a_source_or_is_marked() -> None:
    for gpu in list_gpus():
        assert any(s.startswith("usable memory: ") for s in gpu.sources), gpu.name
        marked = any(s.startswith("usable memory: estimate") for s in gpu.sources)
        assert marked == gpu.memory_estimated, gpu.name
    for name in ("T4", "V100-16GB", "A10", "A40", "A6000", "L40", "H20", "H200-NVL", "GB200",
                 "MI325X", "RTX-3090", "RTX-5090", "B200", "MI250X"):  # fmt: skip
        resolve_gpu(name)


# The answer first: rows, notes, setup blocks, names ----------------------------------------
def test_small_rows_fold_unless_all(capsys: pytest.CaptureFixture[str]) -> None:
    _, folded, _ = _run(capsys, ["train", "llama-3.2-1b", "--gpu", "H100"])
    _, every, _ = _run(capsys, ["train", "llama-3.2-1b", "--gpu", "H100", "--all"])
    assert "\n  (2 rows under 0.1%)              33.00 KiB    0.0%\n" in folded
    assert "rsqrt_fp32" not in folded and "    final_norm" in folded
    assert "under 0.1%" not in every and "rsqrt_fp32" in every


def test_decimal_applies_to_notes(capsys: pytest.CaptureFixture[str]) -> None:
    _, out, _ = _run(capsys, ["serve-capacity", "llama-3.1-8b", "--gpu", "L4", "--decimal"])
    assert "note: requested memory = 24.15 GB x 0.9 = 21.74 GB;" in out
    assert "GiB" not in out


def test_setup_blocks_have_no_none_or_rank_zero_fields(capsys: pytest.CaptureFixture[str]) -> None:
    assert "gpu" not in _json(capsys, ["infer", "gpt2"])["setup"]
    _, out, _ = _run(capsys, ["train", "gpt2"])
    assert "None" not in out and "lora" not in out and "qlora" not in out


def test_method_names_describe_the_method(capsys: pytest.CaptureFixture[str]) -> None:
    base = ["train", "gpt2-xl", "--precision", "fp32", "--seq", "1024", "--gpu-memory", "80GB"]
    new = _json(capsys, [*base, "--method", "fp32-adamw-count"])
    old = _json(capsys, [*base, "--method", "seed004"])
    assert new == old and new["method"] == "fp32-adamw-count" and new["max_batch_size"] == 2
    params = _json(capsys, ["params", "llama-2-7b", "--method", "dense-ffn-4e"])
    assert params["method_params"]["total"] == 8_852_344_832
    assert _json(capsys, ["params", "llama-2-7b", "--method", "seed000"]) == params


def test_time_with_lora_skips_the_frozen_weight_gradients(
    capsys: pytest.CaptureFixture[str],
) -> None:
    base = ["time", "llama-3.2-1b", "--steps", "1", "--seq", "2048", "--gpu", "H100"]
    full = _json(capsys, base)
    lora = _json(capsys, [*base, "--lora-rank", "8", "--lora-targets", "q_proj"])
    forward = full["flops_per_step"] // 3
    core = full["breakdown"]["children"][0]["children"][0]["children"][1]["total"]
    adapters = 16 * 2 * 2048 * 8 * (2048 + 2048)  # 16 layers' q_proj: (2048, 2048), r = 8
    # forward + adapters, then input gradients (1x), the attention core (2x), adapters (2x)
    assert lora["flops_per_step"] == 2 * forward + core + 3 * adapters == 10_954_716_741_632
    qlora = _json(capsys, [*base, "--qlora"])
    assert qlora["setup"]["lora"].startswith("rank 64, q_proj,k_proj,v_proj,o_proj,gate_proj")
    assert qlora["hardware_flops"] > qlora["flops"]  # the recipe recomputes


def test_time_prints_three_significant_figures(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["time", "meta-llama/Llama-2-7b-hf", "--tokens", "2T", "--seq", "4096", "--batch",
            "1024", "--gpu", "A100", "--gpus", "2048", "--price-per-gpu-hour", "1.5"]  # fmt: skip
    _, out, _ = _run(capsys, argv)
    # Llama 2 paper, table 2: 184,320 A100-80GB GPU-hours for the 7B model
    assert "\ntime: 3.88 days (335,000 s)\nGPU-hours: 191,000\ncost: $286,000\nverdict: " in out
    assert (format_sig(32732), format_sig(1.2345), format_sig(0.045678)) == (
        "32,700",
        "1.23",
        "0.0457",
    )


# The answer first: verdicts and inverse questions ------------------------------------------
def test_train_verdict_none_and_what_to_try(capsys: pytest.CaptureFixture[str]) -> None:
    _, out, _ = _run(capsys, ["train", "llama-3.1-8b", "--gpu", "H100"])
    lines = out.splitlines()
    assert "largest micro-batch at seq 2048: none" in lines
    assert "longest sequence at batch 1: none" in lines
    assert lines[-1] == (
        "verdict: training step of meta-llama/Llama-3.1-8B (batch 1 x seq 2048): peak 149.58 GiB"
        " per GPU; does not fit on H100-SXM-80GB (79.65 GiB, 79.08 GiB usable): short by 70.49 GiB"
    )
    levers = _json(capsys, ["train", "llama-3.1-8b", "--gpu", "H100"])["what_to_try"]
    flags = [lever["flags"] for lever in levers]
    # fused AdamW: the foreach step temporaries set this peak; checkpointing would not lower it
    assert "--optimizer adamw-fused" in flags and "--checkpointing full" not in flags
    assert flags[0] == "--qlora" and levers[0]["fits"] is True
    assert all(lever["saved_bytes"] > 0 for lever in levers)


def test_advice_lists_only_levers_not_already_on(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["train", "llama-3.1-8b", "--lora-rank", "16", "--precision", "bf16",
            "--checkpointing", "full", "--batch", "4", "--gpu", "T4"]  # fmt: skip
    levers = _json(capsys, argv)["what_to_try"]
    flags = {lever["flags"] for lever in levers}
    assert "--qlora" in flags and "--batch 1" in flags
    assert not flags & {"--checkpointing full", "--precision bf16", "--lora-rank 16"}


def test_infer_answers(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["infer", "meta-llama/Meta-Llama-3-8B", "--gpu", "H100", "--prompt-len", "1000"]
    data = _json(capsys, argv)
    assert data["kv_cache_bytes_per_token"] == 131072  # 32 layers x 2 x 8 heads x 128 x 2 B
    assert data["max_batch_size"] > 1 and data["max_prompt_len"] == 8192 - 128  # the context
    _, out, _ = _run(capsys, argv)
    assert "\nKV cache per token: 128.00 KiB\n" in out
    assert "\ntime to first token: 24 ms; decode: " in out and " tokens/s over the batch" in out
    assert out.splitlines()[-1].startswith(
        "verdict: generate with meta-llama/Meta-Llama-3-8B (batch 1, prompt 1,000, 128 new tokens,"
        " bf16): peak 15.19 GiB, first token 24 ms, "
    )
    assert out.splitlines()[-1].endswith(
        "fits on H100-SXM-80GB (79.65 GiB, 79.12 GiB usable): 63.93 GiB to spare"
    )


def test_infer_longest_prompt_is_memory_bound_when_memory_binds(
    capsys: pytest.CaptureFixture[str],
) -> None:
    data = _json(capsys, ["infer", "llama-3.1-8b", "--gpu", "L4", "--batch", "4"])
    assert 0 < data["max_prompt_len"] < 131072 - 128
    longer = _json(capsys, ["infer", "llama-3.1-8b", "--gpu", "L4", "--batch", "4",
                            "--prompt-len", str(data["max_prompt_len"] + 1)])  # fmt: skip
    assert longer["headroom_bytes"] < 0


def test_serve_capacity_refusal_is_the_verdict(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["serve-capacity", "llama-3.1-8b", "--gpu", "L4"]
    data = _json(capsys, argv)
    assert (data["fits"], data["min_tp"], data["kv_cache_bytes_per_token"]) == (False, 2, 131072)
    assert data["max_model_len_that_fits"] == data["estimated_max_model_len"] > 0
    _, out, _ = _run(capsys, argv)
    assert "vLLM would fail" not in out  # no trailing note: the verdict says it
    assert out.splitlines()[-2] == (
        f"smallest tensor-parallel degree that starts: 2; largest max_model_len that fits at "
        f"tp 1: {data['max_model_len_that_fits']:,}"
    )
    assert out.splitlines()[-1].startswith(
        "verdict: vllm serve meta-llama/Llama-3.1-8B (tp 1, max_model_len 131,072, bf16): vLLM "
        "would refuse to start (KV cache for one max_model_len request); does not fit on L4 "
    )


def test_params_and_time_verdicts(capsys: pytest.CaptureFixture[str]) -> None:
    _, out, _ = _run(capsys, ["params", "llama-3.1-8b"])
    assert out.splitlines()[-1] == (
        "verdict: parameters of meta-llama/Llama-3.1-8B: 8,030,261,248 parameters; its bf16 "
        "weights take 14.96 GiB"
    )
    argv = ["time", "llama-3.1-8b", "--tokens", "15T", "--gpu", "H100", "--gpus", "1024"]
    assert _json(capsys, argv)["verdict"] == (
        "verdict: 1.5e+13 tokens of meta-llama/Llama-3.1-8B on 1024 x H100-SXM-80GB at MFU 0.4: "
        "20 days, 491,000 GPU-hours"
    )
