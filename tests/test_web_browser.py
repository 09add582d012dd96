"""The web page in a real headless Chromium, driven by Playwright, as a person would use it.

The tests start ``memplan serve`` on a free local port, open the page in Debian's ``chromium``
(``/usr/bin/chromium``; Playwright's own browser download cannot work offline, so only its
driver is used, through ``executable_path``) with a fresh profile, and check what the page
shows against the CLI's JSON for the same setup. ``make test`` installs chromium when it is
missing. Screenshots go to a temporary folder, or to ``$MEMPLAN_SCREENSHOTS`` (``make
screenshots`` copies the README's picture there, ``docs/img/memplan-serve.png``).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cli_helpers import cli_json
from memplan.units import GIB

pytestmark = pytest.mark.browser

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
VIEWPORT = {"width": 1400, "height": 1250}
IDLE = "window.memplan && window.memplan.idle && window.memplan.idle()"
TIMEOUT_MS = 30_000


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    """``memplan serve`` in its own process, stopped after the module's tests."""
    pytest.importorskip("fastapi")
    pytest.importorskip("uvicorn")
    port = _free_port()
    env = {**os.environ, "MEMPLAN_OFFLINE": "1"}
    process = subprocess.Popen(
        [sys.executable, "-m", "memplan", "serve", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(url + "/api/schema", timeout=5) as response:
                    if response.status == 200:
                        break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"memplan serve did not start: {process.stderr}") from None
                time.sleep(0.2)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A headless Chromium with a fresh profile (one per module: a launch takes seconds)."""
    sync_api = pytest.importorskip("playwright.sync_api")
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"missing dependency: chromium at {CHROMIUM} (apt-get install -y chromium)")
    playwright = sync_api.sync_playwright().start()
    try:
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path_factory.mktemp("chromium-profile")),
            executable_path=CHROMIUM,
            headless=True,
            args=CHROMIUM_FLAGS,
            viewport=VIEWPORT,
            accept_downloads=True,
        )
        context.set_default_timeout(TIMEOUT_MS)
        yield context
        context.close()
    finally:
        playwright.stop()


@pytest.fixture(scope="module")
def shots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where the screenshots go (pytest keeps the last runs' temporary folders)."""
    return tmp_path_factory.mktemp("screenshots")


def open_page(browser: Any, url: str) -> Any:
    page = browser.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.memplan_errors = errors
    page.goto(url)
    page.wait_for_function(IDLE)
    return page


def settle(page: Any) -> None:
    """Wait until the page has sent its requests and drawn the answers."""
    page.wait_for_timeout(250)  # the form waits 200 ms for more typing before it asks
    page.wait_for_function(IDLE)
    assert page.memplan_errors == []


def chart(page: Any, name: str) -> list[dict[str, Any]]:
    """The traces plotly drew in one chart: name, x and y of each."""
    return page.evaluate(
        f"""Array.from(document.getElementById('{name}').data || []).map(t => ({{
            name: t.name, x: Array.from(Array.isArray(t.x[0]) ? t.x[1] : t.x),
            y: Array.from(t.y) }}))"""
    )


def peak_shown(page: Any) -> int:
    return int(page.get_attribute("#peak", "data-bytes"))


def test_the_page_shows_the_clis_numbers_in_every_chart(
    browser: Any, server: str, shots: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    setup = ["--gpu", "H100-SXM"]
    page = open_page(browser, f"{server}/?job=train&model=meta-llama/Llama-3.2-1B&gpu=H100-SXM")
    report = cli_json(capsys, ["train", "meta-llama/Llama-3.2-1B", *setup, "--json"])
    assert peak_shown(page) == report["peak_bytes"]
    headroom = report["headroom_bytes"] / GIB
    assert page.inner_text("#fit") == f"fits on H100-SXM-80GB with {headroom:.2f} GiB to spare"
    assert report["limit"] in page.inner_text("#verdict")
    # 1. the peak by category, the usable memory as a line
    bars = chart(page, "chart-breakdown")
    categories = report["breakdown"]["children"]
    assert [t["name"] for t in bars] == [c["key"] for c in categories]
    assert [t["y"][0] for t in bars] == pytest.approx([c["total"] / GIB for c in categories])
    line = page.evaluate("document.getElementById('chart-breakdown').layout.shapes[0].y0")
    assert line == pytest.approx(report["usable_bytes"] / GIB)
    # 2. the phases, steady state and first step, stacked by category
    phases = chart(page, "chart-phases")
    totals = [sum(t["y"][i] for t in phases) for i in range(12)]
    expected = [p["bytes"] for p in report["phases"] + report["first_step_phases"]]
    assert totals == pytest.approx([b / GIB for b in expected])
    # 3. the peak against batch and against sequence length: the sweeps' points
    for index, over in ((0, "batch=1..64"), (1, "seq=256..131072")):
        sweep = cli_json(capsys, ["sweep", "meta-llama/Llama-3.2-1B", "--over", over, *setup, "--json"])  # fmt: skip
        good = [p for p in sweep["points"] if "error" not in p]
        (curve,) = chart(page, f"chart-sweep-{index}")
        assert curve["x"] == [p["value"] for p in good]
        assert curve["y"] == pytest.approx([p["peak_bytes"] / GIB for p in good])
    assert "largest that fits: 8 (exact: 9)" in page.inner_text("#chart-sweep-0")
    page.screenshot(path=str(shots / "memplan-serve.png"))
    readme = os.environ.get("MEMPLAN_SCREENSHOTS")  # make screenshots: the README's picture
    if readme:
        shutil.copyfile(shots / "memplan-serve.png", Path(readme) / "memplan-serve.png")
    page.close()


def test_pick_a_model_and_a_gpu_change_the_batch_share_the_link(
    browser: Any, server: str, shots: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    page = open_page(browser, server + "/")
    page.fill("#model", "gpt2-xl")  # an alias of openai-community/gpt2-xl
    page.fill("#f-gpu", "A100-80GB")
    page.fill("#f-seq", "1024")
    settle(page)
    assert "1,557,611,200 parameters" in page.inner_text("#model-info")
    first = cli_json(capsys, ["train", "gpt2-xl", "--seq", "1024", "--gpu", "A100-80GB", "--json"])
    assert peak_shown(page) == first["peak_bytes"]
    page.fill("#f-batch", "4")
    settle(page)
    argv = ["train", "gpt2-xl", "--batch", "4", "--seq", "1024", "--gpu", "A100-80GB"]
    report = cli_json(capsys, [*argv, "--json"])
    assert peak_shown(page) == report["peak_bytes"] > first["peak_bytes"]
    assert page.inner_text("#cli") == "memplan " + " ".join(argv)
    with page.expect_download() as download:
        page.click("#download-json")
    path = download.value.path()
    assert Path(path).read_text() == json.dumps(report, indent=2) + "\n"
    link = page.url
    assert "batch=4" in link and "model=gpt2-xl" in link
    page.close()
    shared = open_page(browser, link)
    assert peak_shown(shared) == report["peak_bytes"]
    assert shared.input_value("#f-batch") == "4" and shared.input_value("#model") == "gpt2-xl"
    shared.screenshot(path=str(shots / "shared-link.png"))
    shared.close()


def test_hover_shows_formula_and_source_and_a_click_expands(
    browser: Any, server: str, capsys: pytest.CaptureFixture[str]
) -> None:
    page = open_page(browser, f"{server}/?job=train&model=meta-llama/Llama-3.2-1B&gpu=H100-SXM")
    report = cli_json(capsys, ["train", "meta-llama/Llama-3.2-1B", "--gpu", "H100-SXM", "--json"])
    params = report["breakdown"]["children"][0]
    box = page.locator("#chart-breakdown .barlayer .point path").first.bounding_box()
    middle = (box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    page.mouse.move(*middle)  # plotly's drag layer lies above the bars: move the mouse itself
    page.wait_for_selector("#chart-breakdown .hoverlayer .hovertext")
    hover = page.locator("#chart-breakdown .hoverlayer").text_content() or ""
    assert "parameters" in hover and f"source: {params['source']}" in hover
    assert params["children"][0]["formula"] in hover
    page.mouse.click(*middle)
    page.wait_for_function("document.getElementById('chart-breakdown').data[0].name.includes('/')")
    names = [t["name"] for t in chart(page, "chart-breakdown")]
    assert names[: len(params["children"])] == [
        f"parameters/{c['key']}" for c in params["children"]
    ]
    leaf = report["breakdown"]["children"][-1]  # a row of the table carries its formula too
    row = page.locator(f"#tree tr[data-key='{leaf['key']}']").first
    assert f"formula: {leaf['formula']}" in row.get_attribute("title")
    page.close()


def test_a_bad_config_shows_the_error_and_a_good_file_works(
    browser: Any, server: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    page = open_page(browser, f"{server}/?job=train&model=gpt2&seq=512&gpu=L4")
    page.click("#config-paste-toggle")
    page.fill("#config-text", '{"model_type": "llama", "hidden_size": 4096,')
    page.click("#config-use")
    settle(page)
    error = page.inner_text("#error")
    assert page.is_visible("#error")
    assert error.startswith("memplan: error: the pasted config.json is not valid JSON (line 1")
    config = {"_name_or_path": "tiny/llama", "model_type": "llama", "hidden_size": 256,
              "intermediate_size": 688, "num_hidden_layers": 2, "num_attention_heads": 4,
              "vocab_size": 1000, "max_position_embeddings": 2048}  # fmt: skip
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    page.set_input_files("#config-file", str(path))
    settle(page)
    assert not page.is_visible("#error")
    report = cli_json(capsys, ["train", str(path), "--seq", "512", "--gpu", "L4", "--json"])
    assert peak_shown(page) == report["peak_bytes"]
    assert page.inner_text("#cli") == "memplan train ./config.json --seq 512 --gpu L4"
    page.close()


def test_serving_and_time_charts(
    browser: Any, server: str, shots: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    page = open_page(
        browser, f"{server}/?job=train&model=microsoft/Phi-3-mini-4k-instruct&gpu=H100-SXM"
    )
    page.click("#jobs button[data-job=serve]")
    settle(page)
    report = cli_json(capsys, ["serve-capacity", "microsoft/Phi-3-mini-4k-instruct", "--gpu", "H100-SXM", "--json"])  # fmt: skip
    assert f"KV cache {report['kv_cache_tokens']:,} tokens" in page.inner_text("#verdict")
    over = "gpu-memory-utilization=0.5..0.95:0.05"
    sweep = cli_json(capsys, ["sweep", "microsoft/Phi-3-mini-4k-instruct", "--job", "serve-capacity", "--over", over, "--gpu", "H100-SXM", "--json"])  # fmt: skip
    tokens, concurrency = chart(page, "chart-sweep-0")
    assert tokens["x"] == [p["value"] for p in sweep["points"]]
    assert tokens["y"] == [p["kv_cache_tokens"] for p in sweep["points"]]
    assert concurrency["y"] == [p["max_concurrency"] for p in sweep["points"]]
    page.screenshot(path=str(shots / "serving.png"))
    page.click("#jobs button[data-job=time]")
    settle(page)
    argv = ["time", "microsoft/Phi-3-mini-4k-instruct", "--steps", "1000", "--gpu", "H100-SXM"]
    timing = cli_json(capsys, [*argv, "--json"])
    assert float(page.get_attribute("#time", "data-seconds")) == timing["seconds"]
    (seconds,) = chart(page, "chart-sweep-0")
    assert seconds["x"] == [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024]
    assert seconds["y"][0] == pytest.approx(timing["seconds"] / 3600)
    page.screenshot(path=str(shots / "time.png"))
    page.close()


PLAN = ["Qwen/Qwen2.5-0.5B", "--gpus", "4", "--seq", "1024", "--global-batch", "16",
        "--top", "5", "--only", "fsdp,tp,recompute", "--gpu", "H100-SXM"]  # fmt: skip
"""A small search (a few hundred plans, under a second): every feasible plan is drawn."""


def test_plan_tab_shows_the_clis_ranking_and_every_feasible_plan(
    browser: Any, server: str, shots: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    page = open_page(browser, f"{server}/?job=plan&model=Qwen/Qwen2.5-0.5B&gpus=4&global-batch=16")
    assert page.locator("#plan-table tbody tr").count() == 10  # a shared link searches at once
    for name, value in (("seq", "1024"), ("top", "5"), ("only", "fsdp,tp,recompute")):
        page.fill(f"#f-{name}", value)
    settle(page)
    assert "stale" in (page.get_attribute("#run-plan", "class") or "")  # waits for "search"
    page.click("#run-plan")
    settle(page)
    data = cli_json(capsys, ["plan", *PLAN, "--json"])
    assert page.inner_text("#cli") == "memplan plan " + " ".join(PLAN)
    # the table: the CLI's plans, best first, the top row's numbers exactly
    rows = page.locator("#plan-table tbody tr")
    assert rows.count() == len(data["plans"]) == 5
    top, best = rows.first, data["plans"][0]
    assert top.get_attribute("data-layout") == best["layout"]
    assert int(top.get_attribute("data-peak")) == best["peak_bytes"]
    assert float(top.get_attribute("data-step")) == best["step_seconds"]
    cells = top.locator("td").all_inner_texts()
    assert cells[:3] == ["1", best["layout"], f"{best['peak_bytes'] / GIB:.2f} GiB"]
    assert cells[-1] == best["limit"]
    assert page.inner_text("#plan-why") == data["why"]
    rule, removed = next(iter(data["removed"].items()))
    assert page.inner_text("#plan-removed") == f"removed most: {rule} ({removed:,} plans)"
    assert page.inner_text("#cli-verdict") == data["verdict"]
    # the chart: one marker per feasible plan, at the CLI's (peak, step)
    points = data["feasible_points"]
    assert points["selection"] == "all" and len(points["rank"]) == data["plans_feasible"] > 20
    traces = page.evaluate(
        """Array.from(document.getElementById('chart-plan').data)
             .filter(t => t.mode === 'markers').map(t => ({x: Array.from(t.x), y: Array.from(t.y)}))"""
    )
    drawn = sorted((x, y) for t in traces for x, y in zip(t["x"], t["y"], strict=True))
    scale = 1e-3 if max(points["step_seconds"]) < 1 else 1.0
    expected = sorted(
        (peak / GIB, step / scale)
        for peak, step in zip(points["peak_bytes"], points["step_seconds"], strict=True)
    )
    assert len(drawn) == data["plans_feasible"]
    assert [v for pair in drawn for v in pair] == pytest.approx([v for e in expected for v in e])
    best_point = page.locator("#chart-plan .scatterlayer .trace").last.locator(".point").first
    box = best_point.bounding_box()  # the table's plans are drawn last: #1 is their first point
    page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    page.wait_for_selector("#chart-plan .hoverlayer .hovertext")
    hover = page.locator("#chart-plan .hoverlayer").text_content() or ""
    rank, layout = re.match(r"#(\d+) (.+?)peak ", hover).groups()  # #1 and #2 may coincide
    assert layout == data["plans"][int(rank) - 1]["layout"] and int(rank) <= 5
    caption = page.inner_text("#plan-caption")
    assert caption.startswith(f"All {data['plans_feasible']} feasible plans, one point each")
    page.screenshot(path=str(shots / "plan.png"), full_page=True)
    readme = os.environ.get("MEMPLAN_SCREENSHOTS")
    if readme:  # make screenshots: the README's picture, the tab's own preset (a sampled chart)
        page.click("#jobs button[data-job=train]")
        page.fill("#model", "meta-llama/Llama-3.2-1B")
        page.click("#jobs button[data-job=plan]")
        settle(page)
        assert "feasible plans: the top K, the Pareto front" in page.inner_text("#plan-caption")
        page.screenshot(path=str(Path(readme) / "memplan-serve-plan.png"), full_page=True)
    page.close()


def test_screenshots_are_pictures(shots: Path) -> None:
    """Runs last in this module: the screenshots the tests above took are real PNG files."""
    if not (shots / "memplan-serve.png").exists():
        pytest.skip("the browser tests above did not run")
    for name in ("memplan-serve.png", "shared-link.png", "serving.png", "time.png", "plan.png"):
        data = (shots / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 50_000, name
