"""``memplan plan`` on the command line (issue 10): the ranked table, its JSON, its errors, and
the done-means check: the top plan of Llama-3.1-70B on 64 x H100 (seq 4096, global batch 512)
reproduces through ``memplan train`` and ``memplan time`` with its own flags."""

from __future__ import annotations

import json
from typing import Any

import pytest

from memplan.cli.main import main
from memplan.cli.schema import FieldParser

LLAMA_70B = ["plan", "meta-llama/Llama-3.1-70B", "--gpus", "64", "--gpu", "H100", "--seq",
             "4096", "--global-batch", "512"]  # fmt: skip


def _json(argv: list[str], capsys: pytest.CaptureFixture[str]) -> Any:
    assert main([*argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


@pytest.fixture(scope="module")
def llama_70b() -> Any:
    import contextlib
    import io

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main([*LLAMA_70B, "--tokens", "15e12", "--top", "3", "--json"]) == 0
    return json.loads(out.getvalue())


def test_top_plan_reproduces(llama_70b: Any, capsys: pytest.CaptureFixture[str]) -> None:
    data = llama_70b
    assert data["plans_evaluated"] > 10_000
    assert 0 < data["plans_feasible"] <= data["plans_evaluated"] <= data["plans_considered"]
    removed = data["removed"]
    memory = sum(n for rule, n in removed.items() if rule.startswith("memory"))
    assert data["plans_considered"] == data["plans_evaluated"] + sum(removed.values()) - memory
    assert data["plans_feasible"] == data["plans_evaluated"] - memory
    top = data["plans"][0]
    train = _json(["train", *top["args"]], capsys)
    assert train["peak_bytes"] == top["peak_bytes"]
    assert train["step_seconds"] == top["step_seconds"]
    assert train["mfu"] == top["mfu"]
    assert train["fits"] is True
    assert train["usable_bytes"] - train["peak_bytes"] == top["headroom_bytes"]
    time_ = _json(["time", *top["time_args"], "--tokens", "15e12"], capsys)
    assert time_["step_seconds"] == top["step_seconds"]
    assert time_["seconds"] == top["train_seconds"]


def test_ranked_best_first(llama_70b: Any) -> None:
    steps = [p["step_seconds"] for p in llama_70b["plans"]]
    assert steps == sorted(steps)
    for p in llama_70b["plans"]:
        assert p["headroom_bytes"] >= 0
        assert set(p) >= {"args", "peak_bytes", "step_seconds", "mfu", "limit"}


def test_table(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["plan", "Qwen/Qwen2.5-0.5B", "--gpus", "8", "--gpu", "H100", "--seq", "1024",
            "--global-batch", "64", "--top", "3"]  # fmt: skip
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "plans," in text and "fit" in text
    assert text.count("\n 1  ") == 1 and "\n 3  " in text
    assert "#1 " in text and "removed most:" in text and "memplan train" in text


def test_memory_objective_ranks_by_peak(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["plan", "Qwen/Qwen2.5-0.5B", "--gpus", "8", "--gpu", "H100", "--seq", "1024",
            "--global-batch", "64", "--top", "5", "--objective", "memory"]  # fmt: skip
    peaks = [p["peak_bytes"] for p in _json(argv, capsys)["plans"]]
    assert peaks == sorted(peaks)


def test_only_restricts(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["plan", "Qwen/Qwen2.5-0.5B", "--gpus", "8", "--gpu", "H100", "--seq", "1024",
            "--global-batch", "64", "--top", "50", "--only", "fsdp"]  # fmt: skip
    for p in _json(argv, capsys)["plans"]:
        assert not {"--tp", "--pp", "--cp", "--zero", "--offload"} & set(p["args"])
        assert p["args"][p["args"].index("--checkpointing") + 1] == "none"


def test_reserve_leaves_room(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["plan", "Qwen/Qwen2.5-0.5B", "--gpus", "8", "--gpu", "H100", "--seq", "1024",
            "--global-batch", "64", "--top", "500", "--reserve", "60GiB", "--objective",
            "memory"]  # fmt: skip
    for p in _json(argv, capsys)["plans"]:
        assert p["headroom_bytes"] >= 0


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--gpus", "8", "--seq", "1024", "--global-batch", "64"], "needs a GPU"),
        (["--gpu", "H100", "--seq", "1024", "--global-batch", "64"], "needs a cluster"),
        (["--gpus", "8", "--gpu", "H100", "--seq", "1024"], "needs the batch"),
        (["--gpus", "12", "--gpu", "H100", "--global-batch", "64"], "not a multiple of 8"),
        (
            ["--gpus", "8", "--gpu", "H100", "--global-batch", "64", "--only", "tp,xp"],
            "--only: unknown xp",
        ),
        (
            ["--gpus", "8", "--gpu", "H100", "--global-batch", "64", "--objective", "cost"],
            "needs --price-per-gpu-hour",
        ),
        (
            ["--gpus", "8", "--gpu", "H100", "--global-batch", "64", "--reserve", "90GiB"],
            "more than the GPU",
        ),
        (
            ["--gpus", "8", "--gpu", "H100", "--global-batch", "64", "--precision", "fp7"],
            "memplan train --help",
        ),
    ],
)
def test_bad_input_one_line(
    extra: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["plan", "Qwen/Qwen2.5-0.5B", *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("memplan: error:") and "\n" not in err and message in err


def test_flags_as_data() -> None:
    """The web API reads ``plan``'s flags from its parser (cli/schema.py), like the others."""
    fields = {f["name"]: f for f in FieldParser().fields("plan")}
    assert fields["objective"]["choices"] == ["time", "cost", "memory"]
    assert fields["global-batch"]["exclusive_with"] == ["batch-tokens"]
    assert {"gpus", "nodes", "gpus-per-node", "seq", "top", "only", "max-tp", "reserve",
            "jobs", "gpu"} <= set(fields)  # fmt: skip


def test_jobs_give_the_same_answer(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """``--jobs 2`` spreads the chunks over processes; the answer does not change."""
    from memplan.estimate import plan_search

    monkeypatch.setattr(plan_search, "CHUNK", 40)
    argv = ["plan", "Qwen/Qwen2.5-0.5B", "--gpus", "8", "--gpu", "H100", "--seq", "1024",
            "--global-batch", "64", "--top", "20", "--only", "fsdp,tp,recompute"]  # fmt: skip
    one, two = _json(argv, capsys), _json([*argv, "--jobs", "2"], capsys)
    assert one["plans_evaluated"] > 80
    assert one["plans"] == two["plans"] and one["removed"] == two["removed"]
