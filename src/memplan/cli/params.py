"""``memplan params MODEL``: exact parameter counts, weight memory per format, buffers."""

from __future__ import annotations

import argparse
import importlib.util
import sys
from typing import Any, TextIO

from memplan.cli.render import add_output_flags, render_tree, report_json, verdict_line
from memplan.report import Report
from memplan.units import format_bytes, format_count, render_marks

__all__ = ["add_manual_flags", "build_report", "register", "run", "spec_from_args"]

EPILOG = """\
examples:
  memplan params meta-llama/Llama-2-7b-hf
  memplan params llama-3.1-8b --json
  memplan params ./my-model/              (a folder: also cross-checks safetensors headers)
  memplan params ./config.json --weights nf4
  memplan params meta-llama/Llama-2-7b-hf --method dense-ffn-4e
  memplan params --manual --hidden 4096 --layers 32 --heads 32 --kv-heads 8 \\
      --vocab 128256 --intermediate 14336

methods: exact (default), dense-ffn-4e, dense-ffn-8/3e, matrices-only, nominal-size,
         gpt2-formula (the old names seed000 ... seed003 still work)
weights: fp32 fp16 bf16 fp8 int8 int4 bnb-int8 bnb-nf4 bnb-nf4-nodq gptq-int4 awq-int4
"""


def add_manual_flags(parser: Any) -> None:
    """``--manual`` and the hyperparameter flags of a model without a config."""
    group = parser.add_argument_group("a model given by hand (--manual)")
    group.add_argument("--manual", action="store_true", help="describe the model with flags")
    for flag, text in (
        ("--hidden", "hidden size"),
        ("--layers", "decoder layers"),
        ("--heads", "attention heads"),
        ("--kv-heads", "KV heads (default: = heads)"),
        ("--vocab", "vocabulary size"),
        ("--intermediate", "MLP width (default 4 x hidden for --mlp plain)"),
        ("--head-dim", "per-head width (default hidden / heads)"),
        ("--max-positions", "positions of a learned position table"),
        ("--experts", "routed experts per MoE layer (0: dense)"),
        ("--top-k", "experts per token"),
        ("--expert-intermediate", "MLP width of one expert"),
        ("--shared-experts", "shared experts per MoE layer"),
    ):
        group.add_argument(flag, type=int, metavar="N", help=text)
    group.add_argument("--mlp", choices=("gated", "plain"), default="gated")
    group.add_argument("--norm", choices=("rmsnorm", "layernorm"), default="rmsnorm")
    group.add_argument("--position", choices=("rotary", "learned", "alibi"), default="rotary")
    group.add_argument("--tie", action="store_true", help="tie lm_head to the embeddings")
    group.add_argument("--qkv-bias", action="store_true")
    group.add_argument("--o-bias", action="store_true")
    group.add_argument("--mlp-bias", action="store_true")


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "params",
        help="exact parameter counts and weight memory of a model",
        description="Exact parameter counts (equal to transformers' own), weight memory per "
        "dtype and quantization format, and registered buffers.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "model",
        nargs="?",
        help="catalog name or alias, HF repo id, config.json path or model folder",
    )
    parser.add_argument(
        "--method",
        default="exact",
        help="also show a textbook formula's count (see the list below)",
    )
    parser.add_argument(
        "--weights",
        "--dtype",
        dest="weights",
        metavar="FORMAT",
        help="weight format to break down (default: the checkpoint's dtype)",
    )
    add_manual_flags(parser)
    add_output_flags(parser)
    parser.set_defaults(func=run)


_MANUAL_KEYS = {
    "hidden": "hidden",
    "layers": "layers",
    "heads": "heads",
    "kv_heads": "kv_heads",
    "vocab": "vocab",
    "intermediate": "intermediate",
    "head_dim": "head_dim",
    "max_positions": "max_positions",
    "experts": "experts",
    "top_k": "top_k",
    "expert_intermediate": "expert_intermediate",
    "shared_experts": "shared_experts",
}


