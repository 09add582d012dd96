"""The model catalog: ``resolve(name) -> ModelSpec`` and ``list_models()``, offline.

A name is, in this order: a local ``config.json`` path or model folder; a catalog id, an old id
(where Hugging Face renamed the repo), a short alias, or an instruction-tuned / chat variant
(``-Instruct``, ``-it``, ``-chat``), case-insensitively; with ``huggingface_hub`` installed and
network access, any hub repo id (config only). Only the index ``models.json`` and the one
config file asked for are read, so resolving is fast.

A variant shares its base model's architecture; ``models.json`` lists, per base entry, its
variants with the config fields whose published values differ (``overrides``: context length,
vocabulary, dtype, ``quantization_config`` ...; a dotted key such as
``text_config.max_position_embeddings`` sets a nested field) and where those values come from.
"""

from __future__ import annotations

import difflib
import json
import os
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from memplan.errors import ConfigError, UnknownModelError
from memplan.specs.model import ModelSpec

__all__ = [
    "CatalogEntry",
    "catalog_config",
    "find_entry",
    "list_models",
    "resolve",
    "variants_of",
]

_HERE = Path(__file__).resolve().parent
OFFLINE_ENV = "MEMPLAN_OFFLINE"
"""Set to 1 to never try the Hugging Face hub (tests set it)."""


@dataclass(frozen=True, slots=True)
class CatalogEntry:
    """One bundled model: its hub id, config file and other names."""

    id: str
    file: str
    old_ids: tuple[str, ...] = ()
    aliases: tuple[str, ...] = ()
    family: str = ""
    config_source: str = ""
    published_params: int | None = None
    published_params_source: str = ""
    variant_of: str = ""
    """The base model's id, for an instruction-tuned or chat variant ('' for a base entry)."""
    overrides: tuple[tuple[str, Any], ...] = ()
    """Config fields whose published values differ from the base model's."""

    @property
    def names(self) -> tuple[str, ...]:
        return (self.id, *self.old_ids, *self.aliases)


def _entry(raw: dict[str, Any]) -> CatalogEntry:
    published = raw.get("published_params")
    return CatalogEntry(
        id=str(raw["id"]),
        file=str(raw["file"]),
        old_ids=tuple(raw.get("old_ids") or ()),
        aliases=tuple(raw.get("aliases") or ()),
        family=str(raw.get("family") or ""),
        config_source=str(raw.get("config_source") or ""),
        published_params=int(published) if isinstance(published, int | float) else None,
        published_params_source=str(raw.get("published_params_source") or ""),
    )


def _variants(base: CatalogEntry, raw: dict[str, Any]) -> list[CatalogEntry]:
    """The instruction-tuned / chat variants listed under a base entry."""
    out = []
    for variant in raw.get("variants") or ():
        out.append(
            CatalogEntry(
                id=str(variant["id"]),
                file=base.file,
                aliases=tuple(variant.get("aliases") or ()),
                family=base.family,
                config_source=str(variant.get("source") or f"variant of {base.id}"),
                variant_of=base.id,
                overrides=tuple(sorted((variant.get("overrides") or {}).items())),
            )
        )
    return out


@cache
def _all_entries() -> tuple[CatalogEntry, ...]:
    """Base entries, each followed by its variants."""
    path = _HERE / "models.json"
    if not path.is_file():
        return ()
    data = json.loads(path.read_text(encoding="utf-8"))
    rows = data.get("models", data) if isinstance(data, dict) else data
    out: list[CatalogEntry] = []
    for row in rows:
        base = _entry(row)
        out += [base, *_variants(base, row)]
    return tuple(out)


@cache
def _index() -> tuple[CatalogEntry, ...]:
    """The base entries (``memplan models`` lists these; variants resolve as well)."""
    return tuple(entry for entry in _all_entries() if not entry.variant_of)


@cache
def _by_name() -> dict[str, CatalogEntry]:
    table: dict[str, CatalogEntry] = {}
    for entry in _all_entries():
        for name in entry.names:
            table.setdefault(name.lower(), entry)
    # a repo name without its organisation ("Meta-Llama-3-70B") where it is unambiguous
    tails: dict[str, list[CatalogEntry]] = {}
    for entry in _all_entries():
        tails.setdefault(entry.id.rsplit("/", 1)[-1].lower(), []).append(entry)
    for tail, entries in tails.items():
        if len(entries) == 1:
            table.setdefault(tail, entries[0])
    return table


