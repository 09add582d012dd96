"""``memplan trace`` in-process: output, JSON contract, bad input, missing extra."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from memplan.cli.main import main

CONFIGS = json.loads((Path(__file__).parent / "data" / "trace_tiny_configs.json").read_text())


@pytest.fixture()
def llama_config(tmp_path: Path) -> Path:
    path = tmp_path / "config.json"
    path.write_text(json.dumps(CONFIGS["llama"]))
    return path


@pytest.mark.trace
def test_trace_train_prints_seed_000_table(
    llama_config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("torch")
    status = main(["trace", str(llama_config), "--train", "--batch", "2", "--seq", "32"])
    out = capsys.readouterr().out
    assert status == 0
    for label in (
        "before forward",
        "before backward",
        "after backward",
        "after clearing gradients",
    ):
        assert label in out
    assert "optimizer_states" in out
    assert "activations_end_of_forward" not in out  # JSON only: too long for a terminal


@pytest.mark.trace
def test_trace_json_contract(llama_config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("torch")
    status = main(["trace", str(llama_config), "--batch", "2", "--seq", "32", "--json"])
    data = json.loads(capsys.readouterr().out)
    assert status == 0
    assert data["kind"] == "trace/training"
    assert data["breakdown"]["key"] == "peak"
    assert data["breakdown"]["total"] == data["peak_bytes"]
    assert [p["name"] for p in data["phases"][:6]] == [
        "after_load",
        "end_of_forward",
        "peak_backward",
        "after_backward",
        "optimizer_step",
        "after_zero_grad",
    ]
    for key in ("peak_phase", "first_step_peak_bytes", "reserved_bytes", "flops"):
        assert key in data
    assert "saved_by_node" in data["sections"]


@pytest.mark.trace
def test_trace_infer(llama_config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("torch")
    argv = ["trace", str(llama_config), "--infer", "--prompt-len", "16", "--gen-len", "2", "--json"]
    status = main(argv)
    data = json.loads(capsys.readouterr().out)
    assert status == 0
    assert data["kind"] == "trace/inference"
    assert data["kv_cache_bytes"] == 2 * 2 * (1 * 2 * 17 * 16 * 2)


@pytest.mark.trace
@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--seq", "4096"], "longer than the model's maximum"),
        (["--seq", "32", "--lora-rank", "4", "--lora-targets", "query_key_value"], "not modules"),
        (["--optimizer", "adamw-9bit"], "--optimizer"),
        (["--seq", "32", "--gpu", "Voodoo3"], "unknown GPU 'Voodoo3'"),
        (["--seq", "32", "--gpu", "MI300X"], "MI300X is not a CUDA GPU"),
    ],
)
def test_trace_bad_input_is_one_line(
    llama_config: Path, capsys: pytest.CaptureFixture[str], extra: list[str], message: str
) -> None:
    pytest.importorskip("torch")
    status = main(["trace", str(llama_config), *extra])
    err = capsys.readouterr().err
    assert status == 2
    assert message in err
    assert err.count("\n") == 1 and "Traceback" not in err


def test_trace_without_torch_says_how_to_install(
    llama_config: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import builtins

    real_import = builtins.__import__

    def no_torch(name: str, *args: object, **kwargs: object) -> object:
        if name == "torch" or name.startswith("torch."):
            raise ImportError("No module named 'torch'")
        return real_import(name, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(builtins, "__import__", no_torch)
    status = main(["trace", str(llama_config)])
    err = capsys.readouterr().err
    assert status == 2
    assert "pip install -e '.[trace]' (in " in err  # from a checkout: the editable install
