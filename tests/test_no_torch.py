"""The core never imports torch: checked in a fresh interpreter, and in the source of every
core module (an import inside a function, run only on a rare path, counts too)."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import memplan

PACKAGE = Path(memplan.__file__).parent
CORE = sorted(
    path
    for path in PACKAGE.rglob("*.py")
    if path.relative_to(PACKAGE).parts[0] not in ("trace", "cli", "web", "__main__.py")
)
"""Everything but the trace engine and the edges that may call it (command line, web page)."""
FORBIDDEN = ("torch", "transformers", "peft", "memplan.trace", "memplan.cli")

SCRIPT = textwrap.dedent(
    """
    import contextlib, importlib, io, pkgutil, sys
    import memplan
    import memplan.estimate, memplan.formulas
    from memplan.cli.main import main

    for package in (memplan.estimate, memplan.formulas):
        for info in pkgutil.iter_modules(package.__path__):
            importlib.import_module(f"{package.__name__}.{info.name}")
    import memplan.api, memplan.catalog, memplan.catalog.local, memplan.specs.hf

    with contextlib.redirect_stdout(io.StringIO()):
        assert main(["params", "meta-llama/Llama-2-7b-hf", "--json"]) == 0
        assert main(["params", "deepseek-v3"]) == 0
        assert main(["models"]) == 0
        assert main(["train", "llama-3.2-1b", "--gpu", "H100"]) == 0
        assert main(["infer", "qwen2.5-7b", "--gpu", "L40S", "--weights", "awq-int4"]) == 0
        assert main(["serve-capacity", "phi-3-mini", "--gpu", "H100"]) == 0
        assert main(["time", "gpt2-xl", "--gpu", "A100", "--steps", "10", "--seq", "1024"]) == 0
        assert main(["gpus"]) == 0
        assert main(["compare", "gpt2", "--seq", "512", "--no-trace", "--methods"]) == 0
    assert memplan.params("gpt2").scalars["total_params"] == 124439808
    heavy = sorted(m for m in ("torch", "transformers") if m in sys.modules)
    print(",".join(heavy))
    """
)


def test_params_and_models_do_not_import_torch() -> None:
    env = {**os.environ, "MEMPLAN_OFFLINE": "1"}
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT], capture_output=True, text=True, env=env, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "", f"imported: {result.stdout.strip()}"


def _imported_modules(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.append(node.module)
    return names


def _forbidden(name: str) -> bool:
    return any(name == root or name.startswith(f"{root}.") for root in FORBIDDEN)


@pytest.mark.parametrize("path", CORE, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_core_module_never_imports_torch_or_the_trace_engine(path: Path) -> None:
    assert [name for name in _imported_modules(path) if _forbidden(name)] == []


def test_the_core_scan_sees_every_layer() -> None:
    layers = {path.relative_to(PACKAGE).parts[0] for path in CORE}
    assert {"estimate", "formulas", "specs", "catalog", "units.py", "api.py"} <= layers