def list_models() -> list[CatalogEntry]:
    """Every base catalog model, in the index's order (variants: :func:`variants_of`)."""
    return list(_index())


def variants_of(base_id: str) -> list[CatalogEntry]:
    """The instruction-tuned / chat variants of the base entry ``base_id``."""
    return [entry for entry in _all_entries() if entry.variant_of == base_id]


def find_entry(name: str) -> CatalogEntry | None:
    """The catalog entry for an id, old id or alias (case-insensitive), or None."""
    return _by_name().get(name.strip().lower())


def catalog_config(entry: CatalogEntry) -> dict[str, Any]:
    """The bundled config.json of ``entry`` (a variant: its base's, with its own values)."""
    path = _HERE / "models" / entry.file
    if not path.is_file():
        path = _HERE / entry.file
    config: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    for key, value in entry.overrides:
        _set_field(config, key, value)
    return config


def _set_field(config: dict[str, Any], key: str, value: Any) -> None:
    """Set ``key`` in ``config``; ``text_config.max_position_embeddings`` reaches into a
    nested config (a multimodal checkpoint's text model)."""
    *parents, last = key.split(".")
    node = config
    for part in parents:
        node = node.setdefault(part, {})
    node[last] = value


def suggestions(name: str, n: int = 3) -> list[str]:
    """Catalog names close to ``name`` (difflib ratio, then substring)."""
    table = _by_name()
    lowered = name.strip().lower()
    close = difflib.get_close_matches(lowered, list(table), n=n, cutoff=0.6)
    tail = lowered.rsplit("/", 1)[-1]
    if len(close) < n:
        close += difflib.get_close_matches(tail, list(table), n=n, cutoff=0.6)
    if len(close) < n and len(tail) >= 3:
        close += [key for key in table if tail in key]
    ids: list[str] = []
    for key in close:
        entry_id = table[key].id
        if entry_id not in ids:
            ids.append(entry_id)
    return ids[:n]


def _looks_like_path(name: str) -> bool:
    return (
        name.startswith((".", "/", "~"))
        or name.endswith(".json")
        or os.sep in name.strip("/").split("/", 1)[-1]
        or name.count("/") > 1
    )


def _unknown(name: str, tried_hub: bool = False) -> UnknownModelError:
    close = suggestions(name)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    if tried_hub:
        hint += " (not in the catalog, and the Hugging Face hub has no such repo; a private one needs HF_TOKEN)"
    return UnknownModelError(
        f"unknown model {name!r}{hint} (`memplan models` lists the catalog; a config.json path "
        "or model folder works too)"
    )


def resolve(name: str, *, allow_hub: bool = True) -> ModelSpec:
    """A :class:`ModelSpec` for a catalog name, a local config.json or folder, or a hub id."""
    from memplan.specs.hf import spec_from_config

    name = name.strip()
    if not name:
        raise UnknownModelError("no model given: pass a catalog name, HF repo id or path")
    path = Path(name).expanduser()
    if path.exists():
        from memplan.catalog.local import load_local

        return load_local(path)
    entry = find_entry(name)
    if entry is not None:
        try:
            config = catalog_config(entry)
        except (OSError, json.JSONDecodeError) as exc:
            raise ConfigError(f"catalog file for {entry.id} is unreadable: {exc}") from exc
        return spec_from_config(config, name=entry.id, source="catalog")
    if _looks_like_path(name):
        raise UnknownModelError(
            f"no such file or folder: {name!r} (give a config.json path or a model folder)"
        )
    if allow_hub and "/" in name and not os.environ.get(OFFLINE_ENV):
        from memplan.catalog.hub import fetch_config, hub_available

        if hub_available():
            fetched = fetch_config(name)
            if fetched is not None:
                return spec_from_config(fetched, name=name, source="hub")
            raise _unknown(name, tried_hub=True)
    raise _unknown(name)
