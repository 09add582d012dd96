"""The first ten minutes (issue 12), the points its first pass left: the FP8 405B and LLaMA-65B
in the catalog, "more GPUs" in the advice, the fp32-checkpoint note everywhere a default follows
it, one fit answer in ``infer``, and a GPU without a figure for the setup's dtype.

Each test runs the CLI in-process and checks the exact line or JSON field a user sees; the
quantities are computed here from the configs' sizes.
"""

from __future__ import annotations

import dataclasses

import pytest

from cli_helpers import cli_json_of as _json
from cli_helpers import cli_run as _run
from memplan.catalog import catalog_config, find_entry, resolve
from memplan.catalog.gpus import resolve_gpu
from memplan.estimate.dist_report import worst_peak_bytes
from memplan.estimate.fit import training_usable_bytes
from memplan.estimate.serving_weights import stage_weights_bytes
from memplan.formulas import serving as vllm
from memplan.formulas.params import total_params
from memplan.formulas.weights import kept_linear_count, linear_layers, weights_total_bytes
from memplan.specs.parallel import ParallelPlan, Sharding
from memplan.specs.training import TrainingSetup
from memplan.units import format_bytes

FP8_405B = "meta-llama/Llama-3.1-405B-Instruct-FP8"


# Llama-3.1-405B-FP8: the checkpoint's format, its kept modules and its scales -------------
def test_fp8_405b_config_is_the_published_one() -> None:
    entry = find_entry("meta-llama/Meta-Llama-3.1-405B-Instruct-FP8")  # the old id
    assert entry is not None and entry.id == FP8_405B
    assert entry.variant_of == "meta-llama/Llama-3.1-405B-FP8"
    quant = catalog_config(entry)["quantization_config"]
    assert quant["quant_method"] == "fbgemm_fp8" and quant["activation_scale_ub"] == 1200.0
    kept = quant["modules_to_not_convert"]
    # the first ten entries as the published copy lists them (sgl-project/ome fixture)
    assert kept[:10] == [
        *(
            f"model.layers.{i}.mlp.{p}"
            for i in (0, 125)
            for p in ("down_proj", "gate_proj", "up_proj")
        ),
        *(f"model.layers.0.self_attn.{p}" for p in ("k_proj", "o_proj", "q_proj", "v_proj")),
    ]
    spec, base = resolve(FP8_405B), resolve("meta-llama/Llama-3.1-405B-Instruct")
    assert total_params(spec) == total_params(base)  # fp8 stores the same parameters
    assert spec.hf_config is not None and spec.hf_config["eos_token_id"] == [128001, 128008, 128009]


def test_fp8_405b_weights_count_the_kept_layers_and_the_row_scales(
    capsys: pytest.CaptureFixture[str],
) -> None:
    spec = resolve(FP8_405B)
    h, f, n_layers = spec.hidden_size, spec.intermediate_size, spec.n_layers
    converted = n_layers - 2  # the MLPs of every layer but the first and the last
    fp8 = converted * 3 * h * f  # gate, up, down: one byte per weight
    scales = converted * (f + f + h) * 4  # a float32 weight_scale per output row
    upper_bounds = converted * 3 * 4  # FbgemmFp8Linear's float32 input_scale_ub
    rest = total_params(spec) - converted * 3 * h * f  # attention, kept MLPs, embeddings: bf16
    expected = fp8 + scales + upper_bounds + 2 * rest
    data = _json(capsys, ["params", FP8_405B])
    assert data["weight_bytes"]["fp8-rowwise"] == expected
    assert data["notes"][-1] == (
        "weights: fp8-rowwise, as the checkpoint stores them (quantization_config quant_method "
        "'fbgemm_fp8'); --weights bf16 for the unquantized model"
    )
    tree = data["sections"]["weights (fp8-rowwise)"]
    assert [c["key"] for c in tree["children"][0]["children"]] == list(
        ("gate_proj", "up_proj", "down_proj")
    )
    kept = 2 * 7 + converted * 4  # layers 0 and 125 whole, self_attn's four elsewhere
    assert tree["children"][1]["source"].endswith(
        f"; {kept:,} linear layers the checkpoint's modules_to_not_convert names"
    )
    # the modules_to_not_convert apply to the checkpoint's own format only
    assert data["weight_bytes"]["fp8-block"] < expected


