"""The web page's speed: API requests per second on one core, and page load to first chart.

1. ``memplan serve`` runs pinned to one CPU core; a client pinned to another core sends
   ``POST /api/train`` requests over one keep-alive connection (Llama-3.1-8B on an H100, the
   micro-batch cycling 1..8) for a fixed count. Printed: requests per second by the wall
   clock, and the server's CPU time per request (from /proc/PID/stat), which does not depend
   on what else the machine runs: 1 / (CPU s per request) is the one-core throughput.
2. Headless Chromium (Debian's, through Playwright) opens the page several times with a
   fresh context, then reloads it; printed: the time from navigation start to the first
   chart drawn (``window.memplan.firstChartMs``), medians of the runs. A first load is
   dominated by compiling plotly.min.js (4.8 MB); a reload finds it compiled in the cache.

Usage: python bench/bench_web.py [REQUESTS]
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import statistics
import subprocess
import sys
import time

REQUESTS = 400
PAGE_RUNS = 5
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                  "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync"]  # fmt: skip


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _cpu_seconds(pid: int) -> float:
    """utime + stime of a process (proc(5): fields 14 and 15, in clock ticks)."""
    with open(f"/proc/{pid}/stat") as handle:
        fields = handle.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _start_server(port: int) -> subprocess.Popen[bytes]:
    cores = sorted(os.sched_getaffinity(0))
    command = [sys.executable, "-m", "memplan", "serve", "--port", str(port)]
    process = subprocess.Popen(
        command,
        env={**os.environ, "MEMPLAN_OFFLINE": "1"},
        stderr=subprocess.DEVNULL,
        preexec_fn=lambda: os.sched_setaffinity(0, {cores[0]}),
    )
    if len(cores) > 1:
        os.sched_setaffinity(0, set(cores[1:]))  # the client on the other core(s)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return process
        except OSError:
            time.sleep(0.2)
    process.kill()
    raise SystemExit("memplan serve did not start")


def bench_api(port: int, pid: int, count: int) -> None:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)

    def ask(batch: int) -> None:
        body = json.dumps({"model": "meta-llama/Llama-3.1-8B", "gpu": "H100", "batch": batch})
        connection.request("POST", "/api/train", body, {"content-type": "application/json"})
        response = connection.getresponse()
        response.read()
        if response.status != 200:
            raise SystemExit(f"/api/train answered {response.status}")

    for batch in range(1, 9):  # warm: parsers built, plans cached
        ask(batch)
    cpu0, wall0 = _cpu_seconds(pid), time.perf_counter()
    for i in range(count):
        ask(1 + i % 8)
    wall, cpu = time.perf_counter() - wall0, _cpu_seconds(pid) - cpu0
    print(
        f"POST /api/train (Llama-3.1-8B, H100, batch 1..8): {count / wall:,.0f} requests/s by the "
        f"wall clock; server CPU {1e3 * cpu / count:.2f} ms per request = "
        f"{count / max(cpu, 1e-9):,.0f} requests/s per core"
    )


def bench_page(port: int) -> None:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        print("page load: skipped (playwright is not installed: pip install -e '.[dev]')")
        return
    if not os.path.exists(CHROMIUM):
        print(f"page load: skipped ({CHROMIUM} is missing: apt-get install -y chromium)")
        return
    os.sched_setaffinity(0, set(range(os.cpu_count() or 1)))  # the browser as a person runs it
    url = f"http://127.0.0.1:{port}/?job=train&model=meta-llama/Llama-3.1-8B&gpu=H100-SXM"
    times, loaded, warm = [], [], []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        for _ in range(PAGE_RUNS):
            context = browser.new_context()  # a fresh cache each time
            page = context.new_page()
            page.goto(url)
            page.wait_for_function("window.memplan && window.memplan.firstChartMs !== null")
            times.append(page.evaluate("window.memplan.firstChartMs"))
            timing = "performance.getEntriesByType('navigation')[0].domContentLoadedEventEnd"
            loaded.append(page.evaluate(timing))
            page.reload()  # the browser's cache and compiled-code cache now hold plotly.js
            page.wait_for_function("window.memplan && window.memplan.firstChartMs !== null")
            warm.append(page.evaluate("window.memplan.firstChartMs"))
            context.close()
        browser.close()
    print(
        f"page load to first chart in Chromium: median {statistics.median(times):.0f} ms over "
        f"{PAGE_RUNS} fresh loads (min {min(times):.0f}, max {max(times):.0f}); of which "
        f"the page and plotly.js loaded: median {statistics.median(loaded):.0f} ms; "
        f"reloaded: median {statistics.median(warm):.0f} ms"
    )


def main() -> int:
    count = int(sys.argv[1]) if len(sys.argv) > 1 else REQUESTS
    port = _free_port()
    server = _start_server(port)
    try:
        load = os.getloadavg()[0]
        print(f"load average at start: {load:.2f} on {os.cpu_count()} cores")
        bench_api(port, server.pid, count)
        bench_page(port)
    finally:
        server.terminate()
        server.wait(timeout=10)
    return 0


if __name__ == "__main__":
    sys.exit(main())
