"""``memplan sweep MODEL --over batch=1..64 [--job train] [setup flags]``: one flag swept.

Each point is exactly the report ``memplan JOB MODEL [setup flags] --FLAG=VALUE`` gives (the
job's own parser and ``build_report``), so a sweep can be checked against single runs. The
table marks the last setting that fits and the first that does not; where the job reports the
exact limit (``max_batch_size`` for a batch sweep of ``train``, ``max_seq_len`` for a sequence
sweep) it is printed too. The web page's curves come from :func:`sweep_json`.

Ranges: ``LO..HI`` doubles from LO (HI included), ``LO..HI:STEP`` steps linearly (integers or
decimals: ``gpu-memory-utilization=0.5..0.95:0.05``), ``A,B,C`` lists values; at most
:data:`MAX_POINTS` points.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from typing import Any, TextIO

from memplan.errors import MemplanError, SetupError
from memplan.report import Report
from memplan.specs.model import ModelSpec

__all__ = [
    "LIMIT_SCALARS",
    "MAX_POINTS",
    "SWEEP_JOBS",
    "default_job",
    "parse_range",
    "register",
    "run",
    "sweep_json",
]

MAX_POINTS = 256
"""Most points one sweep evaluates (the web API holds every request to it too)."""
SWEEP_JOBS = ("train", "infer", "serve-capacity", "time")
"""Commands a sweep can run, in the order ``--over`` picks one by its flag."""
METRICS = ("peak_bytes", "kv_cache_tokens", "max_concurrency", "seconds", "cost_usd")
"""The report scalars a sweep plots, in this order, those the job reports."""
LIMIT_SCALARS = {"batch": "max_batch_size", "seq": "max_seq_len", "prompt_len": "max_prompt_len"}
"""Swept flag -> the scalar in which the job reports the exact largest value that fits."""
_STRUCTURE = frozenset({"kind", "model", "setup", "breakdown", "sections", "phases", "notes"})

EPILOG = """\
examples:
  memplan sweep meta-llama/Llama-3.1-8B --over batch=1..64 --seq 4096 --gpu H100
  memplan sweep llama-3.2-1b --over seq=512..131072 --gpu A100-80GB --plot seq.png
  memplan sweep gpt2-xl --over gpus=8..1024 --steps 400000 --batch 512 --seq 1024 --gpu A100
  memplan sweep phi-3-mini --job serve-capacity --over gpu-memory-utilization=0.5..0.95:0.05 \\
      --gpu H100 --json
  memplan sweep qwen2.5-7b --job infer --over prompt-len=512..32768 --gpu L40S

