"""Shared test set-up: no test may reach the network, and in CI no test skips for a missing
dependency.

Tests that need an optional dependency (torch and transformers for the trace engine; later a
browser for the web page) skip cleanly on a developer's machine without it:
``pytest.importorskip("torch")``, or ``pytest.skip(missing_dependency("chromium"))`` where the
dependency is not a module. In CI (the ``CI`` environment variable set to ``true``, as GitHub
Actions, GitLab CI and most CI systems set it, and as ``.ci/run`` sets it) such a skip is a
failure: a broken install must not silently skip a third of the suite. Every other skip (an
explicit ``pytest.skip("not applicable here")``, a ``skipif`` on the platform) stays a skip.
``tests/test_ci_skips.py`` runs pytest on small test files to check both behaviours.
"""

from __future__ import annotations

import os
from typing import Any

import pytest

MISSING_DEPENDENCY = "missing dependency: "
"""Prefix of the skip reason of a test that cannot run because something is not installed."""

IMPORTORSKIP_REASON = "could not import "
"""How ``pytest.importorskip`` starts its skip reason (``_pytest/outcomes.py``)."""


def missing_dependency(what: str) -> str:
    """The skip reason for a dependency that is not a Python module (a browser, a binary)."""
    return MISSING_DEPENDENCY + what


def in_ci() -> bool:
    """Whether the suite runs in CI: ``CI`` set to true (``true``, ``1``, ``yes``)."""
    return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


def skip_reason(report: pytest.TestReport | pytest.CollectReport) -> str:
    """The reason of a skipped report (pytest keeps ``(path, line, "Skipped: reason")``)."""
    longrepr = report.longrepr
    text = longrepr[2] if isinstance(longrepr, tuple) and len(longrepr) == 3 else str(longrepr)
    return str(text).removeprefix("Skipped: ")


def is_missing_dependency(reason: str) -> bool:
    return reason.startswith((IMPORTORSKIP_REASON, MISSING_DEPENDENCY))


def fail_missing_dependency(report: pytest.TestReport | pytest.CollectReport) -> None:
    """In CI, turn a skip for a missing dependency into a failure that says what is missing."""
    if not (report.skipped and in_ci()) or hasattr(report, "wasxfail"):
        return
    reason = skip_reason(report)
    if is_missing_dependency(reason):
        report.outcome = "failed"
        report.longrepr = (
            f"CI=true: a missing dependency fails instead of skipping ({reason}); install "
            "the extras (pip install -e '.[trace,dev]') or unset CI to skip locally"
        )


@pytest.hookimpl(wrapper=True)
def pytest_make_collect_report(collector: pytest.Collector) -> Any:
    """A test module that skips at import (``importorskip`` at module level)."""
    report = yield
    fail_missing_dependency(report)
    return report


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    """A test that skips in its set-up or body."""
    report = yield
    fail_missing_dependency(report)
    return report


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Under pytest-xdist (``pytest -n auto --dist loadgroup``), the browser tests share one
    worker: they share a module's server and Chromium, and the last checks the screenshots the
    others took."""
    for item in items:
        if item.get_closest_marker("browser") and not item.get_closest_marker("xdist_group"):
            item.add_marker(pytest.mark.xdist_group("browser"))


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """memplan never tries the Hugging Face hub in tests (tests never need the network)."""
    monkeypatch.setenv("MEMPLAN_OFFLINE", "1")