def spec_from_args(args: Any) -> Any:
    """The ModelSpec the arguments describe: ``--manual`` flags, or MODEL resolved."""
    from memplan.errors import ConfigError, UnknownModelError

    if getattr(args, "manual", False):
        from memplan.specs.manual import manual_spec

        kwargs: dict[str, Any] = {
            key: getattr(args, attr)
            for attr, key in _MANUAL_KEYS.items()
            if getattr(args, attr, None) is not None
        }
        missing = [k for k in ("hidden", "layers", "heads", "vocab") if k not in kwargs]
        if missing:
            flags = ", ".join(f"--{k}" for k in missing)
            raise ConfigError(f"--manual needs {flags}")
        kwargs.update(
            mlp=args.mlp,
            norm=args.norm,
            position=args.position,
            tie=args.tie,
            qkv_bias=args.qkv_bias,
            o_bias=args.o_bias,
            mlp_bias=args.mlp_bias,
            name=args.model or "manual",
        )
        return manual_spec(**kwargs)
    if not args.model:
        raise UnknownModelError("give a MODEL (catalog name, HF id, path) or --manual flags")
    from memplan.catalog import resolve

    return resolve(args.model)


def _can_build_on_meta() -> bool:
    return all(importlib.util.find_spec(m) is not None for m in ("torch", "transformers"))


def _meta_params_report(config: dict[str, Any], name: str) -> Report:
    """The trace layer's count on the meta device (the analytic core never imports torch)."""
    from memplan.trace import require_torch

    require_torch()  # one line with the install command where torch is absent or broken
    from memplan.trace.meta import meta_params_report

    return meta_params_report(config, name)


def build_report(args: Any, spec: Any = None, *, allow_torch: bool = True) -> Report:
    """The Report ``memplan params`` prints (the web API calls it too, with ``allow_torch``
    False: a model type the analytic engine does not know is then an error, never a build of
    the model on the meta device). ``spec`` replaces MODEL when already resolved."""
    from memplan.estimate.params import params_report
    from memplan.specs.hf import UnsupportedModelTypeError

    if spec is not None:
        return params_report(spec, method=args.method, weights=args.weights)
    try:
        spec = spec_from_args(args)
    except UnsupportedModelTypeError as exc:
        if not (allow_torch and _can_build_on_meta()):
            raise
        return _meta_params_report(exc.config, exc.name)
    return params_report(spec, method=args.method, weights=args.weights)


def run(args: Any) -> int:
    report = build_report(args)
    if args.json:  # the Python API's report, as it is (memplan.params)
        sys.stdout.write(report_json(report, decimal=args.decimal))
    else:
        render_params(report, decimal=args.decimal, out=sys.stdout, fold=not args.all)
        sys.stdout.write(_verdict(report, args.decimal) + "\n")
    return 0


def _verdict(report: Report, decimal: bool) -> str:
    s = report.scalars
    answer = f"{format_count(s['total_params'])} parameters"
    weights = [name for name in report.sections if name.startswith("weights (")]
    if weights:
        fmt = weights[0][len("weights (") : -1]
        size = format_bytes(report.sections[weights[0]].total, decimal=decimal)
        answer += f"; its {fmt} weights take {size}"
    return verdict_line(f"parameters of {report.model}", answer)


def render_params(report: Report, *, decimal: bool = False, out: TextIO, fold: bool = True) -> None:
    """The human table: headline counts, the parameter tree, weight memory, notes."""
    s = report.scalars
    out.write(f"{report.model}  ({', '.join(f'{k}: {v}' for k, v in report.setup.items())})\n\n")
    rows = [("total parameters", s["total_params"])]
    for key, label in (
        ("embedding_params", "embedding (token/position/untied lm_head)"),
        ("non_embedding_params", "non-embedding"),
        ("active_params_per_token", "active per token"),
    ):
        if key in s and (key != "active_params_per_token" or s[key] != s["total_params"]):
            rows.append((label, s[key]))
    width = max(len(label) for label, _ in rows)
    for label, value in rows:
        out.write(f"  {label:<{width}}  {format_count(value):>18}\n")
    out.write("\n")
    for line in render_tree(report.breakdown, decimal=decimal, max_depth=3, fold=fold):
        out.write(line + "\n")
    weight_bytes = s.get("weight_bytes") or {}
    if weight_bytes:
        unit = "GB" if decimal else "GiB"
        out.write(f"\nweight memory ({unit}; quantized formats keep embeddings, lm_head, norms\n")
        out.write("and routers in 16 bit and include scales/zeros)\n")
        for fmt, size in weight_bytes.items():
            out.write(f"  {fmt:<14} {format_bytes(size, decimal=decimal):>14}\n")
    for name, section in report.sections.items():
        out.write(f"\n{name}\n")
        for line in render_tree(
            section, decimal=decimal, max_depth=2, show_formula=False, fold=fold
        ):
            out.write(line + "\n")
    for note in report.notes:
        out.write(f"note: {render_marks(note, decimal=decimal)}\n")
