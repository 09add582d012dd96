"""``memplan compare`` in-process: methods beside exact, and the trace beside the analytic."""

from __future__ import annotations

import json

import pytest

from memplan.cli.main import main


def test_methods_without_the_trace(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["compare", "gpt2-xl", "--precision", "fp32", "--seq", "1024", "--methods",
            "--no-trace"]  # fmt: skip
    assert main(argv) == 0
    out = capsys.readouterr().out
    for method in (
        "exact",
        "korthikanti",
        "fp32-adamw-count",
        "per-node-saved",
        "16-bytes-per-param",
    ):
        assert method in out
    assert "its formula says 2, memplan exact says 5" in out


def test_methods_json(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["compare", "gpt2-xl", "--precision", "fp32", "--seq", "1024", "--methods",
            "--no-trace", "--json"]  # fmt: skip
    assert main(argv) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["seed004_question"]["seed004_max_batch"] == 2
    assert data["seed004_question"]["exact_max_batch"] == 5
    assert {m["method"] for m in data["methods"]} == {
        "korthikanti",
        "fp32-adamw-count",
        "per-node-saved",
        "16-bytes-per-param",
    }


@pytest.mark.trace
def test_side_by_side_with_the_trace(
    capsys: pytest.CaptureFixture[str], tmp_path: pytest.TempPathFactory
) -> None:
    pytest.importorskip("torch")
    config = dict(model_type="llama", vocab_size=512, hidden_size=64, intermediate_size=160,
                  num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                  max_position_embeddings=512, tie_word_embeddings=False)  # fmt: skip
    path = tmp_path / "config.json"  # type: ignore[operator]
    path.write_text(json.dumps(config))
    assert main(["compare", str(path), "--batch", "2", "--seq", "64", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    rows = {row["line"]: row for row in data["rows"]}
    assert rows["peak"]["trace"] == rows["peak"]["analytic"]
    assert all(row["trace"] == row["analytic"] for row in data["rows"]), data["rows"]
    assert main(["compare", str(path), "--batch", "2", "--seq", "64"]) == 0
    assert "identical to the byte" in capsys.readouterr().out
