"""Resolving names offline: ids, old ids, aliases, case, paths, folders, safetensors headers."""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

import pytest

from memplan.catalog import list_models, resolve, suggestions
from memplan.catalog.local import read_safetensors_header, summarize_checkpoint
from memplan.errors import ConfigError, UnknownModelError
from memplan.estimate.params import params_report
from memplan.formulas.params import total_params

TINY: dict[str, Any] = {
    "model_type": "llama",
    "vocab_size": 100,
    "hidden_size": 16,
    "num_hidden_layers": 1,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "intermediate_size": 32,
    "tie_word_embeddings": True,
    "torch_dtype": "bfloat16",
}
# embed 1600; q 256, k 128, v 128, o 256; mlp 3 x 512; 2 norms 32; final norm 16
TINY_PARAMS = 1600 + 256 + 128 + 128 + 256 + 3 * 512 + 32 + 16


def test_catalog_has_forty_models() -> None:
    assert len(list_models()) >= 40


@pytest.mark.parametrize(
    "name",
    [
        "meta-llama/Llama-3.1-8B",
        "META-LLAMA/llama-3.1-8b",
        "meta-llama/Meta-Llama-3.1-8B",
        "llama-3.1-8b",
        "  llama3.1-8b ",
        "Llama-3.1-8B",
    ],
)
def test_names_resolve_to_the_same_model(name: str) -> None:
    spec = resolve(name)
    assert spec.name == "meta-llama/Llama-3.1-8B"
    assert total_params(spec) == 8_030_261_248


def test_renamed_gpt2_repo() -> None:
    assert resolve("gpt2-xl").name == "openai-community/gpt2-xl"


def test_unknown_model_suggests_close_names() -> None:
    with pytest.raises(UnknownModelError, match="did you mean meta-llama/Llama-2-7b-hf"):
        resolve("llama-2-7bb")
    assert "openai-community/gpt2-xl" in suggestions("gpt2-xxl")


def test_hub_id_offline_is_unknown() -> None:
    with pytest.raises(UnknownModelError, match="unknown model"):
        resolve("someone/not-a-real-model")


def test_config_path_and_folder(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps(TINY))
    by_file = resolve(str(tmp_path / "config.json"))
    by_folder = resolve(str(tmp_path))
    assert total_params(by_file) == total_params(by_folder) == TINY_PARAMS
    assert by_folder.dtype == "bfloat16"


def test_missing_path(tmp_path: Path) -> None:
    with pytest.raises(UnknownModelError, match="no such file"):
        resolve(str(tmp_path / "nope" / "config.json"))
    with pytest.raises(UnknownModelError, match=r"has no config\.json"):
        resolve(str(tmp_path))


def test_malformed_json(tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    path.write_text('{"model_type": "llama", "hidden_size": 16,,}')
    with pytest.raises(ConfigError, match="not valid JSON"):
        resolve(str(path))


def _write_safetensors(path: Path, tensors: dict[str, tuple[str, list[int]]]) -> None:
    widths = {"BF16": 2, "F32": 4}
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, (dtype, shape) in tensors.items():
        size = widths[dtype]
        for dim in shape:
            size *= dim
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + size]}
        offset += size
    blob = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(blob)) + blob + b"\0" * offset)


def _tiny_tensors() -> dict[str, tuple[str, list[int]]]:
    p = "model.layers.0."
    return {
        "model.embed_tokens.weight": ("BF16", [100, 16]),
        p + "self_attn.q_proj.weight": ("BF16", [16, 16]),
        p + "self_attn.k_proj.weight": ("BF16", [8, 16]),
        p + "self_attn.v_proj.weight": ("BF16", [8, 16]),
        p + "self_attn.o_proj.weight": ("BF16", [16, 16]),
        p + "mlp.gate_proj.weight": ("BF16", [32, 16]),
        p + "mlp.up_proj.weight": ("BF16", [32, 16]),
        p + "mlp.down_proj.weight": ("BF16", [16, 32]),
        p + "input_layernorm.weight": ("F32", [16]),
        p + "post_attention_layernorm.weight": ("F32", [16]),
        "model.norm.weight": ("F32", [16]),
    }


def test_safetensors_header_cross_check(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps(TINY))
    _write_safetensors(tmp_path / "model.safetensors", _tiny_tensors())
    header = read_safetensors_header(tmp_path / "model.safetensors")
    assert header["model.norm.weight"]["shape"] == [16]
    summary = summarize_checkpoint(tmp_path)
    assert summary is not None
    assert summary.n_params == TINY_PARAMS
    assert summary.params_by_dtype == {"BF16": TINY_PARAMS - 48, "F32": 48}
    report = params_report(resolve(str(tmp_path)))
    assert any("agrees with the config" in note for note in report.notes)


def test_sharded_checkpoint_mismatch_is_reported(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps(TINY))
    tensors = _tiny_tensors()
    tensors["lm_head.weight"] = ("BF16", [100, 16])  # a stored copy of the tied matrix
    names = list(tensors)
    _write_safetensors(tmp_path / "a.safetensors", {k: tensors[k] for k in names[:6]})
    _write_safetensors(tmp_path / "b.safetensors", {k: tensors[k] for k in names[6:]})
    weight_map = {k: "a.safetensors" if i < 6 else "b.safetensors" for i, k in enumerate(names)}
    index = {"metadata": {"total_size": 1}, "weight_map": weight_map}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    report = params_report(resolve(str(tmp_path)))
    assert any("+1,600 vs the config" in note for note in report.notes)


def test_index_without_shards(tmp_path: Path) -> None:
    index = {"metadata": {"total_size": 1234}, "weight_map": {"x": "model-1.safetensors"}}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    summary = summarize_checkpoint(tmp_path)
    assert summary is not None and summary.n_params is None and summary.total_bytes == 1234


def test_truncated_safetensors(tmp_path: Path) -> None:
    (tmp_path / "model.safetensors").write_bytes(b"\x01\x02")
    with pytest.raises(ConfigError, match="too short"):
        read_safetensors_header(tmp_path / "model.safetensors")
