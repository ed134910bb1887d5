"""DataConfig: unknown keys and out-of-range values are rejected, naming the field."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from lorafleet.data import DataConfig
from lorafleet.errors import ConfigError


def test_defaults() -> None:
    config = DataConfig(path="train.jsonl")
    assert (config.format, config.max_length, config.validation_fraction, config.packing) == (
        "auto",
        512,
        0.05,
        False,
    )
    assert not config.train_on_inputs and not config.skip_bad_rows and config.validation_path is None
    with pytest.raises(ValidationError):
        config.max_length = 1024  # type: ignore[misc]  # frozen


@pytest.mark.parametrize(
    ("values", "field"),
    [
        ({"path": "t.jsonl", "shuffle": True}, "shuffle"),
        ({"path": "t.jsonl", "max_length": 4}, "max_length"),
        ({"path": "t.jsonl", "max_length": 200_000}, "max_length"),
        ({"path": "t.jsonl", "validation_fraction": 0.9}, "validation_fraction"),
        ({"path": "t.jsonl", "validation_fraction": -0.1}, "validation_fraction"),
        ({"path": "t.jsonl", "format": "sharegpt"}, "format"),
        ({"path": "t.jsonl", "max_rows": 0}, "max_rows"),
        ({"path": "t.jsonl", "seed": -1}, "seed"),
        ({"path": " "}, "path"),
        ({"path": "t.jsonl", "validation_path": ""}, "validation_path"),
        ({}, "path"),
    ],
)
def test_rejects_bad_values_naming_the_field(values: dict[str, object], field: str) -> None:
    with pytest.raises(ValidationError) as info:
        DataConfig.model_validate(values)
    assert [error["loc"] for error in info.value.errors()] == [(field,)]
    with pytest.raises(ConfigError, match=rf"^data\.{field}: "):
        DataConfig.parse(**values)


def test_every_field_is_described() -> None:
    for name, field in DataConfig.model_fields.items():
        assert field.description, name
