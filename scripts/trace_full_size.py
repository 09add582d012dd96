"""Full-size per-rank traces of parallel plans, recorded for docs/accuracy.md.

Each case runs ``memplan trace MODEL --train <plan flags>`` (``trace_parallel_training``: the
real transformers model at full size, fake tensors, a fake process group of the plan's world
size, one traced rank after another) and records every traced rank's phases, categories and
trace time in ``tests/data/full_size_traces.json``, with the torch and transformers versions.
``scripts/accuracy_proof.py`` sets the analytic engine beside these figures. The traces take
minutes (a 7B rank about half a minute on an idle core, a 70B rank a few), so they are
recorded rather than rerun by ``make accuracy``; rerun this script after changing either engine.

Usage: ``python scripts/trace_full_size.py [--only SUBSTRING] [--out PATH]``
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
RECORDED = HERE.parent / "tests" / "data" / "full_size_traces.json"

SETUP_FLAGS = "--batch 1 --seq 4096 --precision bf16-mixed --optimizer adamw --gpu H100-SXM"
"""The step of every case: what torchtitan's Llama recipes train (bf16 compute, AdamW)."""

CASES = (
    ("llama-2-7b", "--gpus 8 --fsdp full"),
    ("llama-2-7b", "--gpus 64 --fsdp full"),
    ("llama-2-7b", "--gpus 8 --fsdp shard-grad-op"),
    ("llama-2-7b", "--gpus 8 --tp 8 --sp"),
    ("llama-3-70b", "--gpus 64 --fsdp full"),
    ("llama-3-70b", "--gpus 64 --tp 8 --sp --fsdp full"),
)
"""(model, plan flags): FSDP2 and TP for Llama-2-7B and Llama-3-70B on 8 to 64 ranks."""


def parse(model: str, flags: str) -> tuple[Any, Any, Any]:
    """(spec, setup, plan) exactly as ``memplan trace`` builds them from the flags."""
    from memplan.catalog import resolve
    from memplan.cli.main import build_parser
    from memplan.cli.parallel import plan_from_args
    from memplan.cli.trace import _training_setup

    args = build_parser().parse_args(
        ["trace", model, "--train", *shlex.split(f"{SETUP_FLAGS} {flags}")]
    )
    spec = resolve(model)
    plan = plan_from_args(args, spec)
    return spec, _training_setup(spec, args), plan


def trace_case(model: str, flags: str) -> dict[str, Any]:
    from memplan.trace.parallel import trace_parallel_training

    spec, setup, plan = parse(model, flags)
    started = time.perf_counter()
    report = trace_parallel_training(spec, setup, plan)
    return {
        "model": model,
        "flags": flags,
        "setup_flags": SETUP_FLAGS,
        "seconds": round(time.perf_counter() - started, 1),
        "ranks": report.scalars["ranks"],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="", help="run the cases whose flags contain this")
    parser.add_argument("--out", default=str(RECORDED))
    args = parser.parse_args(argv)
    import torch
    import transformers

    out = Path(args.out)
    recorded = json.loads(out.read_text()) if out.exists() else {"cases": []}
    cases = {(c["model"], c["flags"]): c for c in recorded["cases"]}
    versions = {
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
    }
    for model, flags in CASES:
        if args.only and args.only not in f"{model} {flags}":
            continue
        print(f"tracing {model} {flags} ...", file=sys.stderr, flush=True)
        cases[(model, flags)] = trace_case(model, flags)
        print(f"  {cases[(model, flags)]['seconds']} s", file=sys.stderr, flush=True)
        # written after each case: a long run that stops keeps what it traced
        recorded = {
            "versions": versions,
            "cases": [cases[key] for key in ((m, f) for m, f in CASES) if key in cases],
        }
        out.write_text(json.dumps(recorded, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