Every other flag is the job's own (see `memplan JOB --help`).
"""


def add_sweep_flags(parser: Any) -> None:
    """The sweep's own flags (everything else goes to the job's parser)."""
    parser.add_argument("--over", metavar="FLAG=RANGE",
                        help="the job's flag and its values: batch=1..64, seq=512..131072, "
                        "gpus=8..1024, gpu-memory-utilization=0.5..0.95:0.05, batch=1,2,3")  # fmt: skip
    parser.add_argument("--job", choices=SWEEP_JOBS,
                        help="the command to sweep (default: the first of "
                        f"{', '.join(SWEEP_JOBS)} that has the flag)")  # fmt: skip
    parser.add_argument("--plot", metavar="FILE", help="draw the curve to FILE (.png or .svg)")
    parser.add_argument("--json", action="store_true", help="print the sweep as JSON")


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "sweep",
        help="how the peak (or time, or capacity) moves with one setting, and where it stops fitting",
        description="Evaluate a job at every value of one flag; print the curve, mark where it "
        "stops fitting, plot it.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("model", help="catalog name, hub id, config.json or model folder")
    add_sweep_flags(parser)
    parser.add_argument("job_flags", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    parser.set_defaults(func=run)


def _number(text: str, flag: str) -> int | float:
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        raise SetupError(f"--over {flag}=...: {text!r} is not a number") from None


def parse_range(flag: str, text: str) -> tuple[list[int | float], str]:
    """The values of ``LO..HI``, ``LO..HI:STEP`` or ``A,B,C`` and their spacing (``doubling``,
    ``linear`` or ``list``); a clear error for anything else or beyond :data:`MAX_POINTS`."""
    if ".." not in text:
        values = [_number(part.strip(), flag) for part in text.split(",") if part.strip()]
        spacing = "list"
    else:
        lo_text, _, rest = text.partition("..")
        hi_text, _, step_text = rest.partition(":")
        lo, hi = _number(lo_text, flag), _number(hi_text, flag)
        if not lo <= hi:
            raise SetupError(f"--over {flag}={text}: the range must run upwards")
        if step_text:
            step = _number(step_text, flag)
            if step <= 0:
                raise SetupError(f"--over {flag}={text}: the step must be positive")
            count = int((hi - lo) / step + 1e-9) + 1
            if count > MAX_POINTS:
                raise SetupError(f"--over {flag}={text}: {count} points, at most {MAX_POINTS}")
            values = [_tidy(lo + i * step) for i in range(count)]
            spacing = "linear"
        else:
            if not (isinstance(lo, int) and isinstance(hi, int) and lo >= 1):
                raise SetupError(f"--over {flag}={text}: LO..HI doubles positive integers; "
                                 "give a step for decimals (LO..HI:STEP)")  # fmt: skip
            values = _doubling(lo, hi)
            spacing = "doubling"
    if not values:
        raise SetupError(f"--over {flag}=: give values, e.g. {flag}=1..64")
    if len(values) > MAX_POINTS:
        raise SetupError(f"--over {flag}: {len(values)} points, at most {MAX_POINTS}")
    return values, spacing


def _doubling(lo: int, hi: int) -> list[int | float]:
    values: list[int | float] = []
    value = lo
    while value < hi and len(values) <= MAX_POINTS:
        values.append(value)
        value *= 2
    values.append(hi)
    return values


def _tidy(value: int | float) -> int | float:
    """Linear steps of decimals without float noise (0.1 * 3 -> 0.3)."""
    return value if isinstance(value, int) else round(value, 9)


_PREFERRED_JOB = {"gpus": "time"}
"""Flags several jobs take, and the job a sweep over them means by default: ``--gpus`` sizes
``time``'s run (``train`` takes it too, for a parallel plan; name ``--job train`` for that)."""


def default_job(flag: str, parsers: dict[str, argparse.ArgumentParser]) -> str:
    """The job :data:`_PREFERRED_JOB` names for ``--FLAG``, else the first whose parser has it."""
    preferred = _PREFERRED_JOB.get(flag)
    if preferred in parsers and f"--{flag}" in parsers[preferred]._option_string_actions:
        return preferred
    for job in SWEEP_JOBS:
        if f"--{flag}" in parsers[job]._option_string_actions:
            return job
    raise SetupError(
        f"no job has a flag --{flag}: sweep one of the flags of {', '.join(SWEEP_JOBS)}"
    )


def _point(report: Report, value: int | float) -> dict[str, Any]:
    data = report.to_dict()
    point: dict[str, Any] = {"value": value}
    point.update(
        (k, v) for k, v in data.items() if k not in _STRUCTURE and not isinstance(v, dict | list)
    )
    if "fits" not in point and "headroom_bytes" in point:
        point["fits"] = point["headroom_bytes"] >= 0
    return point


def sweep_json(
    parse: Callable[[list[str]], argparse.Namespace],
    job: str,
    base_argv: Sequence[str],
    flag: str,
    values: Sequence[int | float],
    spacing: str,
    spec: ModelSpec | None = None,
) -> dict[str, Any]:
    """The sweep as JSON data: ``base_argv`` is the job's command line (``[job, model, ...]``),
    ``parse`` the parser that reads it (the CLI's, or the web's raising one)."""
    import importlib

    build = importlib.import_module(f"memplan.cli.{job.replace('-', '_')}").build_report
    points: list[dict[str, Any]] = []
    reports: list[Report] = []
    errors: list[MemplanError] = []
    for value in values:
        try:
            report = build(parse([*base_argv, f"--{flag}={value}"]), spec)
        except MemplanError as exc:  # e.g. a sequence beyond the model's positions
            errors.append(exc)
            points.append({"value": value, "error": str(exc)})
            continue
        reports.append(report)
        points.append(_point(report, value))
    if not reports:
        raise errors[0]
    first = next(p for p in points if "error" not in p)
    setup = {k: v for k, v in reports[0].setup.items() if k != args_dest(flag)}
    out: dict[str, Any] = {"kind": "sweep", "job": job, "model": reports[0].model,
                           "over": flag, "spacing": spacing, "setup": setup}  # fmt: skip
    out["metrics"] = [m for m in METRICS if isinstance(first.get(m), int | float)]
    good = [p for p in points if "error" not in p]
    for key in ("usable_bytes", "gpu_memory_bytes"):
        if key in first and all(p.get(key) == first[key] for p in good):
            out[key] = first[key]
    fits = [p.get("fits") for p in points]
    out["last_fit"] = None
    out["first_no_fit"] = None
    for point, ok in zip(points, fits, strict=True):
        if ok is False:
            out["first_no_fit"] = point["value"]
            break
        if ok is True:
            out["last_fit"] = point["value"]
    limit = LIMIT_SCALARS.get(args_dest(flag))
    if limit and isinstance(first.get(limit), int):
        out["exact_limit"] = {"scalar": limit, "value": first[limit]}
    out["points"] = points
    return out


