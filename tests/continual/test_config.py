"""`ContinualConfig`: defaults, bounds named `continual.field`, stray strategy fields refused, no torch."""

from __future__ import annotations

import subprocess
import sys

import pytest

from lorafleet.continual import ContinualConfig
from lorafleet.errors import ConfigError


def test_defaults_train_without_a_strategy() -> None:
    config = ContinualConfig()
    assert config.strategy == "none"
    assert 0 < config.replay_share < 1 and config.orthogonal_r is None and config.replay_paths == []


def test_every_field_is_described() -> None:
    for name, field in ContinualConfig.model_fields.items():
        assert field.description, name


@pytest.mark.parametrize(
    ("values", "field"),
    [
        ({"strategy": "replay", "replay_share": 1.0}, "continual.replay_share"),
        ({"strategy": "replay", "replay_share": 0.0}, "continual.replay_share"),
        ({"strategy": "replay", "replay_max_rows": 0}, "continual.replay_max_rows"),
        ({"strategy": "replay", "replay_paths": [" "]}, "continual.replay_paths"),
        ({"strategy": "ewc", "ewc_lambda": 0.0}, "continual.ewc_lambda"),
        ({"strategy": "ewc", "fisher_rows": 0}, "continual.fisher_rows"),
        ({"strategy": "orthogonal", "orthogonal_lambda": -1.0}, "continual.orthogonal_lambda"),
        ({"strategy": "orthogonal", "orthogonal_r": 0}, "continual.orthogonal_r"),
        ({"strategy": "progressive"}, "continual.strategy"),
        ({"replay_shares": 0.3}, "continual.replay_shares"),
    ],
)
def test_bad_values_name_the_field(values: dict[str, object], field: str) -> None:
    with pytest.raises(ConfigError) as err:
        ContinualConfig.parse(**values)
    assert field in str(err.value)
    assert err.value.field == field


def test_a_field_of_another_strategy_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"ewc_lambda only apply to strategy 'ewc'.*strategy is 'replay'"):
        ContinualConfig.parse(strategy="replay", ewc_lambda=10.0)
    with pytest.raises(ConfigError, match="replay_share"):
        ContinualConfig.parse(replay_share=0.5)  # strategy none


def test_each_strategy_takes_its_own_fields() -> None:
    assert (
        ContinualConfig.parse(strategy="replay", replay_share=0.5, replay_paths=["old.jsonl"]).replay_share
        == 0.5
    )
    assert ContinualConfig.parse(strategy="ewc", ewc_lambda=5.0, fisher_rows=64).fisher_rows == 64
    assert ContinualConfig.parse(strategy="orthogonal", orthogonal_r=2).orthogonal_r == 2


def test_the_schema_imports_no_torch() -> None:
    code = "import sys, lorafleet.continual.config; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_the_parents_rows_serve_replay_and_ewc_only() -> None:
    assert ContinualConfig.parse(strategy="ewc", replay_paths=["parent.jsonl"]).replay_paths == [
        "parent.jsonl"
    ]
    assert ContinualConfig.parse(strategy="replay", replay_paths=["parent.jsonl"]).replay_paths
    with pytest.raises(ConfigError, match=r"replay_paths only apply to strategy 'replay' or 'ewc'"):
        ContinualConfig.parse(strategy="orthogonal", replay_paths=["parent.jsonl"])
