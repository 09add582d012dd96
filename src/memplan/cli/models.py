"""``memplan models``: every catalog model with its (computed) parameter count and aliases."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

__all__ = ["catalog_rows", "register", "run"]

EPILOG = """\
examples:
  memplan models
  memplan models --json
  memplan models --family qwen2
"""


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "models",
        help="list the bundled catalog models with parameter counts",
        description="The offline catalog: Hugging Face ids, aliases and exact parameter counts "
        "computed from the bundled config.json files.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--family", help="only models of this model_type / family")
    parser.add_argument("--json", action="store_true", help="print the list as JSON")
    parser.set_defaults(func=run)


def _short(count: int) -> str:
    for scale, label in ((1e12, "T"), (1e9, "B"), (1e6, "M")):
        if count >= scale:
            return f"{count / scale:.2f}{label}"
    return f"{count:,}"


def catalog_rows(family: str | None = None) -> list[dict[str, Any]]:
    """One dict per catalog model: id, family, model_type, total_params (or error), aliases."""
    from memplan.catalog import catalog_config, list_models, variants_of
    from memplan.errors import MemplanError
    from memplan.formulas.params import total_params
    from memplan.specs.hf import spec_from_config

    rows = []
    for entry in list_models():
        row: dict[str, Any] = {"id": entry.id, "family": entry.family}
        try:
            spec = spec_from_config(catalog_config(entry), name=entry.id, source="catalog")
            row["model_type"] = spec.model_type
            row["total_params"] = total_params(spec)
        except (MemplanError, OSError, ValueError) as exc:
            row["error"] = str(exc)
        row["aliases"] = list(entry.aliases)
        row["old_ids"] = list(entry.old_ids)
        row["variants"] = [variant.id for variant in variants_of(entry.id)]
        if family and family.lower() not in (entry.family.lower(), row.get("model_type", "")):
            continue
        rows.append(row)
    return rows


def run(args: Any) -> int:
    rows = catalog_rows(args.family)
    if not rows:
        from memplan.errors import UnknownModelError

        families = sorted({r.get("model_type", "") for r in catalog_rows()} - {""})
        raise UnknownModelError(
            f"no catalog model of family {args.family!r}; families: {', '.join(families)}"
        )
    if args.json:
        json.dump({"models": rows}, sys.stdout, indent=2, allow_nan=False)
        sys.stdout.write("\n")
        return 0
    width = max([len(r["id"]) for r in rows] + [5])
    sys.stdout.write(f"{'model':<{width}}  {'type':<12}  {'parameters':>17}  {'':>8}  aliases\n")
    for r in rows:
        count = r.get("total_params")
        shown = f"{count:,}" if count is not None else "unsupported"
        short = _short(count) if count is not None else ""
        names = ", ".join(
            r["aliases"] + r["old_ids"] + [v.rsplit("/", 1)[-1] for v in r["variants"]]
        )
        mtype = r.get("model_type", "?")
        sys.stdout.write(f"{r['id']:<{width}}  {mtype:<12}  {shown:>17}  {short:>8}  {names}\n")
    n_variants = sum(len(r["variants"]) for r in rows)
    sys.stdout.write(
        f"\n{len(rows)} models and {n_variants} instruction-tuned / chat variants (same "
        "architecture, their own published config values); counts are exact (tied weights once)\n"
    )
    return 0
