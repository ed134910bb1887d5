from __future__ import annotations

import pytest

from lorafleet.adapters import LoraSettings
from lorafleet.errors import ConfigError


def test_defaults_map_to_peft() -> None:
    config = LoraSettings(r=16, alpha=32, dropout=0.05, target_modules=["q_proj", "v_proj"]).to_peft()
    assert (config.r, config.lora_alpha, config.lora_dropout) == (16, 32, 0.05)
    assert set(config.target_modules) == {"q_proj", "v_proj"}
    assert config.init_lora_weights is True


def test_round_trip_through_peft() -> None:
    settings = LoraSettings(r=4, alpha=8, use_rslora=True, init="pissa_niter_4", modules_to_save=["lm_head"])
    assert LoraSettings.from_peft(settings.to_peft()) == settings


@pytest.mark.parametrize(
    ("field", "value", "needle"),
    [
        ("r", 0, "lora.r"),
        ("r", -3, "lora.r"),
        ("alpha", 0, "lora.alpha"),
        ("dropout", 1.0, "lora.dropout"),
        ("bias", "some", "lora.bias"),
        ("init", "kaiming", "lora.init"),
        ("target_modules", [], "lora.target_modules"),
        ("target_modules", ["q_proj;rm -rf"], "lora.target_modules"),
        ("target_modules", "([unclosed", "lora.target_modules"),
        ("rank", 8, "lora.rank"),
    ],
)
def test_bad_values_name_the_field(field: str, value: object, needle: str) -> None:
    with pytest.raises(ConfigError, match=needle.replace(".", r"\.")):
        LoraSettings.parse(**{field: value})


def test_settings_are_immutable() -> None:
    settings = LoraSettings()
    with pytest.raises(ValueError):
        settings.r = 3  # type: ignore[misc]
