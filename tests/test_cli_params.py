"""``memplan params`` and ``memplan models`` run in-process: output, JSON contract, bad input."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from cli_helpers import check_sums, cli_json
from memplan.cli import params as cli_params
from memplan.cli.main import main


@pytest.mark.parametrize(
    "model", ["llama-2-7b", "deepseek-v3", "gpt2", "qwen1.5-moe-a2.7b", "falcon-40b"]
)
def test_json_contract(capsys: pytest.CaptureFixture[str], model: str) -> None:
    data = cli_json(capsys, ["params", model, "--json"])
    assert isinstance(data["total_params"], int)
    assert data["breakdown"]["total"] == data["total_params"]
    check_sums(data["breakdown"])
    for section in data["sections"].values():
        check_sums(section)
    assert data["weight_bytes"]["bf16"] == 2 * data["total_params"]


def test_llama2_json_figures(capsys: pytest.CaptureFixture[str]) -> None:
    data = cli_json(capsys, ["params", "meta-llama/Llama-2-7b-hf", "--json"])
    assert data["total_params"] == 6_738_415_616
    assert data["embedding_params"] == 2 * 32000 * 4096
    assert data["non_embedding_params"] == 6_738_415_616 - 262_144_000
    assert data["params_per_layer"] == [202_383_360] * 32
    assert data["buffer_bytes"] == 2 * 64 * 4


def test_human_table(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["params", "llama-3.1-8b"]) == 0
    out = capsys.readouterr().out
    assert "8,030,261,248" in out
    assert "GiB" in out and "bnb-nf4" in out
    assert "14.96 GiB" in out  # bf16 weights: 16,060,522,496 B


def test_decimal_units(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["params", "llama-3.1-8b", "--decimal"]) == 0
    assert "16.06 GB" in capsys.readouterr().out


def test_tied_note(capsys: pytest.CaptureFixture[str]) -> None:
    data = cli_json(capsys, ["params", "gemma-2-2b", "--json"])
    assert data["tied"] is True
    assert any(note.startswith("tied:") for note in data["notes"])


def test_method_seed000(capsys: pytest.CaptureFixture[str]) -> None:
    data = cli_json(capsys, ["params", "llama-2-7b", "--method", "seed000", "--json"])
    assert data["method_params"]["total"] == 8_852_344_832
    assert data["method_params"]["difference"] == 8_852_344_832 - 6_738_415_616
    assert data["total_params"] == 6_738_415_616


def test_weights_section(capsys: pytest.CaptureFixture[str]) -> None:
    data = cli_json(capsys, ["params", "llama-2-7b", "--weights", "gptq", "--json"])
    section = data["sections"]["weights (gptq-int4)"]
    assert section["total"] == data["weight_bytes"]["gptq-int4"]


def test_manual(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["params", "--manual", "--hidden", "4096", "--layers", "32", "--heads", "32"]
    argv += ["--kv-heads", "8", "--vocab", "128256", "--intermediate", "14336", "--json"]
    assert cli_json(capsys, argv)["total_params"] == 8_030_261_248


def test_models_list(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert "meta-llama/Llama-2-7b-hf" in out and "6,738,415,616" in out and "llama2-7b" in out
    data = cli_json(capsys, ["models", "--json"])
    by_id = {row["id"]: row for row in data["models"]}
    assert by_id["openai-community/gpt2"]["total_params"] == 124_439_808
    assert all("error" not in row for row in data["models"])


def _write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "config.json"
    path.write_text(text)
    return str(path)


LLAMA = {
    "model_type": "llama",
    "vocab_size": 100,
    "hidden_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "intermediate_size": 128,
}


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p: "llama-2-7bb", "did you mean meta-llama/Llama-2-7b-hf"),
        (lambda p: str(p / "missing" / "config.json"), "no such file"),
        (lambda p: _write(p, "{not json"), "not valid JSON"),
        (lambda p: _write(p, json.dumps({**LLAMA, "hidden_size": None})), "hidden_size"),
        (lambda p: _write(p, json.dumps({k: v for k, v in LLAMA.items() if k != "vocab_size"})),
         "no 'vocab_size'"),
        (lambda p: _write(p, json.dumps({**LLAMA, "hidden_size": 66})), "not divisible"),
        (lambda p: _write(p, json.dumps({**LLAMA, "num_key_value_heads": 3})), "must divide"),
        (lambda p: _write(p, json.dumps({**LLAMA, "num_hidden_layers": -1})), "positive"),
    ],
)  # fmt: skip
def test_bad_input_one_line_exit_2(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, make: Any, message: str
) -> None:
    assert main(["params", make(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("memplan: error: ") and err.count("\n") == 1
    assert message in err
    assert "Traceback" not in err


def test_unsupported_model_type_without_torch(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cli_params, "_can_build_on_meta", lambda: False)
    path = _write(tmp_path, json.dumps({**LLAMA, "model_type": "mamba"}))
    assert main(["params", path]) == 2
    err = capsys.readouterr().err
    assert "model_type 'mamba' is not supported; supported: llama" in err


def test_bad_method_and_format(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["params", "gpt2", "--method", "seed999"]) == 2
    assert "unknown method" in capsys.readouterr().err
    assert main(["params", "gpt2", "--weights", "int3"]) == 2
    assert "unknown weight format" in capsys.readouterr().err


def test_manual_needs_sizes(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["params", "--manual", "--hidden", "64"]) == 2
    assert "--manual needs --layers, --heads, --vocab" in capsys.readouterr().err


@pytest.mark.trace
def test_unsupported_model_type_falls_back_to_meta_build(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    config = {**LLAMA, "model_type": "phi", "num_key_value_heads": 4, "partial_rotary_factor": 0.5}
    data = cli_json(capsys, ["params", _write(tmp_path, json.dumps(config)), "--json"])
    # phi-2 layout: biased q/k/v/dense, fc1/fc2 with bias, 1 LayerNorm per layer, biased lm_head
    per_layer = 4 * (64 * 64 + 64) + (64 * 128 + 128) + (128 * 64 + 64) + 2 * 64
    assert data["total_params"] == 100 * 64 + 2 * per_layer + 2 * 64 + (64 * 100 + 100)
    assert "meta device" in data["notes"][0]
    check_sums(data["breakdown"])


def test_python_api_returns_the_report_the_cli_prints(capsys: pytest.CaptureFixture[str]) -> None:
    import memplan

    report = memplan.params("llama-2-7b", method="seed001")
    assert report.to_dict() == cli_json(
        capsys, ["params", "llama-2-7b", "--method", "seed001", "--json"]
    )
    by_hand = memplan.params(hidden=4096, layers=32, heads=32, vocab=32000, intermediate=11008)
    assert by_hand.scalars["total_params"] == 6_738_415_616
