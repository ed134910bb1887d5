"""Saving and loading: the sidecar, clean failures on bad input, and nothing half-written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import PreTrainedModel

from lorafleet.adapters import load_adapter, read_adapter
from lorafleet.adapters.inspection import inspect_adapter
from lorafleet.adapters.storage import SIDECAR_FILE, WEIGHTS_FILE, adapter_path, write_adapter
from lorafleet.errors import (
    AdapterError,
    AlreadyExistsError,
    BaseModelMismatchError,
    CorruptFileError,
    InvalidNameError,
)
from lorafleet.models import tiny_model
from tests.helpers import AdapterFactory


def test_sidecar_records_base_and_time(
    tmp_path: Path, tiny_base: PreTrainedModel, make_adapter: AdapterFactory
) -> None:
    path = make_adapter(tiny_base, tmp_path / "a")
    card = json.loads((path / SIDECAR_FILE).read_text())
    assert card["base_model"]["id"] == "lorafleet/tiny-llama"
    assert len(card["base_model"]["fingerprint"]) == 64
    assert "model.layers.0.self_attn.q_proj" in card["base_model"]["modules"]
    assert card["created_at"].startswith("20") and card["lineage"]["method"] == "train"


def test_fingerprint_ignores_dtype_but_not_weights(tiny_base: PreTrainedModel) -> None:
    from lorafleet.adapters import base_identity

    fp32 = base_identity(tiny_base).fingerprint
    assert base_identity(tiny_model("llama", seed=0, dtype=torch.bfloat16)[0]).fingerprint == fp32
    assert base_identity(tiny_model("llama", seed=1)[0]).fingerprint != fp32


def test_other_base_is_refused_naming_the_first_module(
    tmp_path: Path, tiny_base: PreTrainedModel, make_adapter: AdapterFactory
) -> None:
    path = make_adapter(tiny_base, tmp_path / "a")
    other, _ = tiny_model("llama", seed=0)
    with torch.no_grad():
        other.model.layers[1].self_attn.k_proj.weight.add_(0.1)  # one module differs
    with pytest.raises(BaseModelMismatchError, match=r"module model\.layers\.1\.self_attn\.k_proj"):
        load_adapter(other, path)


def test_plain_peft_adapter_on_wrong_shapes_names_module(
    tmp_path: Path, tiny_base: PreTrainedModel, make_adapter: AdapterFactory
) -> None:
    path = make_adapter(tiny_base, tmp_path / "a")
    (path / SIDECAR_FILE).unlink()  # now a plain PEFT adapter: shapes are all we can check
    wider, _ = tiny_model("llama", hidden_size=64)
    with pytest.raises(BaseModelMismatchError, match=r"model\.layers\.0\.self_attn\.q_proj"):
        load_adapter(wider, path)


def test_truncated_weights_fail_cleanly(
    tmp_path: Path, tiny_base: PreTrainedModel, make_adapter: AdapterFactory
) -> None:
    path = make_adapter(tiny_base, tmp_path / "a")
    weights = path / WEIGHTS_FILE
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(CorruptFileError, match=WEIGHTS_FILE):
        load_adapter(tiny_base, path)


@pytest.mark.parametrize(
    ("damage", "error", "needle"),
    [
        (lambda p: (p / WEIGHTS_FILE).write_bytes(b"\x00" * 64), CorruptFileError, "safetensors"),
        (lambda p: (p / WEIGHTS_FILE).unlink(), AdapterError, "no adapter_model.safetensors"),
        (
            lambda p: (p / "adapter_config.json").write_text("{not json"),
            CorruptFileError,
            "adapter_config.json",
        ),
        (lambda p: (p / SIDECAR_FILE).write_text('{"format": 1}'), CorruptFileError, SIDECAR_FILE),
        (lambda p: (p / "adapter_config.json").unlink(), AdapterError, "no adapter_config.json"),
    ],
)
def test_damaged_directories_fail_cleanly(
    tmp_path: Path,
    tiny_base: PreTrainedModel,
    make_adapter: AdapterFactory,
    damage: object,
    error: type[Exception],
    needle: str,
) -> None:
    path = make_adapter(tiny_base, tmp_path / "a")
    damage(path)  # type: ignore[operator]
    with pytest.raises(error, match=needle):
        read_adapter(path)


def test_pickled_weights_are_refused(
    tmp_path: Path, tiny_base: PreTrainedModel, make_adapter: AdapterFactory
) -> None:
    path = make_adapter(tiny_base, tmp_path / "a")
    (path / WEIGHTS_FILE).rename(path / "adapter_model.bin")
    with pytest.raises(AdapterError, match="only safetensors"):
        read_adapter(path)


def test_missing_path(tmp_path: Path, tiny_base: PreTrainedModel) -> None:
    with pytest.raises(AdapterError, match="no such adapter directory"):
        load_adapter(tiny_base, tmp_path / "nope")


def test_existing_adapter_is_never_overwritten_by_accident(
    tmp_path: Path, tiny_base: PreTrainedModel, make_adapter: AdapterFactory
) -> None:
    path = make_adapter(tiny_base, tmp_path / "a", seed=1)
    before = (path / WEIGHTS_FILE).read_bytes()
    with pytest.raises(AlreadyExistsError, match="already exists"):
        make_adapter(tiny_base, path, seed=2)
    assert (path / WEIGHTS_FILE).read_bytes() == before


def test_failed_write_leaves_nothing(
    tmp_path: Path, tiny_base: PreTrainedModel, make_adapter: AdapterFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    config, state, card = read_adapter(make_adapter(tiny_base, tmp_path / "a"))
    assert card is not None

    def crash(*args: object, **kwargs: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr("lorafleet.adapters.storage.save_file", crash)
    with pytest.raises(OSError, match="disk full"):
        write_adapter(tmp_path / "b", config, state, card)
    assert [p.name for p in tmp_path.iterdir() if p.name != "home"] == ["a"]  # no b, no staging dir


def test_adapter_names_are_checked(lorafleet_home: Path) -> None:
    assert adapter_path("support-v2") == lorafleet_home / "adapters" / "support-v2"
    assert adapter_path("./x/y") == Path("./x/y")
    for bad in ("a..b", "-x", "a b", "x" * 65):
        with pytest.raises(InvalidNameError):
            adapter_path(bad)


def test_inspect_reports_the_adapter(
    tmp_path: Path, tiny_base: PreTrainedModel, make_adapter: AdapterFactory
) -> None:
    info = inspect_adapter(make_adapter(tiny_base, tmp_path / "a", r=4, alpha=8.0))
    assert (info.rank, info.alpha, info.targets, info.modules) == (4, 8.0, ["q_proj", "v_proj"], 4)
    # 2 layers × (q: A 4×32 + B 32×4, v: A 4×32 + B 16×4; v is narrower with 2 of 4 heads as KV heads)
    assert info.parameters == 2 * ((4 * 32 + 32 * 4) + (4 * 32 + 16 * 4))
    assert info.size_bytes > 0 and info.base_model == "lorafleet/tiny-llama"