@pytest.mark.parametrize("pp", [2, 3])
def test_fp8_405b_pipeline_stages_keep_their_own_layers(pp: int) -> None:
    """With --pp, each stage packs only its own converted MLPs: layer 0 (first stage) and
    layer 125 (last) stay bf16 whole, and the stages add up to the whole checkpoint."""
    spec = resolve(FP8_405B)
    stages = vllm.pipeline_stages(spec, pp)
    got = [stage_weights_bytes(spec, "fp8-rowwise", stage) for stage in stages]
    assert sum(got) == weights_total_bytes(spec, "fp8-rowwise")
    h, f = spec.hidden_size, spec.intermediate_size
    first = stages[0]
    converted = len(first.layers) - 1  # its MLPs but layer 0's
    bf16 = stage_weights_bytes(spec, "bf16", first)
    assert got[0] == bf16 - converted * 3 * h * f * 2 + converted * (
        3 * h * f + (f + f + h) * 4 + 3 * 4
    )


def test_modules_to_not_convert_match_at_module_boundaries() -> None:
    spec = resolve(FP8_405B)
    assert spec.hf_config is not None
    config = dict(spec.hf_config)
    config["quantization_config"] = {"quant_method": "fbgemm_fp8", "modules_to_not_convert": [
        "model.layers.1", "model.layers.2.mlp", "up_proj"
    ]}  # fmt: skip
    changed = dataclasses.replace(spec, hf_config=config)
    count = {lin.key: kept_linear_count(changed, "fp8-rowwise", lin) for lin in linear_layers(spec)}
    # "model.layers.1" is layer 1 only (not 10-19, 100-125); "up_proj" a suffix of every layer's
    assert count == {"q_proj": 1, "k_proj": 1, "v_proj": 1, "o_proj": 1,
                     "gate_proj": 2, "up_proj": 126, "down_proj": 2}  # fmt: skip
    assert all(kept_linear_count(changed, "bnb-nf4", lin) == 0 for lin in linear_layers(spec))


def test_fp8_checkpoints_run_infer_with_a_gpu(capsys: pytest.CaptureFixture[str]) -> None:
    """Before: ``unknown compute dtype 'fp8-block'`` (and 'fp8-rowwise') with any --gpu."""
    data = _json(capsys, ["infer", FP8_405B, "--gpu", "H200", "--tp", "8"])
    assert data["setup"]["weights"] == "fp8-rowwise" and data["ttft_s"] > 0
    data = _json(capsys, ["infer", "deepseek-ai/DeepSeek-V3", "--gpu", "H200", "--tp", "8"])
    assert data["setup"]["weights"] == "fp8-block" and data["ttft_s"] > 0


