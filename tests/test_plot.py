"""``--plot FILE`` and ``memplan sweep --plot``: the files (format, size) and the values drawn.

The values are read back from the matplotlib figure (bar heights, line points) and compared
with the CLI's JSON for the same setup. The cold-start test checks that the commands import
neither matplotlib nor the web stack unless asked.
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import textwrap
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest

from cli_helpers import cli_json
from memplan.cli.main import main
from memplan.units import GIB

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def png_size(path: Path) -> tuple[int, int]:
    """Width and height from the PNG's IHDR chunk (PNG spec, section 11.2.2)."""
    head = path.read_bytes()[:24]
    assert head[:8] == PNG_MAGIC and head[12:16] == b"IHDR"
    return struct.unpack(">II", head[16:24])


def bar_heights(ax: Any) -> list[float]:
    """The heights of every bar segment drawn in ``ax``, in drawing order."""
    return [patch.get_height() for patch in ax.patches]


def test_cold_start_imports_no_plotting_and_no_web() -> None:
    """Without --plot the commands import only the standard library and memplan (the CLI's
    start-up does not change with the plot and web extras installed)."""
    script = textwrap.dedent(
        """
        import contextlib, io, sys
        from memplan.cli.main import main
        with contextlib.redirect_stdout(io.StringIO()):
            assert main(["train", "llama-3.2-1b", "--gpu", "H100"]) == 0
            assert main(["infer", "qwen2.5-7b", "--gpu", "L40S"]) == 0
            assert main(["serve-capacity", "phi-3-mini", "--gpu", "H100"]) == 0
            assert main(["time", "gpt2-xl", "--gpu", "A100", "--steps", "10", "--seq", "1024"]) == 0
            assert main(["sweep", "gpt2", "--over", "batch=1..4", "--seq", "512"]) == 0
        outside = sorted(
            {name.split(".")[0] for name in sys.modules}
            - set(sys.stdlib_module_names) - {"memplan", "__main__", "_distutils_hack"}
        )
        ours = sorted(m for m in sys.modules if m.startswith(("memplan.web", "memplan.cli.plot")))
        print(" ".join(outside + ours))
        """
    )
    env = {**os.environ, "MEMPLAN_OFFLINE": "1"}
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "", f"imported: {result.stdout.strip()}"


