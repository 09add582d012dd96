"""Fetching ``config.json`` (only) of a Hugging Face hub repo that is not in the catalog.

Needs ``huggingface_hub`` (the ``hub`` extra) and network access; imported lazily, never
in tests (they set ``MEMPLAN_OFFLINE=1``). Weights are never downloaded.
"""

from __future__ import annotations

import importlib.util
import json
import os
import socket
from typing import Any
from urllib.parse import urlparse

from memplan.errors import ConfigError, UnknownModelError

__all__ = ["fetch_config", "hub_available"]

_TIMEOUT_S = 10


def hub_available() -> bool:
    """True when ``huggingface_hub`` is importable (no import done here)."""
    return importlib.util.find_spec("huggingface_hub") is not None


def _hub_reachable(timeout_s: float = 3.0) -> bool:
    """A quick TCP connect to the hub, so that offline machines fail at once, not after
    huggingface_hub's retries (about 25 s)."""
    endpoint = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    host = endpoint.hostname or "huggingface.co"
    port = endpoint.port or (443 if endpoint.scheme == "https" else 80)
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return True
    except OSError:
        return False


def fetch_config(repo_id: str) -> dict[str, Any] | None:
    """The repo's config.json as a dict; None when ``huggingface_hub`` is not installed or the
    hub has no such repo (the caller says "unknown model", with suggestions).

    Every other failure is an :class:`UnknownModelError` that says why, in one line: the hub
    switched off or unreachable, a gated repo (accept its licence and set ``HF_TOKEN``), a repo
    without a config.json, an id the hub refuses, an HTTP error.
    """
    try:
        from huggingface_hub import errors, hf_hub_download
    except ImportError:
        return None
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("", "0"):
        raise _hub_error(repo_id, "the Hugging Face hub is switched off (HF_HUB_OFFLINE)")
    if not _hub_reachable():
        raise _hub_error(repo_id, "the Hugging Face hub is unreachable (is the network off?)")
    try:
        path = hf_hub_download(repo_id, "config.json", etag_timeout=_TIMEOUT_S)
    except errors.GatedRepoError as exc:
        raise _hub_error(
            repo_id,
            "it is a gated repo: accept its licence on huggingface.co and set HF_TOKEN",
        ) from exc
    except errors.RepositoryNotFoundError:
        return None  # missing, or private without a token: "unknown model"
    except errors.LocalEntryNotFoundError as exc:
        raise _hub_error(repo_id, "the download failed (is the network off?)") from exc
    except errors.EntryNotFoundError as exc:
        raise _hub_error(repo_id, "the repo has no config.json") from exc
    except errors.HFValidationError as exc:
        raise _hub_error(repo_id, "it is not a valid Hugging Face repo id") from exc
    except errors.HfHubHTTPError as exc:
        status = exc.response.status_code if exc.response is not None else "?"
        raise _hub_error(repo_id, f"the hub answered HTTP {status}") from exc
    except OSError as exc:  # connection errors, a cache that cannot be written
        raise _hub_error(repo_id, f"the download failed: {exc}") from exc
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
    except (OSError, ValueError, RecursionError) as exc:  # ValueError: bad JSON or UTF-8
        raise ConfigError(f"{repo_id}: the hub's config.json is unreadable: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{repo_id}: the hub's config.json is not a JSON object")
    return data


def _hub_error(repo_id: str, reason: str) -> UnknownModelError:
    return UnknownModelError(
        f"{repo_id!r} is not in the catalog and its config.json could not be fetched from the "
        f"Hugging Face hub: {reason} (or give a config.json path or model folder)"
    )
