"""Every published parameter count of the catalog against memplan's exact count (no torch).

``catalog/models.json`` gives, per model, the figure its publisher states
(``published_params``, with ``published_params_source``: the Hugging Face model page's
safetensors total). memplan counts parameters from the config alone; the two must be equal.
Where a published figure counts something the model does not have, the entry says so beside
the data: ``published_params_exception`` names the kind and ``published_params_note`` explains
it. The difference each kind makes is computed here from the model's sizes, never typed in.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from memplan.catalog import resolve
from memplan.formulas.params import layer_params, linear_params, norm_params, total_params
from memplan.specs.model import AttentionType, ModelSpec

INDEX = Path(__file__).resolve().parent.parent / "src" / "memplan" / "catalog" / "models.json"
ENTRIES: list[dict[str, Any]] = json.loads(INDEX.read_text())["models"]
PUBLISHED = [e for e in ENTRIES if e["published_params"] is not None]


def _lm_head_stored_though_tied(spec: ModelSpec) -> int:
    """The checkpoint stores ``lm_head.weight`` (V x E) beside the embedding it is tied to;
    the safetensors total counts it, the model holds one tensor."""
    assert spec.tie_word_embeddings
    return spec.vocab_size * spec.hidden_size


def mtp_module_not_built(spec: ModelSpec) -> int:
    """Qwen3-Next's multi-token-prediction module (``mtp.*`` in the checkpoint, not built by
    transformers): one decoder layer with full attention and the MoE, ``fc`` Linear(2h, h)
    and three RMSNorm(h) (pre_fc_norm_embedding, pre_fc_norm_hidden, norm)."""
    full_moe = next(
        i
        for i in range(spec.n_layers)
        if spec.attention_type(i) is AttentionType.FULL and spec.is_moe_layer(i)
    )
    h = spec.hidden_size
    return layer_params(spec, full_moe) + linear_params(2 * h, h) + 3 * norm_params(spec, h)


EXCEPTIONS: dict[str, Callable[[ModelSpec], int]] = {
    "lm_head_stored_though_tied": _lm_head_stored_though_tied,
    "mtp_module_not_built": mtp_module_not_built,
}
"""Parameters a published figure counts beyond the model's own, by exception kind."""


@pytest.mark.parametrize("entry", PUBLISHED, ids=[e["id"] for e in PUBLISHED])
def test_published_count_equals_the_exact_count(entry: dict[str, Any]) -> None:
    spec = resolve(entry["id"])
    kind = entry.get("published_params_exception")
    beyond_the_model = EXCEPTIONS[kind](spec) if kind else 0
    assert total_params(spec) + beyond_the_model == entry["published_params"]


def test_every_published_count_is_a_test() -> None:
    """At least the 63 published counts issue 8 counted; each has its source."""
    assert len(PUBLISHED) >= 63
    assert all(e["published_params_source"] for e in PUBLISHED)


def test_exceptions_and_missing_figures_are_explained_beside_the_data() -> None:
    for entry in ENTRIES:
        kind = entry.get("published_params_exception")
        if kind is not None:
            assert kind in EXCEPTIONS, entry["id"]
            assert entry.get("published_params_note"), entry["id"]
        if entry["published_params"] is None:
            assert entry.get("published_params_note"), f"{entry['id']}: say why no figure"
