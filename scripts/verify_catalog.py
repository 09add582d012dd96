"""Build every catalog model on the meta device and compare its exact parameter count.

For each entry of ``src/memplan/catalog/models.json`` this script loads the bundled
``config.json``, builds the model with transformers (``AutoConfig.for_model`` +
``AutoModelForCausalLM.from_config``) under ``torch.device("meta")`` (no memory, no weights),
and counts ``sum(p.numel() for p in model.parameters())``; ``parameters()`` yields each
parameter once, so tied embeddings are counted once. The count is printed beside the
catalog's ``published_params`` (the model page's figure), so a wrong config shows up as a
mismatch. A difference that the entry's ``published_params_note`` explains (a checkpoint that
stores a tied tensor twice, say) is shown as "noted" and does not fail.

Needs the ``trace`` extra (torch + transformers). Usage::

    .venv/bin/python scripts/verify_catalog.py            # all models, a table
    .venv/bin/python scripts/verify_catalog.py gpt2 qwen3  # entries whose id contains a word
    .venv/bin/python scripts/verify_catalog.py --json     # one JSON object per model

Exit status 1 when a published count differs from the built one without a note saying why.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path
from typing import Any

CATALOG_DIR = Path(__file__).resolve().parent.parent / "src" / "memplan" / "catalog"

# Keys that would make transformers do more than build the module tree: a quantization
# config asks for a quantizer (DeepSeek-V3 ships FP8 block-quantized weights); the count of
# parameters is that of the unquantized model either way.
KEYS_NOT_PASSED = ("quantization_config", "auto_map")


def load_entries() -> list[dict[str, Any]]:
    """The entries of models.json, in catalog order."""
    return json.loads((CATALOG_DIR / "models.json").read_text())["models"]


def load_config(entry: dict[str, Any]) -> dict[str, Any]:
    """The bundled config.json of one entry, as a dict."""
    return json.loads((CATALOG_DIR / "models" / entry["file"]).read_text())


def build_on_meta(config: dict[str, Any]) -> Any:
    """The transformers model for ``config``, with every tensor on the meta device."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    kwargs = {k: v for k, v in config.items() if k not in KEYS_NOT_PASSED}
    model_type = kwargs.pop("model_type")
    hf_config = AutoConfig.for_model(model_type, **kwargs)
    with torch.device("meta"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return AutoModelForCausalLM.from_config(hf_config)


def unique_param_count(model: Any) -> int:
    """Sum of numel over ``model.parameters()``, which yields a tied tensor once."""
    return sum(p.numel() for p in model.parameters())


def verify_entry(entry: dict[str, Any]) -> dict[str, Any]:
    """Build one entry and return its row: id, model_type, built and published counts."""
    config = load_config(entry)
    start = time.perf_counter()
    model = build_on_meta(config)
    built = unique_param_count(model)
    published = entry.get("published_params")
    return {
        "id": entry["id"],
        "model_type": config["model_type"],
        "class": type(model).__name__,
        "built_params": built,
        "published_params": published,
        "match": None if published is None else built == published,
        "noted": "published_params_note" in entry,
        "seconds": round(time.perf_counter() - start, 2),
    }


def format_row(row: dict[str, Any]) -> str:
    """One table line."""
    published = row["published_params"]
    mark = {True: "ok", False: "MISMATCH", None: "-"}[row["match"]]
    if row["match"] is False and row["noted"]:
        mark = "noted"
    pub = f"{published:,}" if published is not None else "-"
    return (
        f"{row['id']:<36} {row['model_type']:<12} {row['built_params']:>17,} "
        f"{pub:>17} {mark:<8} {row['seconds']:>5.2f}s"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("words", nargs="*", help="only entries whose id contains one of these")
    parser.add_argument("--json", action="store_true", help="print one JSON object per line")
    args = parser.parse_args(argv)

    entries = load_entries()
    if args.words:
        words = [w.lower() for w in args.words]
        entries = [e for e in entries if any(w in e["id"].lower() for w in words)]
    if not args.json:
        print(f"{'id':<36} {'model_type':<12} {'built':>17} {'published':>17} {'check':<8} time")
    failures = 0
    for entry in entries:
        row = verify_entry(entry)
        failures += row["match"] is False and not row["noted"]
        print(json.dumps(row) if args.json else format_row(row), flush=True)
    if not args.json:
        print(f"{len(entries)} models, {failures} mismatches")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