def test_plot_needs_matplotlib_says_so(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import fails as if not installed
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    assert main(["train", "gpt2", "--seq", "512", "--plot", str(tmp_path / "a.png")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("memplan: error: --plot needs matplotlib") and err.count("\n") == 1


def test_plot_file_names(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert main(["train", "gpt2", "--seq", "512", "--plot", str(tmp_path / "a.pdf")]) == 2
    assert "ending in .png or .svg" in capsys.readouterr().err
    assert main(["train", "gpt2", "--seq", "512", "--plot", str(tmp_path / "no" / "a.png")]) == 2
    assert "does not exist" in capsys.readouterr().err


@pytest.fixture
def mpl() -> None:
    """The tests below draw: they need the plot extra."""
    pytest.importorskip("matplotlib")


def test_train_plot_png_draws_the_breakdown_and_both_timelines(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, mpl: None
) -> None:
    from memplan.cli.plot import draw_report

    argv = ["train", "llama-3.2-1b", "--gpu", "H100", "--batch", "2"]
    path = tmp_path / "train.png"
    assert main([*argv, "--plot", str(path)]) == 0
    capsys.readouterr()
    width, height = png_size(path)
    assert (width, height) == (1210, 528)  # 11 x 4.8 inches at 110 dpi
    assert path.stat().st_size > 20_000
    report = cli_json(capsys, [*argv, "--json"])
    fig, data = draw_report(report)
    bars, phases = fig.axes[0], fig.axes[1]
    categories = report["breakdown"]["children"]
    assert data["bars"] == [("", [(c["key"], c["total"]) for c in categories])]
    drawn = bar_heights(bars)
    assert drawn == pytest.approx([c["total"] / GIB for c in categories if c["total"]], rel=1e-12)
    assert sum(drawn) == pytest.approx(report["peak_bytes"] / GIB, rel=1e-12)
    assert bars.lines[0].get_ydata()[0] == pytest.approx(report["usable_bytes"] / GIB)
    # the phase chart: 6 steady-state bars then 6 first-step bars, stacked by category
    totals = [0.0] * 12
    for patch in phases.patches:
        totals[round(patch.get_x() + patch.get_width() / 2)] += patch.get_height()
    expected = [p["bytes"] for p in report["phases"]] + [p["bytes"] for p in report["first_step_phases"]]  # fmt: skip
    assert totals == pytest.approx([b / GIB for b in expected], rel=1e-12)
    assert max(p["bytes"] for p in report["first_step_phases"]) == report["first_step_peak_bytes"]


def test_plots_of_every_command_as_svg(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, mpl: None
) -> None:
    for argv in (
        ["infer", "qwen2.5-7b", "--gpu", "L40S"],
        ["serve-capacity", "phi-3-mini", "--gpu", "H100"],
        ["time", "gpt2-xl", "--gpu", "A100", "--steps", "10", "--seq", "1024"],
    ):
        path = tmp_path / f"{argv[0]}.svg"
        assert main([*argv, "--plot", str(path)]) == 0, argv
        capsys.readouterr()
        root = ET.parse(path).getroot()
        assert root.tag == "{http://www.w3.org/2000/svg}svg"
        assert 5_000 < path.stat().st_size < 2_000_000
        report = cli_json(capsys, [*argv, "--json"])
        text = path.read_text()
        for child in report["breakdown"]["children"]:  # the legend names every category drawn
            assert child["key"] in text or not child["total"], (argv, child["key"])


def test_sweep_plot_draws_the_sweeps_points(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, mpl: None
) -> None:
    from memplan.cli.plot import draw_sweep

    argv = ["sweep", "llama-3.2-1b", "--over", "seq=512..65536", "--gpu", "A100-80GB"]
    path = tmp_path / "sweep.png"
    assert main([*argv, "--plot", str(path)]) == 0
    assert "stops fitting" in capsys.readouterr().out
    assert png_size(path) == (660, 528) and path.stat().st_size > 15_000
    sweep = cli_json(capsys, [*argv, "--json"])
    fig, data = draw_sweep(sweep)
    ax = fig.axes[0]
    curve = ax.lines[0]
    assert list(curve.get_xdata()) == [p["value"] for p in sweep["points"]]
    assert list(curve.get_ydata()) == pytest.approx(
        [p["peak_bytes"] / GIB for p in sweep["points"]]
    )
    red = ax.collections[0].get_offsets()
    assert [x for x, _ in red] == [p["value"] for p in sweep["points"] if not p["fits"]]
    marked = [line for line in ax.lines if line.get_linestyle() == ":"]
    assert marked[0].get_xdata()[0] == sweep["last_fit"] == 16384
    assert json.dumps(data["series"][0][1]) == json.dumps(
        [p["peak_bytes"] for p in sweep["points"]]
    )


def test_per_rank_reports_get_one_column_per_rank(capsys: pytest.CaptureFixture[str]) -> None:
    """The distributed reports' shape (a ``ranks`` list, each with its breakdown and phases):
    the plot data has one bar and one timeline per rank; built here from two real reports."""
    from memplan.cli.plot import report_plot_data

    small = cli_json(capsys, ["train", "gpt2", "--seq", "512", "--json"])
    large = cli_json(capsys, ["train", "gpt2", "--seq", "1024", "--json"])
    data = {**small, "ranks": [{"name": "stage 0", **small}, {"name": "stage 1", **large}]}
    plot = report_plot_data(data)
    assert [label for label, _ in plot["bars"]] == ["stage 0", "stage 1"]
    assert sum(v for _, v in plot["bars"][1][1]) == large["peak_bytes"]
    assert [name for name, _ in plot["phases"]] == ["stage 0 steady state", "stage 1 steady state"]
