"""``--pp`` on serve-capacity and infer: vLLM's layer split, per-stage weights, per-stage KV
blocks and the engine's minimum, per-stage generate memory, the one-line errors.

Expected figures are worked out here from the model's dimensions and vLLM's rules
(``get_pp_indices``, ``get_kv_cache_configs``), not read back from memplan's output."""

from __future__ import annotations

import json

import pytest

from memplan.catalog import resolve
from memplan.catalog.gpus import resolve_gpu
from memplan.cli.main import main
from memplan.estimate.inference import inference_report
from memplan.estimate.serving import ServingSetup, serving_report, stage_weights_bytes
from memplan.formulas import serving as vllm
from memplan.formulas.allocator import cuda_block_bytes
from memplan.specs.inference import InferenceSetup

# Llama-3.1-8B's dimensions (its config.json)
H, V, N_LAYERS, KV_DIM, INTER = 4096, 128_256, 32, 1024, 14_336
LAYER_PARAMS = 2 * H * H + 2 * H * KV_DIM + 3 * H * INTER + 2 * H  # q, o, k, v, MLP, 2 norms


@pytest.mark.parametrize(
    ("n_layers", "pp", "ranges"),
    [  # vLLM's tests/distributed/test_pipeline_partition.py test_uneven_auto_partition
        (2, 2, ((0, 1), (1, 2))),
        (3, 2, ((0, 2), (2, 3))),
        (3, 3, ((0, 1), (1, 2), (2, 3))),
        (4, 3, ((0, 1), (1, 3), (3, 4))),
        (5, 3, ((0, 2), (2, 4), (4, 5))),
        (32, 3, ((0, 11), (11, 22), (22, 32))),  # remainder 2: stages 1 and 0, never the last
        (10, 4, ((0, 2), (2, 5), (5, 8), (8, 10))),  # remainder 2 <= pp - 2: middle stages
    ],
)
def test_layer_split_is_vllms(n_layers: int, pp: int, ranges: tuple) -> None:
    assert vllm.pp_layer_ranges(n_layers, pp) == ranges


def test_explicit_partition_is_vllm_pp_layer_partition() -> None:
    """vLLM's test_custom_layer_partition: "4,6,6,4" over 20 layers."""
    assert vllm.pp_layer_ranges(20, 4, (4, 6, 6, 4)) == ((0, 4), (4, 10), (10, 16), (16, 20))


def test_stage_weights_llama_8b_pp3() -> None:
    """32 layers over 3 stages: 11 + embedding, 11, 10 + final norm + lm_head (untied)."""
    spec = resolve("meta-llama/Llama-3.1-8B")
    stages = vllm.pipeline_stages(spec, 3)
    got = [stage_weights_bytes(spec, "bf16", stage) for stage in stages]
    assert got == [
        2 * (V * H + 11 * LAYER_PARAMS),
        2 * (11 * LAYER_PARAMS),
        2 * (10 * LAYER_PARAMS + H + V * H),
    ]
    assert sum(got) == 2 * (2 * V * H + N_LAYERS * LAYER_PARAMS + H) == 16_060_522_496


def test_tied_embedding_on_first_and_last_stage() -> None:
    """Tied embeddings: vLLM builds ``embed_tokens`` on the first rank and on the last (for
    lm_head), so the two stages together hold the table twice."""
    spec = resolve("google/gemma-3-1b-it")
    assert spec.tie_word_embeddings
    first, last = vllm.pipeline_stages(spec, 2)
    whole = vllm.pipeline_stages(spec, 1)[0]
    table = 2 * spec.vocab_size * spec.hidden_size
    both = stage_weights_bytes(spec, "bf16", first) + stage_weights_bytes(spec, "bf16", last)
    assert both == stage_weights_bytes(spec, "bf16", whole) + table


