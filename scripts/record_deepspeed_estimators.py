"""Record DeepSpeed's own model-state estimators for the models docs/accuracy.md compares.

Runs ``estimate_zero2_model_states_mem_needs_all_cold`` and
``estimate_zero3_model_states_mem_needs_all_cold`` (DeepSpeed installed beside torch:
``pip install --no-build-isolation deepspeed==0.19.8``) with the parameter counts memplan
computes, and writes their printed output, unchanged, to
``tests/data/deepspeed/estimators.txt`` (the tests compare memplan against it without
DeepSpeed, and against DeepSpeed itself where it is installed).

Usage: ``python scripts/record_deepspeed_estimators.py``
"""

from __future__ import annotations

import contextlib
import io
import os
import sys
from pathlib import Path

CASES = (("llama-2-7b", 8, 8), ("meta-llama/Llama-3.1-70B", 8, 8), ("llama-2-7b", 1, 8))
OUT = Path(__file__).resolve().parent.parent / "tests" / "data" / "deepspeed" / "estimators.txt"


def run_estimators(total: int, largest: int, nodes: int, per_node: int) -> str:
    """DeepSpeed's printed output for one model and cluster."""
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs_all_cold
    from deepspeed.runtime.zero.stage_1_and_2 import (
        estimate_zero2_model_states_mem_needs_all_cold,
    )

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        estimate_zero2_model_states_mem_needs_all_cold(
            total_params=total, num_gpus_per_node=per_node, num_nodes=nodes
        )
        estimate_zero3_model_states_mem_needs_all_cold(
            total_params=total, largest_layer_params=largest, num_gpus_per_node=per_node,
            num_nodes=nodes,
        )  # fmt: skip
    return buf.getvalue()


def main() -> int:
    import deepspeed

    from memplan.catalog import resolve
    from memplan.formulas.methods_parallel import largest_layer_params
    from memplan.formulas.params import total_params

    parts = [
        f"# DeepSpeed {deepspeed.__version__}: estimate_zero2/3_model_states_mem_needs_all_cold"
    ]
    for name, nodes, per_node in CASES:
        spec = resolve(name)
        total, largest = total_params(spec), largest_layer_params(spec)
        parts.append(
            f"## {name} total={total} largest={largest} nodes={nodes} gpus_per_node={per_node}"
        )
        parts.append(run_estimators(total, largest, nodes, per_node).rstrip())
    OUT.write_text("\n".join(parts) + "\n")
    print(f"wrote {OUT}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
