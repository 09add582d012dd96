"""docs/accuracy.md's section on published layouts (issue 10): ``scripts/plan_layouts.py``'s
comparison (memplan's per-rank numbers for layouts real runs used, against ``memplan plan``)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path


def section() -> str:
    path = Path(__file__).resolve().parent / "plan_layouts.py"
    spec = importlib.util.spec_from_file_location("plan_layouts", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    body = module.render().split("\n", 2)[2]  # without its own title
    body = body.replace("\n## ", "\n### ")
    return "## Published layouts (issue 10): `memplan plan`\n\n" + body