def test_fp8_405b_serves_on_one_node_where_bf16_needs_two(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """FBGEMM GenAI's README (pytorch/FBGEMM, fbgemm_gpu/experimental/gen_ai): "for the 405 B
    model, FP8 enables the inference on a single node", against bf16 "on two nodes"."""
    argv = ["serve-capacity", FP8_405B, "--gpu", "H100", "--tp", "8", "--max-model-len", "8192"]
    fp8 = _json(capsys, argv)
    assert fp8["setup"]["weights"] == "fp8-rowwise" and fp8["fits"] is True and fp8["min_tp"] == 8
    bf16 = _json(capsys, [*argv, "--weights", "bf16"])
    assert bf16["fits"] is False and bf16["min_tp"] == 16


# LLaMA-65B, the QLoRA paper's model ---------------------------------------------------------
def test_llama_65b_is_in_the_catalog_and_qlora_fits_48_gb(
    capsys: pytest.CaptureFixture[str],
) -> None:
    spec = resolve("llama-65b")
    assert spec.name == "huggyllama/llama-65b" and spec.max_position_embeddings == 2048
    h, f, n_layers, vocab = 8192, 22016, 80, 32000
    per_layer = 4 * h * h + 3 * h * f + 2 * h  # q, k, v, o; gate, up, down; two RMSNorms
    assert total_params(spec) == 2 * vocab * h + n_layers * per_layer + h == 65_285_660_672
    # QLoRA (Dettmers et al. 2023): "finetune a 65B parameter model on a single 48GB GPU"
    data = _json(capsys, ["train", "llama-65b", "--qlora", "--gpu", "A6000"])
    assert data["fits"] is True and data["gpu"] == "RTX-A6000"


# More GPUs in the advice ------------------------------------------------------------------
def _fsdp(n: int) -> ParallelPlan:
    return ParallelPlan(nodes=max(1, n // 8), gpus_per_node=min(n, 8), sharding=Sharding.FSDP_FULL)


def test_more_gpus_is_the_smallest_power_of_two_that_fits(
    capsys: pytest.CaptureFixture[str],
) -> None:
    argv = ["train", "llama-3.1-70b", "--gpu", "H100"]
    single = _json(capsys, argv)
    lever = single["what_to_try"][-1]
    spec, setup = resolve("llama-3.1-70b"), TrainingSetup(batch=1, seq=2048)
    usable = training_usable_bytes(resolve_gpu("H100"))
    n = lever["gpus"]
    assert lever["flags"] == f"--gpus {n} --fsdp full" and lever["lever"] == "more GPUs"
    assert n & (n - 1) == 0 and worst_peak_bytes(spec, setup, _fsdp(n // 2)) > usable
    # the same figure the plan path prints for those flags
    plan = _json(capsys, [*argv, "--gpus", str(n), "--fsdp", "full"])
    assert lever["peak_bytes"] == plan["peak_bytes"] <= usable
    assert lever["saved_bytes"] == single["peak_bytes"] - plan["peak_bytes"]
    _, out, _ = _run(capsys, argv)
    line = next(x for x in out.splitlines() if x.lstrip().startswith("--gpus"))
    assert line.endswith(
        f"  -{format_bytes(lever['saved_bytes'])} -> peak {format_bytes(plan['peak_bytes'])} "
        f"(fits): more GPUs: FSDP full sharding over {n} GPUs, per-GPU peak"
    )


def test_more_gpus_only_when_it_helps(capsys: pytest.CaptureFixture[str]) -> None:
    """405B at seq 2048 without checkpointing: the activations alone exceed an H100 however
    many GPUs shard the states, so no GPU count is proposed."""
    levers = _json(capsys, ["train", "llama-3.1-405b", "--gpu", "H100"])["what_to_try"]
    assert all(lever["gpus"] == 1 for lever in levers)
    spec, setup = resolve("llama-3.1-405b"), TrainingSetup(batch=1, seq=2048)
    assert worst_peak_bytes(spec, setup, _fsdp(1024)) > training_usable_bytes(resolve_gpu("H100"))


# fp32 checkpoints: one line saying bf16 is usual ----------------------------------------------
@pytest.mark.parametrize("name", ["google/gemma-2-2b-it", "google/gemma-2-9b", "gemma-2-27b-it"])
def test_fp32_checkpoint_note_on_params_and_serve_capacity(
    capsys: pytest.CaptureFixture[str], name: str
) -> None:
    spec = resolve(name)
    assert spec.dtype == "float32"
    half = format_bytes(2 * total_params(spec))
    notes = _json(capsys, ["params", name])["notes"]
    assert notes[-1] == (
        "the checkpoint is stored in fp32, but nearly everyone loads it in bf16 "
        f"(--weights bf16: {half} of weights)"
    )
    data = _json(capsys, ["serve-capacity", name, "--gpu", "H100"])
    assert data["setup"]["weights"] == "bf16"
    assert data["notes"][0] == (
        "the checkpoint is stored in fp32; --dtype auto loads it in bf16, as nearly everyone "
        "does (vLLM downcasts a float32 config; --dtype fp32 keeps the stored width)"
    )
    assert _json(capsys, ["params", name, "--weights", "bf16"])["notes"][-1] != notes[-1]


# infer: the verdict is the one fit answer -------------------------------------------------------
def test_infer_says_does_not_fit_once(capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = _run(capsys, ["infer", "llama-3.1-70b", "--gpu", "A100-80GB"])
    assert status == 0
    lines = out.splitlines()
    fit_lines = [x for x in lines if any(w in x for w in ("not fit", "needed", "short by"))]
    assert fit_lines == [lines[-1]] and lines[-1].startswith("verdict: ")
    assert "does not fit on A100-SXM-80GB" in lines[-1]


def test_serve_capacity_says_when_nothing_is_left_for_the_cache(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Llama-3.1-8B's bf16 weights alone exceed 0.9 of a T4: vLLM fails with "No available
    memory for the cache blocks", not with the one-request KV check."""
    argv = ["serve-capacity", "llama-3.1-8b", "--gpu", "T4"]
    data = _json(capsys, argv)
    assert data["available_kv_cache_bytes"] <= 0 and data["kv_cache_tokens"] == 0
    _, out, _ = _run(capsys, argv)
    assert out.splitlines()[-1].startswith(
        "verdict: vllm serve meta-llama/Llama-3.1-8B (tp 1, max_model_len 131,072, bf16): vLLM "
        "would refuse to start (no memory left for KV cache blocks); does not fit on T4 "
    )


# A GPU without a peak for the setup's dtype ---------------------------------------------------
@pytest.mark.parametrize(
    ("argv", "dtype", "gpu", "known"),
    [
        (["--gpu", "GB200", "--weights", "fp32"], "fp32", "GB200", "bf16, fp16, fp8, int8, tf32"),
        (["--gpu", "T4"], "bf16", "T4", "fp16, fp32, int8"),
        (["--gpu", "GB200", "--weights", "fp32", "--tp", "2"], "fp32", "GB200", "bf16, fp16, fp8, int8, tf32"),
    ],
)  # fmt: skip
def test_infer_without_a_peak_for_the_dtype_answers_the_memory(
    capsys: pytest.CaptureFixture[str], argv: list[str], dtype: str, gpu: str, known: str
) -> None:
    """Before: ``memplan: error: no peak fp32 TFLOP/s known for GB200`` and no answer at all."""
    data = _json(capsys, ["infer", "llama-3.1-8b", *argv])
    assert "ttft_s" not in data and isinstance(data["fits"], bool) and data["max_batch_size"] >= 0
    assert data["notes"][-1] == (
        f"time not estimated: no peak {dtype} TFLOP/s known for {gpu} (known: {known}); "
        "--weights with one of those, or --tflops, to estimate it"
    )
    status, out, err = _run(capsys, ["infer", "llama-3.1-8b", *argv])
    assert status == 0 and err == "" and out.splitlines()[-1].startswith("verdict: generate with")


@pytest.mark.parametrize(
    "argv",
    [
        ["train", "llama-3.1-8b", "--gpu", "GB200", "--precision", "fp32"],
        ["train", "llama-3.1-8b", "--gpu", "GB200", "--precision", "fp32", "--gpus", "8", "--fsdp", "full"],
        ["serve-capacity", "llama-3.1-8b", "--gpu", "GB200", "--dtype", "fp32"],
        ["time", "llama-3.1-8b", "--gpu", "GB200", "--precision", "fp32", "--tokens", "1e9"],
    ],
)  # fmt: skip
def test_gb200_fp32_setups_answer(capsys: pytest.CaptureFixture[str], argv: list[str]) -> None:
    status, out, err = _run(capsys, argv)
    assert status == 0 and err == "" and out.splitlines()[-1].startswith("verdict: ")


def test_time_with_a_dtype_the_gpu_lacks_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    status, out, err = _run(capsys, ["time", "llama-3.1-8b", "--gpu", "GB200", "--dtype", "fp32",
                                     "--tokens", "1e9"])  # fmt: skip
    assert (
        status == 2
        and out == ""
        and err
        == (
            "memplan: error: no peak fp32 TFLOP/s known for GB200 (known: bf16, fp16, fp8, int8, "
            "tf32): pick another dtype or give --tflops\n"
        )
    )


def test_a_manual_model_has_no_checkpoint_to_speak_of(capsys: pytest.CaptureFixture[str]) -> None:
    """A model given by --manual has no stored dtype: no "the checkpoint is stored in fp32"."""
    argv = ["params", "--manual", "--hidden", "64", "--layers", "2", "--heads", "4",
            "--vocab", "128", "--intermediate", "256"]  # fmt: skip
    assert not any("checkpoint" in note for note in _json(capsys, argv)["notes"])


# The --help examples, as they print -----------------------------------------------------------
def test_compare_methods_table_keeps_its_columns(capsys: pytest.CaptureFixture[str]) -> None:
    """``compare --methods``: the bytes column lines up whatever the method names' lengths."""
    argv = ["compare", "gpt2-xl", "--precision", "fp32", "--seq", "1024", "--methods", "--no-trace"]
    status, out, _ = _run(capsys, argv)
    table = out.split("textbook methods beside exact\n")[1].split("\n\n")[0].splitlines()
    names = ["exact", "korthikanti", "fp32-adamw-count", "per-node-saved", "16-bytes-per-param"]
    assert status == 0 and [line.split()[0] for line in table] == names
    ends = {line.index(" GiB") for line in table}
    assert len(ends) == 1
