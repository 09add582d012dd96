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

from memplan.errors import ConfigError

__all__ = ["fetch_config", "hub_available"]

_TIMEOUT_S = 10


def hub_available() -> bool:
    """True when ``huggingface_hub`` is importable (no import done here)."""
    return importlib.util.find_spec("huggingface_hub") is not None


def _hub_reachable(timeout_s: float = 3.0) -> bool:
    """A quick TCP connect to the hub, so that offline machines fail at once, not after
    huggingface_hub's retries (about 25 s)."""
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("", "0"):
        return False
    endpoint = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    host = endpoint.hostname or "huggingface.co"
    port = endpoint.port or (443 if endpoint.scheme == "https" else 80)
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return True
    except OSError:
        return False


def fetch_config(repo_id: str) -> dict[str, Any] | None:
    """The repo's config.json as a dict, or None when the repo or the network is unreachable.

    Gated repos (Llama, Gemma) need ``HF_TOKEN`` set, as for any hub download.
    """
    try:
        from huggingface_hub import hf_hub_download
    except ImportError:
        return None
    if not _hub_reachable():
        return None
    try:
        path = hf_hub_download(repo_id, "config.json", etag_timeout=_TIMEOUT_S)
    except Exception:  # network errors, missing or gated repos: fall back to "unknown model"
        return None
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
    except (OSError, ValueError, RecursionError) as exc:  # ValueError: bad JSON or UTF-8
        raise ConfigError(f"{repo_id}: the hub's config.json is unreadable: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{repo_id}: the hub's config.json is not a JSON object")
    return data
