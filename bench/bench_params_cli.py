"""Cold-start wall-clock of ``memplan params MODEL --json`` (target: under 0.3 s).

Runs the installed console script in a fresh process 10 times and prints the median.
Usage: python bench/bench_params_cli.py [MODEL]
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

RUNS = 10
TARGET_S = 0.3


def _memplan() -> str:
    script = Path(sys.executable).with_name("memplan")
    return str(script) if script.exists() else "memplan"


def main() -> int:
    model = sys.argv[1] if len(sys.argv) > 1 else "meta-llama/Llama-2-7b-hf"
    command = [_memplan(), "params", model, "--json"]
    env = {**os.environ, "MEMPLAN_OFFLINE": "1"}
    times = []
    for _ in range(RUNS):
        start = time.perf_counter()
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL, env=env)
        times.append(time.perf_counter() - start)
    median = statistics.median(times)
    verdict = "OK" if median < TARGET_S else "TOO SLOW"
    print(
        f"memplan params {model} --json: median {median:.3f} s over {RUNS} cold runs "
        f"(min {min(times):.3f}, max {max(times):.3f}; target < {TARGET_S} s) {verdict}"
    )
    return 0 if median < TARGET_S else 1


if __name__ == "__main__":
    sys.exit(main())
