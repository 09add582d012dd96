"""Shared test set-up: no test may reach the network."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """memplan never tries the Hugging Face hub in tests (tests never need the network)."""
    monkeypatch.setenv("MEMPLAN_OFFLINE", "1")