def test_hybrid_groups_are_projected_per_stage() -> None:
    """Gemma-3-1B: 22 sliding + 4 full layers -> groups of 4 layers (4 full; sliding layers
    dealt ``layers[i::6]`` into 6 groups). Over two stages of 13 layers each group keeps at
    most 2 layers on a stage, so each worker's blocks hold 2 layers' pages, not 4."""
    spec = resolve("google/gemma-3-1b-it")
    full = [i for i in range(26) if (i + 1) % 6 == 0]
    sliding = [i for i in range(26) if (i + 1) % 6]
    groups = [sliding[i::6] for i in range(6)] + [full]
    assert vllm.kv_cache_layout(spec).group_size == 4
    for start, stop in ((0, 13), (13, 26)):
        expected = max(sum(start <= i < stop for i in g) for g in groups)
        assert expected == 2
        assert vllm.stage_group_size(spec, start, stop) == expected
    assert vllm.stage_group_size(spec, 0, 26) == 4


def test_serve_capacity_pp3_engine_keeps_smallest_stage() -> None:
    """Llama-3.1-8B, 3 x L4, max_model_len 8192. Each stage: requested - weights - profile
    peak, over the page (2 x 16 x 8 x 128 x 2 B) and its layers; the engine takes the minimum."""
    spec = resolve("meta-llama/Llama-3.1-8B")
    gpu = resolve_gpu("L4")
    report = serving_report(spec, ServingSetup(pp_degree=3, max_model_len=8192), gpu)
    requested = gpu.memory_bytes * 0.9
    tokens, rows = 2048, 256  # L4 (< 70 GiB): vllm serve's defaults
    page = 2 * 16 * KV_DIM * 2
    table = V * H * 2  # 501 MiB: the allocator rounds it to 502 MiB
    rotary = 131_072 * 128 * 2
    counts = (11, 11, 10)
    weights = [
        2 * (V * H + 11 * LAYER_PARAMS) + cuda_block_bytes(table) - table + rotary,
        2 * (11 * LAYER_PARAMS) + rotary,
        2 * (10 * LAYER_PARAMS + H + V * H) + cuda_block_bytes(table) - table + rotary,
    ]
    profile = [2 * tokens * H * 2 + 3 * tokens * INTER * 2] * 3
    profile[1] += 2 * tokens * H * 2  # later stages keep the received hidden_states, residual
    profile[2] += 2 * tokens * H * 2 + 2 * rows * V * 4  # and the sampler runs on the last
    own = [
        int(int(requested - (w + p)) // page // n)
        for w, p, n in zip(weights, profile, counts, strict=True)
    ]
    engine = min(own)
    s = report.scalars
    assert [e["own_num_gpu_blocks"] for e in s["stages"]] == own
    assert [e["weights_bytes"] for e in s["stages"]] == weights
    assert [e["profile_activation_bytes"] for e in s["stages"]] == profile
    assert s["num_gpu_blocks"] == engine
    assert s["limiting_stage"] == own.index(engine) == 0
    assert s["kv_cache_tokens"] == engine * 16
    assert s["max_concurrency"] == round(engine / (8192 // 16), 4)
    assert [e["kv_cache_bytes"] for e in s["stages"]] == [engine * page * n for n in counts]
    assert s["peak_bytes"] == weights[0] + profile[0] + engine * page * 11
    assert report.setup["pp_layers"] == "11,11,10"


def test_serve_capacity_pp1_unchanged() -> None:
    """--pp 1 is the single-stage report: no per-stage fields."""
    spec = resolve("meta-llama/Llama-3.1-8B")
    gpu = resolve_gpu("L4")
    one = serving_report(spec, ServingSetup(max_model_len=8192), gpu)
    assert "stages" not in one.scalars and "pp" not in one.to_dict()["setup"]


def test_serve_capacity_refusal_names_the_stage(capsys: pytest.CaptureFixture[str]) -> None:
    """A stage that cannot hold one max_model_len request stops vLLM; the verdict says which."""
    flags = "--gpu L4 --pp 2 --gpu-memory-utilization 0.45 --max-model-len 131072 --json"
    code = main(["serve-capacity", "meta-llama/Llama-3.1-8B", *flags.split()])
    assert code == 0
    out = json.loads(capsys.readouterr().out)
    failing = [e for e in out["stages"] if not e["vllm_kv_check"]]
    assert failing and out["limiting_stage"] == failing[0]["stages"][0]
    assert not out["fits"]
    assert f"on stage {out['limiting_stage']}" in out["verdict"]
    assert "x 2" in out["verdict"]  # tp 1 x pp 2 GPUs


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--pp", "33"], "--pp 33 is more pipeline stages than its 32 decoder layers"),
        (["--pp", "0"], "argument --pp: expected a positive integer"),
        (["--pp", "2", "--pp-partition", "16,15"], "sums to 31 layers"),
        (["--pp", "3", "--pp-partition", "16,16"], "names 2 stages but --pp is 3"),
        (["--pp", "2", "--pp-partition", "32,x"], "argument --pp-partition"),
    ],
)
@pytest.mark.parametrize("command", ["serve-capacity", "infer"])
def test_pp_errors_are_one_line(
    command: str, argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    try:
        code = main([command, "meta-llama/Llama-3.1-8B", "--gpu", "L4", *argv])
    except SystemExit as exc:  # argparse's own errors
        code = exc.code
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "error:" in err and message in err, err


def test_infer_pp_stage_memory_llama_8b() -> None:
    """generate over 3 stages: each GPU holds its stage's weights (bf16, 512 B-aligned
    tensors) and its layers' DynamicCache; the first also the rotary buffers; the report's
    peak is the highest stage's."""
    spec = resolve("meta-llama/Llama-3.1-8B")
    setup = InferenceSetup(batch=2, prompt_len=100, gen_len=5, weights="bf16", pp_degree=3)
    report = inference_report(spec, setup)
    stages = report.scalars["stages"]
    weights = [
        2 * (V * H + 11 * LAYER_PARAMS),
        2 * (11 * LAYER_PARAMS),
        2 * (10 * LAYER_PARAMS + H + V * H),
    ]
    assert [e["weights_bytes"] for e in stages] == weights
    end = 100 + 4  # the last generated token is never fed back
    kv_layer = 2 * 2 * end * KV_DIM * 2  # K and V, batch 2, bf16
    assert [e["kv_cache_bytes"] for e in stages] == [11 * kv_layer, 11 * kv_layer, 10 * kv_layer]
    inv_freq = 2 * 512  # inv_freq and original_inv_freq: 64 fp32 each, one 512 B block each
    token = 512  # the next token, (2, 1) int64, on the last stage and fed to the first
    after = [e["phases"]["after_decode"] for e in stages]
    assert after == [
        weights[0] + inv_freq + 11 * kv_layer + token,
        weights[1] + 11 * kv_layer,
        weights[2] + 10 * kv_layer + token,
    ]
    peaks = [e["peak_bytes"] for e in stages]
    assert report.scalars["peak_bytes"] == max(peaks)
    assert report.scalars["peak_stage"] == peaks.index(max(peaks))


def test_infer_pp_text_names_every_stage(capsys: pytest.CaptureFixture[str]) -> None:
    """The text lists each stage and the verdict counts tp x pp GPUs and names the peak stage."""
    argv = "--pp 2 --tp 2 --gpu L4 --batch 2 --prompt-len 256 --gen-len 4"
    assert main(["infer", "meta-llama/Llama-3.1-8B", *argv.split()]) == 0
    out = capsys.readouterr().out
    assert "stage 0: layers 0-15" in out and "stage 1: layers 16-31" in out
    verdict = out.strip().splitlines()[-1]
    assert "L4 x 4 (tp 2, pp 2; stage" in verdict, verdict


def test_web_api_takes_pp_fields(capsys: pytest.CaptureFixture[str]) -> None:
    """The flags reach the web API as fields (cli/schema.py reads the parsers), same JSON."""
    pytest.importorskip("fastapi")
    pytest.importorskip("httpx")
    from fastapi.testclient import TestClient

    from memplan.web import app as web_app

    body = {"model": "llama-3.1-8b", "gpu": "L4", "pp": 3, "pp-partition": "10,11,11"}
    response = TestClient(web_app.create_app()).post("/api/serve-capacity", json=body)
    assert response.status_code == 200, response.text
    argv = "--gpu L4 --pp 3 --pp-partition 10,11,11 --json"
    assert main(["serve-capacity", "llama-3.1-8b", *argv.split()]) == 0
    assert response.content.decode() == capsys.readouterr().out
    assert json.loads(response.content)["setup"]["pp_layers"] == "10,11,11"
