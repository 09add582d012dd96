"""``memplan serve``: its flags, the warning for a non-local address, a missing web extra."""

from __future__ import annotations

import sys
from typing import Any

import pytest

from memplan.cli.main import main
from memplan.cli.serve import is_loopback


def test_loopback_addresses() -> None:
    assert all(is_loopback(h) for h in ("127.0.0.1", "localhost", "::1", "127.0.0.2"))
    assert not any(is_loopback(h) for h in ("0.0.0.0", "192.168.1.4", "::", "example.org"))


def test_another_host_warns_on_one_line(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    uvicorn = pytest.importorskip("uvicorn")
    pytest.importorskip("fastapi")
    calls: list[dict[str, Any]] = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: calls.append(kw))
    assert main(["serve", "--host", "0.0.0.0", "--port", "8123"]) == 0
    assert calls == [{"host": "0.0.0.0", "port": 8123, "log_level": "warning"}]
    warning, serving = capsys.readouterr().err.strip().splitlines()
    assert warning.startswith("memplan: warning: serving on 0.0.0.0: anyone who can reach")
    assert serving == "memplan: serving on http://127.0.0.1:8123/ (Ctrl-C to stop)"
    assert main(["serve"]) == 0  # the default: 127.0.0.1:8000, no warning
    assert calls[-1]["host"] == "127.0.0.1" and calls[-1]["port"] == 8000
    assert "warning" not in capsys.readouterr().err


def test_without_the_web_extra(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "uvicorn", None)
    assert main(["serve"]) == 2
    err = capsys.readouterr().err
    assert err == (
        "memplan: error: memplan serve needs the web extra (uvicorn is missing): "
        "pip install 'memplan[web]' (or make setup)\n"
    )
