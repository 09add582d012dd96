"""The CI rule of ``conftest.py``: with ``CI=true`` a skip for a missing dependency fails.

pytest runs in a subprocess on small test files beside a copy of this suite's conftest, with
torch made unimportable (a ``torch`` package first on the path that raises
``ModuleNotFoundError``, as an absent install does), once without ``CI`` and once with
``CI=true``. Outcomes are read from pytest's JUnit XML report.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent

FILES = {
    "test_module_level.py": (
        "import pytest\n"
        "torch = pytest.importorskip('torch')\n"
        "def test_uses_torch():\n"
        "    assert torch.zeros(1).sum() == 0\n"
    ),
    "test_in_body.py": (
        "import pytest\n"
        "def test_needs_transformers_and_torch():\n"
        "    pytest.importorskip('torch')\n"
    ),
    "test_browser.py": (
        "import pytest\n"
        "from conftest import missing_dependency\n"
        "def test_page_in_a_browser():\n"
        "    pytest.skip(missing_dependency('chromium (apt install chromium)'))\n"
    ),
    "test_not_applicable.py": (
        "import pytest\n"
        "def test_skipped_for_a_reason_that_is_not_a_dependency():\n"
        "    pytest.skip('not applicable on this platform')\n"
        "@pytest.mark.xfail(reason='known gap', strict=True)\n"
        "def test_known_gap():\n"
        "    assert False\n"
    ),
    "test_plain.py": "def test_passes():\n    assert True\n",
}


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("ci_skips")
    shutil.copy(TESTS / "conftest.py", root / "conftest.py")
    (root / "pytest.ini").write_text("[pytest]\n")  # not this project's settings
    for name, text in FILES.items():
        (root / name).write_text(text)
    blocked = root / "blocked" / "torch"
    blocked.mkdir(parents=True)
    (blocked / "__init__.py").write_text(
        "raise ModuleNotFoundError(\"No module named 'torch'\", name='torch')\n"
    )
    return root


def _outcomes(
    project: Path, ci: str | None, workers: tuple[str, ...] = ("-p", "no:xdist")
) -> tuple[int, dict[str, str]]:
    """(exit status, {test or module name: passed/skipped/failed/error/xfailed})."""
    env = {k: v for k, v in os.environ.items() if k != "CI" and not k.startswith("PYTEST_")}
    env["PYTHONPATH"] = str(project / "blocked")
    if ci is not None:
        env["CI"] = ci
    report = project / f"report-{ci}-{len(workers)}.xml"
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *workers,
         "--continue-on-collection-errors", f"--junitxml={report}", "-q", "."],
        cwd=project, env=env, capture_output=True, text=True, check=False, timeout=120,
    )  # fmt: skip
    outcomes = {}
    for case in ET.parse(report).iter("testcase"):
        name = case.get("name") or case.get("classname") or ""
        kinds = {child.tag for child in case}
        skipped = case.find("skipped")
        if skipped is not None and skipped.get("type") == "pytest.xfail":
            outcomes[name] = "xfailed"
        else:
            outcomes[name] = next(
                (k for k in ("failure", "error", "skipped") if k in kinds), "passed"
            )
    return result.returncode, outcomes


def test_without_ci_a_missing_dependency_skips(project: Path) -> None:
    status, outcomes = _outcomes(project, None)
    assert outcomes == {
        "test_module_level": "skipped",
        "test_needs_transformers_and_torch": "skipped",
        "test_page_in_a_browser": "skipped",
        "test_skipped_for_a_reason_that_is_not_a_dependency": "skipped",
        "test_known_gap": "xfailed",
        "test_passes": "passed",
    }
    assert status == 0


def test_with_ci_true_a_missing_dependency_fails(project: Path) -> None:
    status, outcomes = _outcomes(project, "true")
    assert outcomes == {
        "test_module_level": "error",  # a module that cannot be collected
        "test_needs_transformers_and_torch": "failure",
        "test_page_in_a_browser": "failure",
        "test_skipped_for_a_reason_that_is_not_a_dependency": "skipped",
        "test_known_gap": "xfailed",
        "test_passes": "passed",
    }
    assert status == 1


def test_with_ci_true_a_missing_dependency_fails_in_a_worker(project: Path) -> None:
    """The same under pytest-xdist (``make test`` runs the suite in worker processes)."""
    pytest.importorskip("xdist")
    status, outcomes = _outcomes(project, "true", ("-n", "1"))
    assert outcomes["test_module_level"] == "error"
    assert outcomes["test_needs_transformers_and_torch"] == "failure"
    assert outcomes["test_page_in_a_browser"] == "failure"
    assert outcomes["test_skipped_for_a_reason_that_is_not_a_dependency"] == "skipped"
    assert status == 1


def test_the_failure_says_what_is_missing(project: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    env.update(PYTHONPATH=str(project / "blocked"), CI="true")
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-p", "no:xdist", "-q",
         "test_in_body.py"],
        cwd=project, env=env, capture_output=True, text=True, check=False, timeout=120,
    )  # fmt: skip
    assert result.returncode == 1
    assert "CI=true: a missing dependency fails instead of skipping" in result.stdout
    assert "could not import 'torch'" in result.stdout


def test_ci_run_sets_ci_true() -> None:
    """``.ci/run`` is CI's entry point; it must say it is CI even where the runner does not."""
    script = (TESTS.parent / ".ci" / "run").read_text()
    assert "export CI=true" in script.splitlines()
