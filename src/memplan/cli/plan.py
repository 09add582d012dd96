"""``memplan plan``: which layout of a cluster fits and trains fastest (issue 10).

Enumerates every parallel plan (``memplan.estimate.plan_search``), evaluates them on arrays
with the per-plan engine's functions, keeps those that fit on every rank and prints the top K:
the plan, the worst rank's peak and headroom, step time, MFU, time (and cost) to train and what
limits it; why the best beats the runner-up; which rule removed the most plans. ``--json``:
``plans_evaluated``, ``plans_feasible``, ``seconds`` and ``plans`` (best first) with ``args``,
the ``memplan train`` flags that reproduce each (``time_args`` for ``memplan time``).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from typing import Any, TextIO

from memplan.cli.common import add_gpu_flags, count, gpu_from_args, positive_int
from memplan.errors import SetupError
from memplan.units import format_bytes, format_seconds, parse_size

__all__ = ["register", "run"]

EPILOG = """\
examples:
  memplan plan meta-llama/Llama-3.1-70B --gpus 64 --gpu H100 --seq 4096 --global-batch 512
  memplan plan llama-3.2-1b --nodes 1 --gpus-per-node 8 --gpu A100-80GB --seq 2048 --global-batch 64 --only fsdp,tp,recompute --top 5
  memplan plan gpt2-xl --gpus 8 --gpu H100 --seq 1024 --global-batch 128 --objective memory --json

