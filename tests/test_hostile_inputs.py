"""Hostile inputs: every bad input gets one line ``memplan: error: ...`` and exit status 2.

Never a traceback, never a silent wrong answer; a setup that does not fit a GPU is an answer
(exit 0), not an error. The corpus of bad config.json files and model folders lives in
``tests/data/hostile/`` (each file's name says what is wrong with it). Everything here runs
in-process through ``memplan.cli.main.main`` and takes milliseconds, except the two
subprocess checks of an install without the trace extra.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

import memplan
from memplan.cli import params as cli_params
from memplan.cli.main import main

HOSTILE = Path(__file__).parent / "data" / "hostile"
BIG = "1" + "0" * 400  # an integer no float can hold


def _run(capsys: pytest.CaptureFixture[str], argv: list[str]) -> tuple[int, str, str]:
    """Exit status, stdout, stderr of ``memplan ARGV``; argparse's exits are statuses too.

    Any other exception propagates and fails the test: that is the traceback a user would see.
    """
    try:
        status = main(argv)
    except SystemExit as exc:
        status = exc.code if isinstance(exc.code, int) else 1
    out, err = capsys.readouterr()
    return status, out, err


def _one_line_error(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    status, _, err = _run(capsys, argv)
    lines = err.strip().splitlines()
    assert status == 2, f"exit {status} for {argv}: {err}"
    assert len(lines) == 1, f"{argv}: expected one line, got:\n{err}"
    assert lines[0].startswith("memplan: error: "), lines[0]
    return lines[0]


def _corpus(name: str) -> str:
    return str(HOSTILE / name)


# The corpus: file or folder -> a phrase its one-line error must contain -------------------
CORPUS_ERRORS = {
    "astronomical_hidden_size.json": "hidden_size = a 401-digit number is beyond any real model",
    "binary_garbage.json": "is not UTF-8 text",
    "bool_layers.json": "num_hidden_layers must be an integer, got True",
    "deepseek_missing_mla.json": "kv_lora_rank is null in config.json",
    "dropout_string.json": "attention_dropout must be a finite number, got 'high'",
    "empty.json": "is not valid JSON (line 1, column 1",
    "falcon_n_ln_string.json": "num_ln_in_parallel_attn must be an integer, got 'two'",
    "float_hidden_size.json": "hidden_size must be an integer, got 64.5",
    "folder_bad_config": "config.json is not valid JSON (line 1, column 5",
    "folder_config_is_dir": "has no config.json",
    "folder_no_config": "has no config.json; point at a model folder or a config",
    "gemma2_softcap_string.json": "attn_logit_softcapping must be a finite number, got 'x'",
    "gpt2_heads_not_dividing.json": "hidden size 70 is not divisible by the number of heads 4",
    "head_dim_zero.json": "head_dim must be positive, got 0",
    "heads_not_dividing_hidden.json": "hidden_size 66 is not divisible by num_attention_heads 4; "
    "set head_dim",
    "huge_layers.json": "1,000,000,000 layers is beyond any real model",
    "huge_vocab.json": "vocab_size = 1,000,000,000,000,000 is beyond any real model",
    "inf_rope_theta.json": "rope_theta must be a positive number, got -inf",
    "infinity_layers.json": "num_hidden_layers must be an integer, got inf",
    "kv_heads_above_heads.json": "the number of KV heads (8) must divide the number of "
    "attention heads (4)",
    "kv_heads_not_dividing_heads.json": "the number of KV heads (3) must divide",
    "latin1.json": "is not UTF-8 text (byte 45)",
    "layer_types_unknown_value.json": "layer_types holds {'x': 1}",
    "layer_types_wrong.json": "layer_types must list one attention type per layer",
    "layer_types_wrong_length.json": "layer_types must list one attention type per layer (2:",
    "list.json": "must hold a JSON object",
    "list_model_type.json": "model_type must be a string",
    "list_vocab.json": "vocab_size must be an integer, got [256]",
    "malformed.json": "is not valid JSON (line 1, column 43",
    "missing_hidden_size.json": "config.json has no 'hidden_size'; add it",
    "missing_layers.json": "config.json has no 'num_hidden_layers'",
    "missing_model_type.json": "config.json has no 'model_type'; add one of: llama,",
    "missing_vocab.json": "config.json has no 'vocab_size'",
    "nan_dropout.json": "attention_dropout must be a finite number, got nan",
    "nan_hidden_size.json": "hidden_size must be an integer, got nan",
    "negative_intermediate.json": "intermediate_size must be positive, got -128",
    "negative_layers.json": "num_hidden_layers must be positive, got -2",
    "negative_max_positions.json": "max_position_embeddings must be positive, got -5",
    "negative_sliding_window.json": "sliding_window must be positive, got -1",
    "neox_rotary_string.json": "rotary_pct must be a fraction in (0, 1], got 'quarter'",
    "nested_bomb.json": "is nested too deeply to be a model config",
    "nested_bomb_top.json": "is nested too deeply to be a model config",
    "null.json": "must hold a JSON object",
    "null_hidden_size.json": "hidden_size is null in config.json",
    "numeric_model_type.json": 'model_type must be a string such as "llama", got 7',
    "phi3_partial_string.json": "partial_rotary_factor must be a fraction in (0, 1]",
    "qwen2moe_dense_layers_string.json": "mlp_only_layers must be a list of layer indices",
    "st_bad_offsets": "tensor 'w' has a malformed header entry",
    "st_bad_shape": "tensor 'w' has a malformed header entry",
    "st_binary_header": "the safetensors header is not valid JSON",
    "st_corrupt_header": "the safetensors header is not valid JSON",
    "st_entry_not_dict": "tensor 'w' has a malformed header entry",
    "st_header_list": "the safetensors header is not a JSON object",
    "st_huge_length": "safetensors header of 9223372036854775808 bytes is not valid",
    "st_index_bad": "model.safetensors.index.json is not valid JSON",
    "st_index_escape": "weight_map must map tensor names to shard file names in the folder",
    "st_index_list": "weight_map must map tensor names to shard file names",
    "st_length_past_eof": "claims 4,096 bytes but the file ends after 8; the file is truncated",
    "st_too_short": "is too short to be a safetensors file",
    "string.json": "must hold a JSON object",
    "string_head_dim.json": "head_dim must be an integer, got '16'",
    "string_hidden_size.json": "hidden_size must be an integer, got '64'",
    "topk_above_experts.json": "num_experts_per_tok (8) exceeds the number of experts (4)",
    "truncated.json": "is not valid JSON (line 1, column 41",
    "whitespace.json": "is not valid JSON (line 3, column 1",
    "zero_experts_mixtral.json": "num_local_experts must be positive, got 0",
    "zero_heads.json": "num_attention_heads must be positive, got 0",
    "zero_hidden_size.json": "hidden_size must be positive, got 0",
    "zero_kv_heads.json": "num_key_value_heads must be positive, got 0",
    "zero_vocab.json": "vocab_size must be positive, got 0",
}

TINY_LLAMA_PARAMS = 106_816
"""valid_tiny_llama.json: embed 256x64 + untied lm_head 256x64 + 2 x (q 64x64, k 64x32,
v 64x32, o 64x64, gated MLP 3 x 64x128, 2 RMSNorms of 64) + final norm 64."""

CORPUS_ANSWERS = {
    # strange but legal: answered, with the exact count
    "valid_tiny_llama.json": TINY_LLAMA_PARAMS,
    "bom.json": TINY_LLAMA_PARAMS,  # a UTF-8 byte-order mark is tolerated
    "rope_parameters_string.json": TINY_LLAMA_PARAMS,  # rope parameters hold no parameters
    "st_huge_shape": TINY_LLAMA_PARAMS,  # the header disagrees: said in a note
    "st_index_missing_shards": TINY_LLAMA_PARAMS,  # shards absent: said in a note
    # hidden 10**12 is absurd but below the 2**40 limit: an answer, and a fast one
    "huge_hidden_size.json": 2 * 256 * 10**12 + 2 * (4 * 10**24 + 3 * 10**24 + 2 * 10**12) + 10**12,
}
CORPUS_ELSEWHERE = {"unknown_model_type.json"}  # tested below (meta-device fallback)


def test_corpus_is_fully_covered() -> None:
    names = {p.name for p in HOSTILE.iterdir()}
    covered = set(CORPUS_ERRORS) | set(CORPUS_ANSWERS) | CORPUS_ELSEWHERE
    assert names == covered, f"untested: {names - covered}; missing: {covered - names}"


@pytest.mark.parametrize("name", sorted(CORPUS_ERRORS))
def test_params_corpus_error(capsys: pytest.CaptureFixture[str], name: str) -> None:
    line = _one_line_error(capsys, ["params", _corpus(name)])
    assert CORPUS_ERRORS[name] in line


@pytest.mark.parametrize("name", sorted(CORPUS_ANSWERS))
def test_params_corpus_answer(capsys: pytest.CaptureFixture[str], name: str) -> None:
    status, out, err = _run(capsys, ["params", _corpus(name), "--json"])
    assert status == 0, err
    assert json.loads(out)["total_params"] == CORPUS_ANSWERS[name]


def test_checkpoint_notes_say_what_disagrees(capsys: pytest.CaptureFixture[str]) -> None:
    _, out, _ = _run(capsys, ["params", _corpus("st_huge_shape")])
    assert "+999,999,999,999,999,999,893,184 vs the config's 106,816" in out
    _, out, _ = _run(capsys, ["params", _corpus("st_index_missing_shards")])
    assert "1 of 1 shards missing" in out


_CONFIG_ERRORS = sorted(name for name in CORPUS_ERRORS if not name.startswith("st_"))
_OTHER_COMMANDS = {
    "train": ["--seq", "64"],
    "infer": ["--prompt-len", "32", "--gen-len", "8", "--gpu", "H100"],
    "serve-capacity": ["--gpu", "H100"],
    "time": ["--gpu", "H100", "--steps", "10", "--seq", "64"],
}


@pytest.mark.parametrize("command", sorted(_OTHER_COMMANDS))
def test_every_command_refuses_bad_configs(
    capsys: pytest.CaptureFixture[str], command: str
) -> None:
    """A bad config fails the same way whichever analytic command reads it."""
    for name in _CONFIG_ERRORS:
        line = _one_line_error(capsys, [command, _corpus(name), *_OTHER_COMMANDS[command]])
        assert CORPUS_ERRORS[name] in line, (command, name, line)


def test_unsupported_model_type_without_meta_build(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cli_params, "_can_build_on_meta", lambda: False)
    line = _one_line_error(capsys, ["params", _corpus("unknown_model_type.json")])
    assert "model_type 'bert' is not supported; supported: llama, mistral" in line
    line = _one_line_error(capsys, ["train", _corpus("unknown_model_type.json")])
    assert "model_type 'bert' is not supported" in line


# Names, paths ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("argv", "phrase"),
    [
        (["params", "llama-2-7bb"], "did you mean meta-llama/Llama-2-7b-hf"),
        (["params", "meta-llama/Llama-2-7b"], "did you mean meta-llama/Llama-2-7b-hf"),
        (["params", "gpt3"], "did you mean openai-community/gpt2"),
        (["params", "   "], "no model given"),
        (["params"], "give a MODEL"),
        (["params", "/nonexistent/config.json"], "no such file or folder"),
        (["params", "./nope"], "no such file or folder: './nope'"),
        (["train", "qwen25-7b"], "did you mean Qwen/Qwen2.5-7B"),
        (["infer", "no-such-model", "--gpu", "H100"], "unknown model 'no-such-model'"),
        (["train", "gpt2", "--seq", "512", "--gpu", "H1000"], "unknown GPU 'H1000': did you mean"),
        (["infer", "gpt2", "--gpu", "H1OO"], "did you mean H100?"),
        (["serve-capacity", "gpt2", "--gpu", ""], "unknown GPU ''"),
        (["models", "--family", "nope"], "no catalog model of family 'nope'; families:"),
    ],
)
def test_names_and_paths(capsys: pytest.CaptureFixture[str], argv: list[str], phrase: str) -> None:
    assert phrase in _one_line_error(capsys, argv)


# Flags ----------------------------------------------------------------------------------------
def _manual(hidden: str = "64", layers: str = "2") -> list[str]:
    """``memplan params --manual`` with a tiny Llama-style model."""
    sizes = ["--hidden", hidden, "--layers", layers, "--heads", "4", "--vocab", "10"]
    return ["params", "--manual", *sizes, "--intermediate", "8"]


def _ids(value: object) -> str | None:
    return " ".join(value)[:60] if isinstance(value, list) else None


MANUAL = _manual()

FLAG_ERRORS = [
    # params
    (_manual(hidden="0"), "--hidden must be a positive integer, got 0"),
    ([*MANUAL, "--kv-heads", "3"], "the number of KV heads (3) must divide"),
    ([*MANUAL, "--head-dim", "-1"], "head_dim must be a positive integer, got -1"),
    ([*MANUAL, "--experts", "4", "--top-k", "8"], "manual: num_experts_per_tok (8) exceeds"),
    ([*MANUAL, "--experts", "-4"], "--experts must be 0 or a positive integer, got -4"),
    ([*MANUAL, "--experts", "2", "--shared-experts", "-1"], "--shared-experts must be 0"),
    ([*MANUAL, "--max-positions", "0"], "max_position_embeddings must be a positive integer"),
    (_manual(layers="1000000000"), "1,000,000,000 layers is beyond any real model"),
    (_manual(hidden=BIG), "hidden_size = a 401-digit number is beyond"),
    (["params", "gpt2", "--method", "nope"], "unknown method 'nope'; choose one of: exact,"),
    (["params", "gpt2", "--weights", "int3"], "unknown weight format 'int3'"),
    (["params", "gpt2", "--manual"], "--manual needs --hidden, --layers, --heads, --vocab"),
    # train
    (["train", "gpt2", "--batch", "0"], "argument --batch: expected a positive integer, got '0'"),
    (["train", "gpt2", "--seq", "0"], "argument --seq: expected a positive integer, got '0'"),
    (["train", "gpt2", "--seq", "2000"], "exceeds openai-community/gpt2's max_position_embeddings"),
    (["train", "gpt2", "--seq", "512", "--batch", BIG], "--batch: expected at most 2**40"),
    (["train", "gpt2", "--allow-long-seq", "--seq", BIG], "--seq: expected at most 2**40"),
    (["train", "gpt2", "--precision", "fp64"], "unknown precision 'fp64': choose one of fp32"),
    (["train", "gpt2", "--optimizer", "adamx"], "unknown optimizer 'adamx'"),
    (["train", "gpt2", "--attention", "flashy"], "unknown attention 'flashy'"),
    (["train", "gpt2", "--checkpointing", "some"], "unknown checkpointing 'some'"),
    (["train", "gpt2", "--target", "tpu"], "unknown target 'tpu': choose one of cuda, cpu"),
    (["train", "gpt2", "--dropout", "1.5"], "dropout must be in [0, 1), got 1.5"),
    (["train", "gpt2", "--dropout", "nan"], "dropout must be in [0, 1), got nan"),
    (["train", "llama-3.2-1b", "--lora-rank", "-1"], "expected an integer >= 0, got '-1'"),
    (["train", "llama-3.2-1b", "--lora-rank", "100000"], "choose a rank <= 512"),
    (["train", "llama-3.2-1b", "--lora-rank", BIG], "--lora-rank: expected at most 2**40"),
    (["train", "llama-3.2-1b", "--freeze-layers", BIG], "--freeze-layers: expected at most"),
    (
        ["train", "llama-3.2-1b", "--lora-rank", "8", "--lora-targets", "nope"],
        "unknown LoRA target nope for meta-llama/Llama-3.2-1B: its linear modules are q_proj, "
        "k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj (or all-linear, attention)",
    ),
    (["train", "llama-3.2-1b", "--lora-rank", "8", "--lora-alpha", "nan"], "--lora-alpha must be"),
    (["train", "llama-3.2-1b", "--lora-rank", "8", "--lora-alpha", "-1"], "--lora-alpha must be"),
    (["train", "llama-3.2-1b", "--qlora", "--lora-rank", "0"], "QLoRA needs adapters"),
    (["train", "llama-3.2-1b", "--freeze-layers", "1000"], "exceeds the model's 16 layers"),
    (["train", "llama-3.2-1b", "--method", "nope"], "unknown method 'nope': choose one of exact"),
    (["train", "gemma-2-2b", "--seq", "512", "--attention", "flash"], "choose --attention eager"),
    # GPU flags (every command shares them)
    (["train", "llama-3.2-1b", "--gpu-memory", "0GiB"], "the size '0GiB' must be positive"),
    (["train", "llama-3.2-1b", "--gpu-memory", "nan"], "cannot read the size 'nan'"),
    (["train", "llama-3.2-1b", "--gpu-memory", "inf"], "cannot read the size 'inf'"),
    (["train", "llama-3.2-1b", "--gpu-memory", "1e400GB"], "is beyond any real memory"),
    (["train", "llama-3.2-1b", "--gpu-memory", "80XB"], "cannot read the size '80XB'"),
    (["train", "llama-3.2-1b", "--gpu", "H100", "--tflops", "nan"], "--tflops must be a positive"),
    (["train", "llama-3.2-1b", "--gpu", "H100", "--tflops", "inf"], "--tflops must be a positive"),
    (["train", "llama-3.2-1b", "--gpu", "H100", "--tflops", "-1"], "--tflops must be a positive"),
    (["infer", "gpt2", "--gpu", "H100", "--bandwidth", "-1"], "cannot read the bandwidth '-1'"),
    (["infer", "gpt2", "--gpu", "H100", "--bandwidth", "nan"], "cannot read the bandwidth"),
    (["infer", "gpt2", "--gpu", "H100", "--bandwidth", "1e400"], "cannot read the bandwidth"),
    (["train", "llama-3.2-1b", "--tflops", "100"], "give --gpu-memory SIZE too"),
    # infer
    (["infer", "gpt2", "--gen-len", "-1"], "gen-len must be a non-negative integer, got -1"),
    (["infer", "gpt2", "--prompt-len", "1000000000"], "is beyond openai-community/gpt2's 1024"),
    (["infer", "llama-3.2-1b", "--gen-len", BIG], "gen-len must be at most 2**40"),
    (["infer", "gpt2", "--weights", "int3"], "unknown weight format 'int3'"),
    (["infer", "gpt2", "--kv-dtype", "int3"], "unknown KV cache dtype 'int3'"),
    (["infer", "gpt2", "--tp", "5"], "attention heads (12) must be divisible by the tensor-par"),
    (["infer", "llama-3.2-1b", "--tp", "3"], "(32) must be divisible by the tensor-parallel deg"),
    (["infer", "gpt2", "--compute-efficiency", "0"], "compute efficiency must be in (0, 1]"),
    (["infer", "gpt2", "--compute-efficiency", "nan"], "compute efficiency must be in (0, 1]"),
    (["infer", "gpt2", "--bandwidth-efficiency", "inf"], "bandwidth efficiency must be in (0, 1]"),
    (["infer", "gpt2", "--gpu", "H100", "--compute-efficiency", "1.5"], "in (0, 1], got 1.5"),
    (["infer", "gpt2", "--cuda-context", "-1"], "cannot read the size '-1'"),
    # serve-capacity
    (["serve-capacity", "gpt2"], "serve-capacity needs a GPU: give --gpu NAME"),
    *(
        (["serve-capacity", "gpt2", "--gpu", "H100", "--gpu-memory-utilization", u], "in (0, 1]")
        for u in ("0", "1.5", "-1", "nan", "inf")
    ),
    (["serve-capacity", "gpt2", "--gpu", "H100", "--tp", "5"], "must be divisible by the tensor"),
    (["serve-capacity", "gpt2", "--gpu", "H100", "--max-model-len", "2048"], "beyond openai-"),
    (["serve-capacity", "gpt2", "--gpu", "H100", "--kv-cache-dtype", "int3"], "KV cache dtype"),
    (["serve-capacity", "gpt2", "--gpu", "H100", "--dtype", "int3"], "unknown weight format"),
    (["serve-capacity", "gpt2", "--gpu", "H100", "--weights", "int3"], "unknown weight format"),
    (["serve-capacity", "gpt2", "--gpu", "H100", "--non-torch-memory", "-1"], "cannot read"),
    # time
    (["time", "gpt2"], "time needs a GPU"),
    (["time", "gpt2", "--gpu", "H100"], "give the run length: --steps N or --tokens N"),
    (["time", "gpt2", "--gpu", "H100", "--steps", "10", "--mfu", "0"], "MFU must be in (0, 1]"),
    (["time", "gpt2", "--gpu", "H100", "--steps", "10", "--mfu", "nan"], "MFU must be in (0, 1]"),
    (
        ["time", "gpt2", "--gpu", "H100", "--steps", "10", "--seq", "64", "--dtype", "fp64"],
        "compute dtype",
    ),
    (
        ["time", "gpt2", "--gpu", "V100", "--steps", "10", "--seq", "64", "--dtype", "fp8"],
        "no peak fp8 TFLOP/s",
    ),
    (["time", "gpt2", "--gpu-memory", "80GiB", "--steps", "10", "--seq", "64"], "give --tflops"),
    (["time", "gpt2", "--gpu", "H100", "--steps", "10", "--seq", "4096"], "--allow-long-seq"),
    *(
        (
            [
                "time",
                "gpt2",
                "--gpu",
                "H100",
                "--steps",
                "10",
                "--seq",
                "64",
                "--price-per-gpu-hour",
                p,
            ],
            "price",
        )
        for p in ("-1", "nan", "inf")
    ),
    # compare without the trace shares train's vocabulary
    (["compare", "llama-3.2-1b", "--no-trace", "--batch", "0"], "expected a positive integer"),
    (["compare", "nope", "--no-trace"], "unknown model 'nope'"),
]


@pytest.mark.parametrize(("argv", "phrase"), FLAG_ERRORS, ids=_ids)
def test_bad_flag_values(capsys: pytest.CaptureFixture[str], argv: list[str], phrase: str) -> None:
    line = _one_line_error(capsys, argv)
    assert phrase in line, line
    assert len(line) < 400 or BIG not in argv, "an absurd number is not echoed in full"


USAGE_ERRORS = [
    ["train", "gpt2", "--batch", "abc"],
    ["train", "gpt2", "--seq", "1.5"],
    ["train", "gpt2", "--gpu-memory", "-5GiB"],  # argparse reads -5GiB as a flag
    ["infer", "gpt2", "--batch", "0"],
    ["infer", "gpt2", "--prompt-len", "-3"],
    ["infer", "gpt2", "--tp", "0"],
    ["infer", "llama-3.2-1b", "--batch", BIG],
    ["time", "gpt2", "--gpu", "H100", "--steps", "10", "--batch", BIG],
    ["serve-capacity", "gpt2", "--gpu", "H100", "--block-size", "0"],
    ["serve-capacity", "gpt2", "--gpu", "H100", "--block-size", BIG],
    ["serve-capacity", "gpt2", "--gpu", "H100", "--max-num-seqs", BIG],
    ["time", "gpt2", "--gpu", "H100", "--steps", "0"],
    ["time", "gpt2", "--gpu", "H100", "--steps", "nan"],
    ["time", "gpt2", "--gpu", "H100", "--steps", "inf"],
    ["time", "gpt2", "--gpu", "H100", "--tokens", "1e400"],
    ["time", "gpt2", "--gpu", "H100", "--steps", "10", "--gpus", "0"],
    ["time", "gpt2", "--gpu", "H100", "--steps", "10", "--gpus", BIG],
    ["time", "gpt2", "--gpu", "H100", "--steps", "1", "--tokens", "5"],
    ["train", "gpt2", "--tflops", "fast"],
    ["params", "gpt2", "--mlp", "wide"],
    ["nonsense-command"],
]


@pytest.mark.parametrize("argv", USAGE_ERRORS, ids=_ids)
def test_argparse_usage_errors(capsys: pytest.CaptureFixture[str], argv: list[str]) -> None:
    """Flags of the wrong type: one ``memplan: error:`` line naming the flag (no usage dump),
    exit 2, like every other input error."""
    status, out, err = _run(capsys, argv)
    assert status == 2
    assert out == ""
    assert len(err.strip().splitlines()) == 1, err
    assert err.startswith("memplan: error: "), err
    assert "usage:" not in err and "Traceback" not in err


# Absurd but answerable: quick answers, not errors ------------------------------------------
LONG_ON_H100 = ["--allow-long-seq", "--gpu", "H100"]
ANSWERS = [
    (["train", "llama-3.2-1b", "--gpu-memory", "1B"], "does not fit on custom (1 B, 0 B usable)"),
    (
        ["train", "gpt2", "--batch", "1000000000", "--seq", "1000000000", *LONG_ON_H100],
        "largest micro-batch at seq 1000000000: none\nlongest sequence at batch 1000000000: none",
    ),
    (["train", "llama-3.1-405b", "--gpu", "RTX-4090"], "does not fit on RTX-4090"),
    (["serve-capacity", "gpt2", "--gpu-memory", "1B"], "vLLM would refuse to start"),
    (["serve-capacity", "llama-3.1-405b", "--gpu", "L4"], "vLLM would refuse to start"),
    (["serve-capacity", "gpt2", "--gpu", "H100", "--non-torch-memory", "1e15B"], "refuse"),
    (["infer", "llama-3.2-1b", "--batch", "1000000000000", "--gpu", "H100"], "kv_cache"),
    (["time", "gpt2", "--gpu", "H100", "--steps", "1e18", "--seq", "1024"], "days"),
    (["time", "gpt2", "--gpu", "H100", "--steps", "9", "--seq", "4096", "--allow-long-seq"], "s"),
    (["params", "deepseek-v3", "--weights", "gptq-int4"], "gptq-int4"),
    (["compare", "gpt2", "--seq", "512", "--no-trace", "--methods"], "fp32-adamw-count"),
]


# The time limits below bound this process's CPU time, not the wall clock: they catch work
# that grows with an absurd size (a loop over a billion tokens), and other processes on the
# machine (parallel test workers, other jobs) cannot make them fail.


@pytest.mark.parametrize(("argv", "phrase"), ANSWERS, ids=_ids)
def test_absurd_setups_are_answered_quickly(
    capsys: pytest.CaptureFixture[str], argv: list[str], phrase: str
) -> None:
    start = time.process_time()
    status, out, err = _run(capsys, argv)
    elapsed = time.process_time() - start
    assert status == 0, err
    assert phrase in out
    assert elapsed < 1.0, f"{argv} took {elapsed:.2f} s"
    assert "nan" not in out.lower().replace("nano", "")


def test_refusals_of_huge_sizes_are_quick(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (
        ["params", _corpus("huge_layers.json")],
        _manual(layers="1000000000"),
        ["train", _corpus("astronomical_hidden_size.json")],
        ["serve-capacity", "gpt2", "--gpu", "H100", "--tp", BIG[:13]],
    ):
        start = time.process_time()
        _one_line_error(capsys, argv)
        assert time.process_time() - start < 1.0, argv


def test_deepest_accepted_model_answers_within_a_second(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """MAX_LAYERS layers: the per-layer breakdowns and the fit search stay fast."""
    from memplan.specs.model import MAX_LAYERS

    config = json.loads((HOSTILE / "valid_tiny_llama.json").read_text())
    config["num_hidden_layers"] = MAX_LAYERS
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    start = time.process_time()
    status, _, err = _run(capsys, ["train", str(path), "--seq", "64", "--gpu", "H100"])
    assert status == 0, err
    assert time.process_time() - start < 1.5
    config["num_hidden_layers"] = MAX_LAYERS + 1
    path.write_text(json.dumps(config))
    assert "2,049 layers is beyond any real model" in _one_line_error(capsys, ["params", str(path)])


# Without the trace extra ------------------------------------------------------------------
def _without_extras(*argv: str) -> subprocess.CompletedProcess[str]:
    """``python -S -m memplan ARGV`` with only memplan's source on the path: no site-packages,
    so no torch or transformers, as after ``pip install memplan`` (the core has no
    dependencies)."""
    src = str(Path(memplan.__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": src, "MEMPLAN_OFFLINE": "1"}
    return subprocess.run(
        [sys.executable, "-S", "-m", "memplan", *argv],
        capture_output=True,
        text=True,
        env=env,
        check=False,
        timeout=60,
    )


def test_trace_without_the_extra_says_how_to_install_it() -> None:
    for argv in (("trace", "gpt2", "--train"), ("compare", "gpt2", "--seq", "512")):
        result = _without_extras(*argv)
        assert result.returncode == 2, result.stderr
        assert result.stderr.strip() == (
            "memplan: error: the trace engine needs torch and transformers: "
            f"pip install -e '.[trace]' (in {Path(memplan.__file__).resolve().parents[2]})"
        )


def test_core_commands_work_without_the_extra() -> None:
    result = _without_extras("params", _corpus("unknown_model_type.json"))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert "model_type 'bert' is not supported" in lines[0]
    assert "with the trace extra installed" in lines[0]
    result = _without_extras("train", _corpus("valid_tiny_llama.json"), "--seq", "64", "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["peak_bytes"] > 0


# The trace command's own checks (need torch; each fails before any model is built) ---------
TRACE_ERRORS = [
    (["trace", "nope-model"], "unknown model 'nope-model'"),
    (["trace", _corpus("malformed.json")], "malformed.json"),
    (["trace", _corpus("folder_no_config")], "has no config.json"),
    (["trace", _corpus("missing_model_type.json")], "config.json has no 'model_type'"),
    (["trace", "gpt2", "--seq", "0"], "argument --seq: expected a positive integer, got '0'"),
    (["trace", "gpt2", "--batch", "0", "--seq", "16"], "--batch: expected a positive integer"),
    (["trace", "gpt2", "--seq", "4096"], "longer than the model's maximum of 1024"),
    (["trace", "gpt2", "--seq", "16", "--precision", "fp64"], "--precision 'fp64' is not one"),
    (["trace", "gpt2", "--seq", "16", "--optimizer", "adamx"], "--optimizer 'adamx' is not"),
    (["trace", "gpt2", "--seq", "16", "--dropout", "2"], "dropout must be in [0, 1)"),
    (["trace", "gpt2", "--seq", "16", "--gpu", "H1OO"], "unknown GPU 'H1OO'"),
    (["trace", "gpt2", "--infer", "--prompt-len", "0"], "--prompt-len: expected a positive"),
    (["trace", "gpt2", "--infer", "--weights", "int3"], "int3 is analytic only"),
    (["trace", "gemma-2-2b", "--seq", "16", "--attention", "flash"], "use --attention eager"),
]


@pytest.mark.trace
@pytest.mark.parametrize(("argv", "phrase"), TRACE_ERRORS, ids=_ids)
def test_trace_bad_input(capsys: pytest.CaptureFixture[str], argv: list[str], phrase: str) -> None:
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    assert phrase in _one_line_error(capsys, argv)


@pytest.mark.trace
def test_trace_refuses_bad_configs_like_the_analytic_commands(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The trace validates a config as every other command does, before transformers sees it."""
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    for name in _CONFIG_ERRORS:
        line = _one_line_error(capsys, ["trace", _corpus(name), "--seq", "16"])
        assert CORPUS_ERRORS[name] in line, (name, line)
