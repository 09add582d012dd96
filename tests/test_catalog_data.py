"""The bundled model catalog data: every config.json file and the models.json index.

No torch here: these tests read JSON only. The exact parameter counts are checked against
the published figures by ``test_published_params.py``, against transformers by
``scripts/verify_catalog.py`` and by the trace tests.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

CATALOG_DIR = Path(__file__).resolve().parent.parent / "src" / "memplan" / "catalog"
MODELS_DIR = CATALOG_DIR / "models"

SUPPORTED_MODEL_TYPES = frozenset(
    {
        "llama",
        "mistral",
        "mixtral",
        "qwen2",
        "qwen2_moe",
        "qwen3",
        "qwen3_moe",
        "gemma",
        "gemma2",
        "gemma3_text",
        "phi3",
        "gpt2",
        "gpt_neox",
        "gpt_bigcode",
        "falcon",
        "olmo",
        "olmo2",
        "starcoder2",
        "deepseek_v2",
        "deepseek_v3",
        "gpt_oss",
        "qwen3_next",
        "gemma3",
        "llama4",
        "mistral3",
    }
)
"""The top-level model_types of the bundled configs (``llama4_text`` appears inside ``llama4``
configs only)."""

ENTRY_KEYS = frozenset(
    {
        "id",
        "file",
        "old_ids",
        "aliases",
        "family",
        "config_source",
        "published_params",
        "published_params_source",
    }
)


def load_index() -> list[dict[str, Any]]:
    return json.loads((CATALOG_DIR / "models.json").read_text())["models"]


def load_config(file_name: str) -> dict[str, Any]:
    return json.loads((MODELS_DIR / file_name).read_text())


CONFIG_FILES = sorted(p.name for p in MODELS_DIR.glob("*.json"))
ENTRIES = load_index()


@pytest.mark.parametrize("file_name", CONFIG_FILES)
def test_config_file_is_a_json_object_with_a_supported_model_type(file_name: str) -> None:
    config = load_config(file_name)
    assert isinstance(config, dict)
    assert config.get("model_type") in SUPPORTED_MODEL_TYPES


@pytest.mark.parametrize("entry", ENTRIES, ids=[e["id"] for e in ENTRIES])
def test_entry_has_its_fields_and_points_to_an_existing_file(entry: dict[str, Any]) -> None:
    assert set(entry) >= ENTRY_KEYS
    assert (MODELS_DIR / entry["file"]).is_file()
    assert entry["file"] == entry["id"].replace("/", "--") + ".json"
    assert isinstance(entry["old_ids"], list) and isinstance(entry["aliases"], list)
    assert entry["config_source"].startswith(("verbatim", "reconstructed"))
    published = entry["published_params"]
    assert published is None or (isinstance(published, int) and published > 0)
    assert (published is None) == (entry["published_params_source"] is None)


def test_every_config_file_is_in_the_index() -> None:
    assert sorted(e["file"] for e in ENTRIES) == CONFIG_FILES


def test_names_are_unique_case_insensitively() -> None:
    names = [
        name.lower()
        for entry in ENTRIES
        for name in (entry["id"], *entry["old_ids"], *entry["aliases"])
    ]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    assert duplicates == []


def test_aliases_are_short_and_lower_case() -> None:
    for entry in ENTRIES:
        for alias in entry["aliases"]:
            assert alias == alias.lower() and " " not in alias and "/" not in alias, alias


def test_catalog_has_at_least_45_models() -> None:
    assert len(ENTRIES) >= 45


def test_every_bundled_model_type_is_represented() -> None:
    present = {load_config(e["file"])["model_type"] for e in ENTRIES}
    assert present == SUPPORTED_MODEL_TYPES


def test_renamed_repos_answer_to_their_old_ids() -> None:
    by_old_id = {old: e["id"] for e in ENTRIES for old in e["old_ids"]}
    assert by_old_id["gpt2-xl"] == "openai-community/gpt2-xl"
    assert by_old_id["meta-llama/Meta-Llama-3.1-8B"] == "meta-llama/Llama-3.1-8B"


def test_llama_2_7b_published_count_is_seed_000s_measured_count() -> None:
    entry = next(e for e in ENTRIES if e["id"] == "meta-llama/Llama-2-7b-hf")
    assert entry["published_params"] == 6_738_415_616


def test_tied_and_untied_configs_say_so_where_the_class_default_would_mislead() -> None:
    # StarCoder2's config class ties embeddings by default; the 15B checkpoint does not.
    assert load_config("bigcode--starcoder2-15b.json")["tie_word_embeddings"] is False
    assert "tie_word_embeddings" not in load_config("bigcode--starcoder2-3b.json")
    assert load_config("meta-llama--Llama-3.2-1B.json")["tie_word_embeddings"] is True


def test_deepseek_v3_keeps_its_quantization_config() -> None:
    config = load_config("deepseek-ai--DeepSeek-V3.json")
    assert config["quantization_config"]["quant_method"] == "fp8"
    assert config["quantization_config"]["weight_block_size"] == [128, 128]


def test_phi_3_5_longrope_factors_have_one_entry_per_rotary_frequency() -> None:
    config = load_config("microsoft--Phi-3.5-mini-instruct.json")
    head_dim = config["hidden_size"] // config["num_attention_heads"]
    rope = config["rope_scaling"]
    assert rope["type"] == "longrope"
    assert len(rope["long_factor"]) == len(rope["short_factor"]) == head_dim // 2