Every plan is checked on every rank with the same numbers as `memplan train` / `memplan time`;
each row's flags reproduce it (--json: args and time_args).
"""


def register(subparsers: Any) -> None:
    from memplan.cli.train import DEFAULT_SEQ
    from memplan.estimate.plan_search import FEATURES, OBJECTIVES

    parser = subparsers.add_parser(
        "plan",
        help="search every parallel layout of a cluster, best first",
        description="Every way to lay a model over a cluster (TP x PP x CP x EP x DP, ZeRO / "
        "FSDP, schedule, micro-batch, checkpointing, offload): which fit on every rank, and "
        "which train fastest.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("model", help="catalog name, Hugging Face id, config.json or folder")
    cluster = parser.add_argument_group("cluster")
    cluster.add_argument("--gpus", type=positive_int, metavar="N", help="GPUs in all (8 a node)")
    cluster.add_argument("--nodes", type=positive_int, metavar="N", help="nodes")
    cluster.add_argument("--gpus-per-node", type=positive_int, metavar="G", help="GPUs a node")
    cluster.add_argument("--network", default="400Gb/s", metavar="RATE",
                         help="network per GPU across nodes (default 400Gb/s)")  # fmt: skip
    cluster.add_argument("--nvlink", metavar="RATE", help="GPU-to-GPU in a node, one way")
    job = parser.add_argument_group("training job")
    job.add_argument("--seq", type=positive_int, default=None,
                     help=f"sequence length (default {DEFAULT_SEQ}, or the model's context "
                     "when shorter)")  # fmt: skip
    batch = job.add_mutually_exclusive_group()
    batch.add_argument("--global-batch", type=positive_int, metavar="B", help="sequences a step")
    batch.add_argument("--batch-tokens", type=count, metavar="T", help="tokens a step (T / seq)")
    job.add_argument("--tokens", type=count, metavar="N", help="training tokens (time to train)")
    job.add_argument("--precision", default="bf16-mixed", help="training precision")
    job.add_argument("--optimizer", default=None, help="optimizer (default adamw)")
    job.add_argument("--allow-long-seq", action="store_true",
                     help="allow a sequence beyond max_position_embeddings")  # fmt: skip
    job.add_argument("--price-per-gpu-hour", type=float, metavar="USD", help="for the cost")
    search = parser.add_argument_group("search")
    search.add_argument("--objective", default="time", choices=OBJECTIVES,
                        help="rank by step time, cost per token or worst-rank memory")  # fmt: skip
    search.add_argument("--top", type=positive_int, default=10, metavar="K", help="plans shown")
    search.add_argument("--only", metavar="LIST",
                        help=f"allow only these (comma-separated; DDP always): "
                        f"{','.join(FEATURES)}")  # fmt: skip
    for name in ("tp", "pp", "cp", "ep"):
        search.add_argument(f"--max-{name}", type=positive_int, metavar="N",
                            help=f"largest {name} degree" + (" (default: GPUs a node)"
                                                             if name == "tp" else ""))  # fmt: skip
    search.add_argument("--max-micro-batch", type=positive_int, default=64, metavar="N")
    search.add_argument("--reserve", metavar="SIZE", help="memory kept free on every GPU (2GiB)")
    search.add_argument("--jobs", type=positive_int, default=1, metavar="N", help="processes")
    add_gpu_flags(parser)
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.add_argument("--decimal", action="store_true", help="memory in GB, not GiB")
    parser.set_defaults(func=run)


def _only(text: str | None) -> frozenset[str]:
    from memplan.estimate.plan_search import FEATURES

    if text is None:
        return frozenset(FEATURES)
    items = {t.strip() for t in text.split(",") if t.strip()}
    unknown = sorted(items - set(FEATURES))
    if unknown:
        raise SetupError(f"--only: unknown {', '.join(unknown)}; choose from {','.join(FEATURES)}")
    return frozenset(items)


def _inputs(args: Any, spec: Any = None) -> tuple[Any, Any, Any, Any]:
    """(spec, setup, gpu, space) from the flags, with one-line errors for bad input; ``spec``
    in place of ``args.model`` when given (the web page's pasted config.json)."""
    from memplan.catalog import resolve
    from memplan.cli.parallel import _cluster, parse_link_rate
    from memplan.cli.train import default_seq
    from memplan.estimate.plan_search import SearchSpace
    from memplan.estimate.train_setup import validate_setup
    from memplan.specs.training import Optimizer, Precision, TrainingSetup

    gpu = gpu_from_args(args)
    if gpu is None:
        raise SetupError("plan needs a GPU: give --gpu NAME (or --gpu-memory SIZE --tflops X)")
    if not gpu.tflops:
        raise SetupError(f"{gpu.name} has no peak FLOP/s in the catalog: give --tflops X")
    if args.gpus is None and args.nodes is None and args.gpus_per_node is None:
        raise SetupError("plan needs a cluster: give --gpus N or --nodes N --gpus-per-node G")
    args.dp = args.tp = args.pp = args.cp = None
    nodes, per_node = _cluster(args)
    if nodes * per_node > 2**20:
        raise SetupError(f"{nodes * per_node} GPUs is beyond any real cluster (at most 2**20)")
    spec = spec if spec is not None else resolve(args.model)
    seq = args.seq if args.seq is not None else default_seq(spec)
    if args.global_batch is None and args.batch_tokens is None:
        raise SetupError("plan needs the batch: give --global-batch B (sequences per step)")
    batch = args.global_batch
    if batch is None:
        if args.batch_tokens % seq:
            raise SetupError(f"--batch-tokens {args.batch_tokens} is not a multiple of seq {seq}")
        batch = args.batch_tokens // seq
    try:
        precision = Precision(args.precision)
        optimizer = Optimizer(args.optimizer) if args.optimizer else Optimizer.ADAMW
    except ValueError as exc:
        raise SetupError(f"{exc}: see `memplan train --help` for the choices") from None
    setup = TrainingSetup(batch=1, seq=seq, precision=precision, optimizer=optimizer,
                          allow_long_seq=args.allow_long_seq)  # fmt: skip
    validate_setup(spec, setup)
    reserve = parse_size(args.reserve, flag="--reserve") if args.reserve else 0
    if reserve >= gpu.memory_bytes:
        raise SetupError(f"--reserve {args.reserve} is more than the GPU's memory")
    price = args.price_per_gpu_hour
    if price is not None and not (math.isfinite(price) and 0 < price < 1e6):
        raise SetupError(f"--price-per-gpu-hour must be a positive number, got {price}")
    if args.objective == "cost" and price is None:
        raise SetupError("--objective cost needs --price-per-gpu-hour USD")
    space = SearchSpace(
        nodes=nodes, gpus_per_node=per_node, global_batch=batch, max_tp=args.max_tp,
        max_pp=args.max_pp, max_cp=args.max_cp, max_ep=args.max_ep,
        max_micro_batch=args.max_micro_batch, only=_only(args.only), reserve_bytes=reserve,
        network_bytes_per_s=parse_link_rate(args.network),
        intra_node_bytes_per_s=parse_link_rate(args.nvlink) if args.nvlink else None,
    )  # fmt: skip
    return spec, setup, gpu, space


def build_result(args: Any, spec: Any = None) -> dict[str, Any]:
    """The search's answer as JSON-ready data (``--json`` prints it; the text table and the
    web page read it). ``spec``: the model, in place of resolving ``args.model``."""
    from memplan.estimate.plan_search import plan_args, search

    try:
        import numpy  # noqa: F401
    except ModuleNotFoundError:
        raise SetupError("memplan plan evaluates plans with NumPy: pip install numpy") from None
    spec, setup, gpu, space = _inputs(args, spec)
    result = search(spec, setup, gpu, space, objective=args.objective, top=args.top,
                    jobs=args.jobs, progress=not args.json)  # fmt: skip
    tokens_per_step = space.global_batch * setup.seq
    gpu_name = args.gpu or gpu.name
    plans = []
    shown = list(result.plans)
    if result.runner_up is not None:
        shown.append(result.runner_up)
    for p in shown:
        a = plan_args(args.model, setup, p.row, gpu_name)
        entry: dict[str, Any] = {
            "layout": layout_text(a["train"][1:]),
            "args": a["train"],
            "time_args": a["time"],
            "peak_bytes": p.peak_bytes,
            "headroom_bytes": p.headroom_bytes,
            "worst_stage": p.worst_stage,
            "step_seconds": p.step_seconds,
            "compute_seconds": p.compute_seconds,
            "bubble_seconds": p.bubble_seconds,
            "exposed_comm_seconds": p.exposed_comm_seconds,
            "offload_seconds": p.offload_seconds,
            "mfu": p.mfu,
            "tokens_per_s": tokens_per_step / p.step_seconds,
            "limit": p.limit,
        }
        if args.tokens:
            steps = -(-args.tokens // tokens_per_step)
            entry["train_seconds"] = steps * p.step_seconds
            if args.price_per_gpu_hour is not None:
                hours = entry["train_seconds"] / 3600 * space.world
                entry["cost_usd"] = hours * args.price_per_gpu_hour
        plans.append(entry)
    runner_up = plans.pop() if result.runner_up is not None else None
    return {
        "model": spec.name,
        "gpu": gpu.name,
        "gpus": space.world,
        "seq": setup.seq,
        "global_batch": space.global_batch,
        "objective": args.objective,
        "plans_considered": result.plans_considered,
        "plans_evaluated": result.plans_evaluated,
        "plans_feasible": result.plans_feasible,
        "seconds": result.seconds,
        "removed": dict(result.removed.most_common()),
        "plans": plans,
        "runner_up": runner_up,
        "why": _why(plans, runner_up) if plans else None,
        "feasible_points": _points_json(args.model, setup, gpu_name, result.points),
        "method": "per-rank engine of `memplan train` / `memplan time` on every plan (NumPy)",
        "verdict": _verdict(spec.name, space.world, gpu.name, plans, args.objective),
    }


def _points_json(model: str, setup: Any, gpu: str, points: Any) -> dict[str, Any]:
    """The feasible plans a chart of step time against peak draws (``plan_points``): each
    one's layout, peak, step, rank and whether it is on the Pareto front."""
    from memplan.estimate.plan_points import MAX_POINTS, PlanPoints
    from memplan.estimate.plan_search import plan_args

    if points is None:  # no plan left to evaluate
        points = PlanPoints(rows=[], peak_bytes=[], step_seconds=[], rank=[], pareto=[],
                            selection="all")  # fmt: skip
    rule = {
        "all": "every feasible plan",
        "sample": f"at most {MAX_POINTS} of the feasible plans: the top K, the Pareto front "
        "(step time against peak) and an even sample by rank",
    }[points.selection]
    return {
        "selection": points.selection,
        "rule": rule,
        "layout": [layout_text(plan_args(model, setup, r, gpu)["train"][1:]) for r in points.rows],
        "peak_bytes": points.peak_bytes,
        "step_seconds": points.step_seconds,
        "rank": points.rank,
        "pareto": points.pareto,
    }


def result_json(data: dict[str, Any]) -> str:
    """What ``memplan plan --json`` prints (the web API answers the same text)."""
    return json.dumps(data, indent=2) + "\n"


def _verdict(model: str, gpus: int, gpu: str, plans: list[dict[str, Any]], objective: str) -> str:
    from memplan.cli.render import verdict_line

    question = f"laying {model} over {gpus} x {gpu} ({objective})"
    if not plans:
        return verdict_line(question, "no plan fits on every rank")
    best = plans[0]
    answer = (
        f"{layout_text(best['args'][1:])}: {format_seconds(best['step_seconds'])} a step, "
        f"MFU {100 * best['mfu']:.1f}%, peak {format_bytes(best['peak_bytes'])} on the worst rank"
    )
    return verdict_line(question, answer)


def run(args: Any, out: TextIO | None = None) -> int:
    out = out or sys.stdout
    data = build_result(args)
    if args.json:
        out.write(result_json(data))
        return 0
    _print_table(data, args, out)
    return 0


_SHORT = {"--tp": "tp", "--pp": "pp", "--cp": "cp", "--ep": "ep", "--zero": "zero",
          "--fsdp": "fsdp-", "--virtual-stages": "v", "--batch": "mb",
          "--offload": "offload-", "--schedule": "", "--checkpointing": "ckpt-"}  # fmt: skip


def layout_text(argv: list[str]) -> str:
    """The plan part of a ``memplan train`` command line, short: ``tp8 pp2 zero1 mb1``."""
    out = []
    for i, flag in enumerate(argv):
        if flag == "--sp":
            out.append("sp")
        elif flag in _SHORT and i + 1 < len(argv):
            value = argv[i + 1]
            if flag == "--checkpointing" and value == "none":
                continue
            out.append(f"{_SHORT[flag]}{value}")
    return " ".join(out) or "ddp"


def _print_table(data: dict[str, Any], args: Any, out: TextIO) -> None:
    decimal = args.decimal
    out.write(
        f"{data['model']} on {data['gpus']} x {data['gpu']}, seq {data['seq']}, global batch "
        f"{data['global_batch']}: {data['plans_considered']:,} plans, "
        f"{data['plans_evaluated']:,} evaluated, {data['plans_feasible']:,} fit "
        f"({data['seconds']:.2f} s)\n\n"
    )
    plans = data["plans"]
    if not plans:
        out.write("no plan fits: more GPUs, a shorter sequence or a smaller batch\n")
    else:
        width = max(40, *(len(p["layout"]) for p in plans))
        head = f"{'#':>2}  {'plan':<{width}} {'peak':>10} {'free':>10} {'step':>9} {'MFU':>6}"
        head += f" {'to train':>10}" if "train_seconds" in plans[0] else ""
        head += f" {'cost':>10}" if "cost_usd" in plans[0] else ""
        out.write(head + "  limit\n")
        for i, p in enumerate(plans, 1):
            line = (
                f"{i:>2}  {p['layout']:<{width}} "
                f"{format_bytes(p['peak_bytes'], decimal=decimal):>10} "
                f"{format_bytes(p['headroom_bytes'], decimal=decimal):>10} "
                f"{format_seconds(p['step_seconds']):>9} {100 * p['mfu']:>5.1f}%"
            )
            if "train_seconds" in p:
                line += f" {format_seconds(p['train_seconds']):>10}"
            if "cost_usd" in p:
                line += f" ${p['cost_usd']:>9,.0f}"
            out.write(f"{line}  {p['limit']}\n")
        out.write("\n" + data["why"] + "\n")
    removed = data["removed"]
    if removed:
        rule, n = next(iter(removed.items()))
        out.write(f"removed most: {rule} ({n:,} plans)\n")
    if plans:
        out.write("reproduce #1: memplan train " + " ".join(plans[0]["args"]) + "\n")
        out.write("              memplan time " + " ".join(plans[0]["time_args"]) + "\n")
    out.write(data["verdict"] + "\n")


def _why(plans: list[dict[str, Any]], runner_up: dict[str, Any] | None) -> str:
    """Why the best beats the runner-up (the best plan with a longer step): the step's part
    that differs most, and the flags that differ."""
    a = plans[0]
    ties = sum(1 for p in plans[1:] if p["step_seconds"] == a["step_seconds"])
    lead = ""
    if ties:
        lead = (f"#1 ties on the step ({format_seconds(a['step_seconds'])}) with {ties} more "
                "shown, with the lowest peak; ")  # fmt: skip
    if runner_up is None:
        return lead + "every plan that fits takes the same step"
    b = runner_up
    parts = {"compute_seconds": "compute", "bubble_seconds": "pipeline bubble",
             "exposed_comm_seconds": "exposed communication", "offload_seconds": "offload"}  # fmt: skip
    key = max(parts, key=lambda k: b[k] - a[k])
    gap = b["step_seconds"] - a["step_seconds"]
    mine, theirs = layout_text(a["args"][1:]).split(), layout_text(b["args"][1:]).split()
    diff = " ".join(x for x in mine if x not in theirs)
    other = " ".join(x for x in theirs if x not in mine)
    change = (f"with {diff} instead of {other}" if diff and other else f"without {other}"
              if other else f"with {diff}" if diff else "with the same layout")  # fmt: skip
    return (
        f"{lead}it beats the runner-up ({layout_text(b['args'][1:])}) by {format_seconds(gap)} "
        f"a step ({100 * gap / b['step_seconds']:.1f}%) {change}: "
        f"{parts[key]} {format_seconds(a[key])} against {format_seconds(b[key])}"
    )
