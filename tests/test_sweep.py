"""``memplan sweep``: each point is the job's own report, and the table says where it stops
fitting. (No matplotlib needed here; the plots are in test_plot.py.)"""

from __future__ import annotations

import pytest

from cli_helpers import cli_json
from memplan.cli.main import main
from memplan.cli.sweep import MAX_POINTS, parse_range


def test_ranges() -> None:
    assert parse_range("batch", "1..64") == ([1, 2, 4, 8, 16, 32, 64], "doubling")
    assert parse_range("seq", "512..3000") == ([512, 1024, 2048, 3000], "doubling")
    assert parse_range("batch", "2..8:3") == ([2, 5, 8], "linear")
    values, spacing = parse_range("gpu-memory-utilization", "0.5..0.95:0.05")
    assert spacing == "linear" and len(values) == 10
    assert values[0] == 0.5 and values[3] == 0.65 and values[-1] == 0.95
    assert parse_range("batch", "3,1,2") == ([3, 1, 2], "list")
    assert len(parse_range("batch", f"1..{MAX_POINTS}:1")[0]) == MAX_POINTS


@pytest.mark.parametrize(
    ("text", "phrase"),
    [
        ("1..257:1", "257 points, at most 256"),
        ("64..1", "must run upwards"),
        ("0.5..0.9", "give a step for decimals"),
        ("1..8:0", "step must be positive"),
        ("one..8", "'one' is not a number"),
        (",".join(["1"] * 300), "300 points, at most 256"),
    ],
)
def test_bad_ranges_get_one_line(
    capsys: pytest.CaptureFixture[str], text: str, phrase: str
) -> None:
    assert main(["sweep", "gpt2", "--over", f"batch={text}", "--seq", "512"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("memplan: error: ") and "\n" not in err and phrase in err, err


def test_a_batch_sweep_is_the_train_reports(capsys: pytest.CaptureFixture[str]) -> None:
    flags = ["--seq", "4096", "--gpu", "A100-40GB"]
    sweep = cli_json(capsys, ["sweep", "llama-3.2-1b", "--over", "batch=1..16", *flags, "--json"])
    assert sweep["job"] == "train" and sweep["over"] == "batch"
    assert [p["value"] for p in sweep["points"]] == [1, 2, 4, 8, 16]
    for point in sweep["points"]:
        single = cli_json(capsys, ["train", "llama-3.2-1b", *flags, "--batch", str(point["value"]), "--json"])  # fmt: skip
        assert point["peak_bytes"] == single["peak_bytes"]
        assert point["fits"] == single["fits"]
        assert point["headroom_bytes"] == single["headroom_bytes"]
    fits = [p["fits"] for p in sweep["points"]]
    assert True in fits and False in fits  # the case crosses the GPU's limit
    last = max(p["value"] for p in sweep["points"] if p["fits"])
    first_no = min(p["value"] for p in sweep["points"] if not p["fits"])
    assert (sweep["last_fit"], sweep["first_no_fit"]) == (last, first_no)
    exact = sweep["exact_limit"]
    assert exact["scalar"] == "max_batch_size"
    assert last <= exact["value"] < first_no
    assert sweep["usable_bytes"] == sweep["points"][0]["usable_bytes"]
    assert sweep["metrics"] == ["peak_bytes"]


def test_the_table_marks_where_it_stops_fitting(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["sweep", "llama-3.2-1b", "--over", "seq=512..131072", "--gpu", "A100-80GB"]) == 0
    out = capsys.readouterr().out
    single = cli_json(capsys, ["train", "llama-3.2-1b", "--gpu", "A100-80GB", "--json"])
    assert "fits up to seq = 16,384; stops fitting at seq = 32,768" in out
    assert f"(exact limit: max_seq_len = {single['max_seq_len']:,})" in out
    assert 16384 <= single["max_seq_len"] < 32768
    assert out.count(" NO ") == 3 and out.count(" yes ") == 6


def test_settings_the_job_refuses_are_rows_not_a_failure(
    capsys: pytest.CaptureFixture[str],
) -> None:
    sweep = cli_json(capsys, ["sweep", "gpt2", "--over", "seq=256..4096", "--gpu-memory", "8GiB", "--json"])  # fmt: skip
    errors = [p for p in sweep["points"] if "error" in p]
    assert [p["value"] for p in errors] == [2048, 4096]
    assert "max_position_embeddings (1024)" in errors[0]["error"]
    assert sweep["last_fit"] == 1024 and sweep["first_no_fit"] is None


def test_gpus_sweep_runs_the_time_job(capsys: pytest.CaptureFixture[str]) -> None:
    flags = ["--steps", "1000", "--batch", "512", "--seq", "1024", "--gpu", "A100", "--price-per-gpu-hour", "2"]  # fmt: skip
    sweep = cli_json(capsys, ["sweep", "gpt2-xl", "--over", "gpus=8..64", *flags, "--json"])
    assert sweep["job"] == "time" and sweep["metrics"] == ["seconds", "cost_usd"]
    single = cli_json(capsys, ["time", "gpt2-xl", *flags, "--gpus", "16", "--json"])
    assert sweep["points"][1]["seconds"] == single["seconds"]
    assert sweep["points"][0]["seconds"] == 2 * single["seconds"]  # 8 GPUs take twice as long


def test_serving_sweep_over_a_decimal_flag(capsys: pytest.CaptureFixture[str]) -> None:
    over = "gpu-memory-utilization=0.5..0.9:0.2"
    sweep = cli_json(capsys, ["sweep", "phi-3-mini", "--job", "serve-capacity", "--over", over, "--gpu", "H100", "--json"])  # fmt: skip
    single = cli_json(capsys, ["serve-capacity", "phi-3-mini", "--gpu", "H100", "--gpu-memory-utilization", "0.7", "--json"])  # fmt: skip
    assert [p["value"] for p in sweep["points"]] == [0.5, 0.7, 0.9]
    assert sweep["points"][1]["kv_cache_tokens"] == single["kv_cache_tokens"]
    assert sweep["points"][1]["max_concurrency"] == single["max_concurrency"]


def test_a_flag_the_job_lacks(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["sweep", "gpt2", "--job", "time", "--over", "prompt-len=1..4"]) == 2
    assert "memplan time has no flag --prompt-len" in capsys.readouterr().err
    assert main(["sweep", "gpt2", "--seq", "512"]) == 2
    assert "sweep needs --over" in capsys.readouterr().err


def test_a_prompt_sweep_reports_the_longest_prompt(capsys: pytest.CaptureFixture[str]) -> None:
    flags = ["--gpu", "L4", "--batch", "8"]
    sweep = cli_json(capsys, ["sweep", "qwen2.5-7b", "--job", "infer", "--over", "prompt-len=4096..32768", *flags, "--json"])  # fmt: skip
    single = cli_json(capsys, ["infer", "qwen2.5-7b", *flags, "--json"])
    assert sweep["exact_limit"] == {"scalar": "max_prompt_len", "value": single["max_prompt_len"]}
    assert sweep["last_fit"] <= single["max_prompt_len"] < sweep["first_no_fit"]  # it crosses
