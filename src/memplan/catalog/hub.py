"""Fetching ``config.json`` (only) of a Hugging Face hub repo that is not in the catalog.

Needs ``huggingface_hub`` (the ``hub`` extra) and network access; imported lazily, never
in tests (they set ``MEMPLAN_OFFLINE=1``). Weights are never downloaded.
"""

from __future__ import annotations

import importlib.util
import json
from typing import Any

from memplan.errors import ConfigError

__all__ = ["fetch_config", "hub_available"]

_TIMEOUT_S = 10


def hub_available() -> bool:
    """True when ``huggingface_hub`` is importable (no import done here)."""
    return importlib.util.find_spec("huggingface_hub") is not None


def fetch_config(repo_id: str) -> dict[str, Any] | None:
    """The repo's config.json as a dict, or None when the repo or the network is unreachable.

    Gated repos (Llama, Gemma) need ``HF_TOKEN`` set, as for any hub download.
    """
    try:
        from huggingface_hub import hf_hub_download
    except ImportError:
        return None
    try:
        path = hf_hub_download(repo_id, "config.json", etag_timeout=_TIMEOUT_S)
    except Exception:  # network errors, missing or gated repos: fall back to "unknown model"
        return None
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{repo_id}: the hub's config.json is unreadable: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{repo_id}: the hub's config.json is not a JSON object")
    return data
