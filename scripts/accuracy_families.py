"""Accuracy of the analytic training engine on the size-reduced config of every family.

``section() -> str`` returns the markdown for ``docs/accuracy.md``; run directly it prints it.
The cases are those of ``tests/test_trace_families.py`` (imported from there): the default
setup (bf16-mixed, AdamW, sdpa, CUDA target), batch 2, sequence 32, on
``tests/data/trace_tiny_configs.json``. Families whose activation lines differ are strict
xfails in that test; this table gives their gaps line by line.
"""

from __future__ import annotations

import sys
from pathlib import Path

__all__ = ["section"]

TESTS = Path(__file__).resolve().parents[1] / "tests"


def section() -> str:
    sys.path.insert(0, str(TESTS))
    import test_trace_families as cases

    lines = [
        "## Every family, size-reduced: analytic engine vs trace engine",
        "",
        "Default setup (bf16-mixed, AdamW, sdpa, H100 kernels), batch 2, sequence 32, on the "
        "configs of `tests/data/trace_tiny_configs.json` (hidden 64, 2 layers). The phases "
        "before the forward and after the backward, the first step's peak and the "
        "non-activation categories are equal for every family (`tests/test_trace_families.py`); "
        "the lines below are those that differ (analytic minus trace).",
        "",
        "| family | line | trace | analytic | gap |",
        "| --- | --- | ---: | ---: | ---: |",
    ]
    categories = ("activations", "autocast_cache", "temporaries")
    same = []
    for family in sorted(cases.CONFIGS):
        trace, analytic = cases._reports(family)
        theirs = cases._lines(trace, (*cases.ACTIVATION_PHASES,), categories)
        ours = cases._lines(analytic, (*cases.ACTIVATION_PHASES,), categories)
        theirs["peak"], ours["peak"] = trace.scalars["peak_bytes"], analytic.scalars["peak_bytes"]
        differ = [key for key in theirs if ours[key] != theirs[key]]
        if not differ:
            same.append(family)
        for key in differ:
            gap = ours[key] - theirs[key]
            lines.append(f"| {family} | {key} | {theirs[key]:,} | {ours[key]:,} | {gap:+,} B |")
    lines += ["", f"Equal on every line: {', '.join(same)}."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(section())
