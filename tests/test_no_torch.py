"""The core never imports torch: checked in a fresh interpreter."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

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
