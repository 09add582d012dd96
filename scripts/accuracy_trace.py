"""Accuracy of the trace engine: fake tensors against real runs.

``section() -> str`` returns the markdown for ``docs/accuracy.md`` (the lead assembles the
sections); run directly it prints it. Two kinds of rows:

- everywhere: the fake-tensor trace against the same step on real cpu tensors (CPU kernels),
  on size-reduced configs of several families: peak, saved-tensor bytes and every phase must
  agree to the byte;
- on a machine with a GPU (``--gpu``): ``memplan trace --measure`` figures, traced vs measured
  with ``torch.cuda`` statistics, for Llama-3.2-1B and Llama-3.1-8B in bf16-mixed and bf16 with
  AdamW at two sequence lengths. Not run in the session that wrote this script (no GPU).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from memplan.specs.training import Optimizer, Precision, Target, TrainingSetup

__all__ = ["section"]

CONFIGS = Path(__file__).resolve().parents[1] / "tests" / "data" / "trace_tiny_configs.json"
FAMILIES = ("llama", "gpt2", "qwen2", "mixtral", "gpt_neox", "phi3")
GPU_CASES = (
    ("llama-3.2-1b", Precision.BF16_MIXED, 1024),
    ("llama-3.2-1b", Precision.BF16_MIXED, 4096),
    ("llama-3.2-1b", Precision.BF16, 1024),
    ("llama-3.2-1b", Precision.BF16, 4096),
    ("llama-3.1-8b", Precision.BF16, 1024),
    ("llama-3.1-8b", Precision.BF16, 2048),
)


def _error(ours: float, theirs: float) -> str:
    if theirs == 0:
        return "n/a"
    percent = 100 * (ours - theirs) / theirs
    return f"{percent:+.4f} %" if abs(percent) < 0.01 else f"{percent:+.2f} %"


def _cpu_rows() -> list[str]:
    from memplan.trace.training import trace_training

    configs = json.loads(CONFIGS.read_text())
    rows = [
        "| family (size-reduced) | quantity | fake trace | real CPU run | error |",
        "| --- | --- | --- | --- | --- |",
    ]
    setup = TrainingSetup(batch=2, seq=32, precision=Precision.FP32, target=Target.CPU)
    for family in FAMILIES:
        fake = trace_training(configs[family], setup)
        real = trace_training(configs[family], setup, fake=False)
        pairs = {
            "peak bytes": (fake.scalars["peak_bytes"], real.scalars["peak_bytes"]),
            "saved tensor bytes": (
                int(fake.sections["saved_by_node"].total),
                int(real.sections["saved_by_node"].total),
            ),
        }
        same_phases = [p.bytes for p in fake.phases] == [p.bytes for p in real.phases]
        for name, (ours, theirs) in pairs.items():
            rows.append(f"| {family} | {name} | {ours:,} | {theirs:,} | {_error(ours, theirs)} |")
        rows.append(f"| {family} | all 12 phases equal | {same_phases} | | |")
    return rows


def _gpu_rows() -> list[str]:
    from memplan.catalog import resolve
    from memplan.trace.measure import measure_training
    from memplan.trace.training import trace_training

    rows = [
        "| model | precision | seq | phase | traced | measured | error |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, precision, seq in GPU_CASES:
        spec = resolve(name)
        setup = TrainingSetup(batch=1, seq=seq, precision=precision, optimizer=Optimizer.ADAMW)
        report = trace_training(spec, setup)
        measured = measure_training(spec.hf_config or {}, setup, report.scalars["total_params"])
        for phase in report.phases[:6]:
            ours, theirs = phase.bytes, measured.get(phase.name, 0)
            rows.append(
                f"| {name} | {precision.value} | {seq} | {phase.name} | {ours / 2**30:.3f} GiB | "
                f"{theirs / 2**30:.3f} GiB | {_error(ours, theirs)} |"
            )
    return rows


def section(gpu: bool = False) -> str:
    lines = [
        "## Trace engine",
        "",
        "Fake tensors against real cpu tensors (same code, CPU kernels):",
        "",
    ]
    lines += _cpu_rows()
    if gpu:
        lines += ["", "Traced (CUDA target) against `torch.cuda` statistics:", ""]
        lines += _gpu_rows()
    else:
        lines += [
            "",
            "GPU rows: run `python scripts/accuracy_trace.py --gpu` on a machine with a GPU.",
        ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(section(gpu="--gpu" in sys.argv[1:]))