def args_dest(flag: str) -> str:
    return flag.replace("-", "_")


def run(args: Any, out: TextIO | None = None) -> int:
    from memplan.cli.main import build_parser

    out = out or sys.stdout
    own = argparse.ArgumentParser(prog="memplan sweep", add_help=False)
    add_sweep_flags(own)
    own.set_defaults(
        **{k: v for k, v in vars(args).items() if k in ("over", "job", "plot", "json")}
    )
    mine, job_flags = own.parse_known_args(args.job_flags)
    if not mine.over:
        raise SetupError("sweep needs --over FLAG=RANGE, e.g. --over batch=1..64")
    flag, sep, text = mine.over.partition("=")
    if not sep or not flag:
        raise SetupError(f"--over {mine.over}: write FLAG=RANGE, e.g. batch=1..64")
    flag = flag.strip().removeprefix("--")
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    job = mine.job or default_job(flag, sub.choices)
    if f"--{flag}" not in sub.choices[job]._option_string_actions:
        raise SetupError(f"memplan {job} has no flag --{flag}")
    values, spacing = parse_range(flag, text.strip())
    sweep = sweep_json(parser.parse_args, job, [job, args.model, *job_flags], flag, values, spacing)
    if mine.plot:
        from memplan.cli.plot import plot_sweep

        plot_sweep(sweep, mine.plot)
    if mine.json:
        json.dump(sweep, out, indent=2, allow_nan=False)
        out.write("\n")
    else:
        render_sweep(sweep, out)
    return 0


def _cell(key: str, value: Any) -> str:
    from memplan.units import format_bytes, format_seconds

    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "NO"
    if key.endswith("_bytes"):
        return format_bytes(value)
    if key == "seconds":
        return format_seconds(value)
    if key == "cost_usd":
        return f"${value:,.0f}"
    return f"{value:,}" if isinstance(value, int) else f"{value:,.4g}"


def render_sweep(sweep: dict[str, Any], out: TextIO) -> None:
    """The curve as a table, with where it stops fitting."""
    points = sweep["points"]
    keys = list(sweep["metrics"])
    keys += [k for k in ("fits", "headroom_bytes") if any(k in p for p in points)]
    rows = [[sweep["over"], *keys]]
    rows += [[_cell("value", p["value"]), *(_cell(k, p.get(k)) for k in keys)] for p in points]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    setup = ", ".join(f"{k}: {v}" for k, v in sweep["setup"].items())
    out.write(f"{sweep['model']}: {sweep['job']} over {sweep['over']} ({setup})\n\n")
    for row, point in zip(rows, [{}, *points], strict=True):
        line = "  ".join(c.rjust(w) for c, w in zip(row, widths, strict=True))
        if "error" in point:
            line = f"{row[0].rjust(widths[0])}  {point['error']}"
        out.write(line + "\n")
    if "fits" in keys:
        out.write("\n" + _fit_line(sweep) + "\n")


def _fit_line(sweep: dict[str, Any]) -> str:
    over, last, first_no = sweep["over"], sweep["last_fit"], sweep["first_no_fit"]
    if first_no is None:
        line = f"fits at every {over} evaluated"
    elif last is None:
        line = f"does not fit at {over} = {_cell(over, first_no)}, the smallest swept"
    else:
        line = (
            f"fits up to {over} = {_cell(over, last)}; "
            f"stops fitting at {over} = {_cell(over, first_no)}"
        )
    skipped = sum("error" in p for p in sweep["points"])
    if skipped:
        line += f"; {skipped} setting{'s' if skipped > 1 else ''} not evaluated (see above)"
    exact = sweep.get("exact_limit")
    if exact:
        line += f" (exact limit: {exact['scalar']} = {exact['value']:,})"
    return line
