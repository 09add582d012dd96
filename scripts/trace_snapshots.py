"""Snapshots of several traces as JSON, to prove a speed change leaves every result unchanged.

    python scripts/trace_snapshots.py --out /tmp/before      # on the old code
    python scripts/trace_snapshots.py --out /tmp/after       # on the new code
    python scripts/trace_snapshots.py --diff /tmp/before /tmp/after

Each case is a ``memplan trace ... --json`` command line run in this process; the wall-clock
field (``trace_seconds``) is dropped, everything else (peak, phases, breakdown trees, saved bytes
by node and field, reserved memory, FLOPs, op count, notes) must match byte for byte.
``--quick`` keeps only the tiny-config cases (seconds instead of minutes).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import sys
import tempfile
from pathlib import Path

TINY_FAMILIES = ("llama", "mixtral", "qwen2_moe", "gemma2", "gpt2", "deepseek_v2", "olmo2")

FULL_CASES = {
    "llama2-7b-train-bf16": "llama-2-7b --train --batch 1 --seq 2048 --precision bf16",
    "llama3.2-1b-train-mixed-ckpt": "llama-3.2-1b --train --batch 2 --seq 1024 "
    "--precision bf16-mixed --checkpointing full",
    "qwen2.5-0.5b-lora-fp32": "qwen2.5-0.5b --train --batch 2 --seq 512 --precision fp32 "
    "--lora-rank 16",
    "pythia-410m-dropout-fp16mixed": "pythia-410m --train --batch 2 --seq 512 "
    "--precision fp16-mixed --dropout 0.1",
    "gemma-2-2b-train-bf16": "gemma-2-2b --train --batch 1 --seq 1024 --precision bf16",
    "gpt2-cpu-fp32": "gpt2 --train --batch 2 --seq 256 --precision fp32 --target cpu",
    "llama3.2-1b-infer": "llama-3.2-1b --infer --batch 4 --prompt-len 1024 --gen-len 16",
    "qwen2.5-0.5b-infer-static": "qwen2.5-0.5b --infer --batch 2 --prompt-len 256 "
    "--gen-len 8 --cache static",
}


def tiny_cases(folder: Path) -> dict[str, str]:
    """One training and one inference case per tiny family (configs from the tests)."""
    configs = json.loads(Path("tests/data/trace_tiny_configs.json").read_text())
    cases = {}
    for family in TINY_FAMILIES:
        path = folder / f"{family}.json"
        path.write_text(json.dumps(configs[family]))
        cases[f"tiny-{family}-train"] = f"{path} --train --batch 2 --seq 64 --precision bf16-mixed"
        cases[f"tiny-{family}-infer"] = f"{path} --infer --batch 2 --prompt-len 32 --gen-len 4"
    return cases


def run_case(argv: list[str], folder: Path) -> dict[str, object]:
    from memplan.cli.main import main

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        status = main(["trace", *argv, "--json"])
    if status != 0:
        raise SystemExit(f"memplan trace {' '.join(argv)}: exit {status}")
    # the temporary folder of the tiny configs is not part of the result
    report = json.loads(out.getvalue().replace(f"{folder}/", "tiny/"))
    report.pop("trace_seconds", None)
    return report


def write_snapshots(out_dir: Path, quick: bool) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        cases = tiny_cases(Path(tmp))
        if not quick:
            cases.update(FULL_CASES)
        for name, line in cases.items():
            report = run_case(line.split(), Path(tmp))
            (out_dir / f"{name}.json").write_text(json.dumps(report, indent=1, sort_keys=True))
            print(f"{name}: peak {report.get('peak_bytes'):,} B, {report.get('n_ops')} ops")


def diff_snapshots(before: Path, after: Path) -> int:
    """Compare every snapshot in ``after`` with the one of the same name in ``before``."""
    names = sorted(p.name for p in after.glob("*.json"))
    missing = [n for n in names if not (before / n).exists()]
    differing = [
        n
        for n in names
        if n not in missing and (before / n).read_bytes() != (after / n).read_bytes()
    ]
    print(
        f"{len(names)} snapshots compared, {len(differing)} differ, {len(missing)} not in {before}"
    )
    for name in differing + missing:
        print(f"  {name}")
    return 1 if differing or missing or not names else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path)
    parser.add_argument("--diff", type=Path, nargs=2, metavar=("BEFORE", "AFTER"))
    parser.add_argument("--quick", action="store_true", help="tiny configs only")
    args = parser.parse_args()
    if args.diff:
        return diff_snapshots(*args.diff)
    if args.out is None:
        parser.error("--out or --diff")
    write_snapshots(args.out, args.quick)
    return 0


if __name__ == "__main__":
    sys.exit(main())
