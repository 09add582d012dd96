"""A hub id that cannot be fetched says why, in one line (no network: the hub is faked)."""

from __future__ import annotations

import importlib
from typing import Any

import pytest

from memplan.cli.main import main
from memplan.errors import UnknownModelError

hub = pytest.importorskip("huggingface_hub")
errors = pytest.importorskip("huggingface_hub.errors")


def _response(status: int) -> Any:
    """An HTTP response of the client library huggingface_hub is built on (httpx or a fork)."""
    client = importlib.import_module(errors.HfHubHTTPError.__mro__[1].__module__.split(".")[0])
    request = client.Request("GET", "https://huggingface.co/org/repo/resolve/main/config.json")
    return client.Response(status, request=request)


def _raising(exc: BaseException) -> Any:
    def download(*args: Any, **kwargs: Any) -> str:
        raise exc

    return download


@pytest.fixture
def online(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """The catalog may ask the hub, and the hub answers the TCP probe."""
    monkeypatch.delenv("MEMPLAN_OFFLINE", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr("memplan.catalog.hub._hub_reachable", lambda timeout_s=3.0: True)
    return monkeypatch


def _error_line(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    return err


def test_gated_repo_says_gated_and_token(
    online: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    gated = errors.GatedRepoError("403 gated", response=_response(403))
    online.setattr(hub, "hf_hub_download", _raising(gated))
    err = _error_line(["params", "org/gated-model"], capsys)
    assert "gated repo" in err and "HF_TOKEN" in err
    assert "unknown model" not in err


def test_missing_repo_is_an_unknown_model(
    online: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = errors.RepositoryNotFoundError("404", response=_response(404))
    online.setattr(hub, "hf_hub_download", _raising(missing))
    err = _error_line(["params", "org/no-such-model"], capsys)
    assert "unknown model 'org/no-such-model'" in err
    assert "has no such repo" in err


def test_network_off_says_unreachable(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("MEMPLAN_OFFLINE", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr("memplan.catalog.hub._hub_reachable", lambda timeout_s=3.0: False)
    err = _error_line(["params", "org/some-model"], capsys)
    assert "unreachable (is the network off?)" in err


def test_hub_switched_off(monkeypatch: pytest.MonkeyPatch) -> None:
    from memplan.catalog.hub import fetch_config

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UnknownModelError, match="switched off"):
        fetch_config("org/some-model")


@pytest.mark.parametrize(
    ("exc", "reason"),
    [
        (lambda: errors.LocalEntryNotFoundError("no cache"), "download failed"),
        (lambda: errors.HFValidationError("bad id"), "not a valid Hugging Face repo id"),
        (lambda: errors.HfHubHTTPError("503", response=_response(503)), "HTTP 503"),
        (lambda: errors.RemoteEntryNotFoundError("404", response=_response(404)), "config.json"),
    ],
)
def test_other_hub_failures_say_why(online: pytest.MonkeyPatch, exc: Any, reason: str) -> None:
    from memplan.catalog.hub import fetch_config

    online.setattr(hub, "hf_hub_download", _raising(exc()))
    with pytest.raises(UnknownModelError, match=reason):
        fetch_config("org/some-model")


def test_a_bug_is_not_swallowed(online: pytest.MonkeyPatch) -> None:
    from memplan.catalog.hub import fetch_config

    online.setattr(hub, "hf_hub_download", _raising(KeyError("bug")))
    with pytest.raises(KeyError):
        fetch_config("org/some-model")
