"""The recipe's federated: section: defaults, and bad input failing with the field named."""

from __future__ import annotations

from pathlib import Path

import pytest

from lorafleet.errors import ConfigError
from lorafleet.federated.simulation import check_simulated_data
from lorafleet.training import load_config
from tests.helpers import assert_friendly_error, invoke

BASE = ["data.path=rows-{client}.jsonl"]


@pytest.mark.parametrize(
    ("override", "field"),
    [
        ("federated.fraction=0", "federated.fraction"),
        ("federated.fraction=1.5", "federated.fraction"),
        ("federated.rounds=0", "federated.rounds"),
        ("federated.strategy=fedsgd", "federated.strategy"),
        ("federated.local_steps=-1", "federated.local_steps"),
        ("federated.privacy.delta=2", "federated.privacy.delta"),
        ("federated.privacy.clip_norm=0", "federated.privacy.clip_norm"),
        ("federated.max_update_norm=0", "federated.max_update_norm"),
        ("federated.clinets=3", "federated.clinets"),
    ],
)
def test_bad_values_name_the_field(override: str, field: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(None, [*BASE, override])
    assert field in str(caught.value)
    assert caught.value.field == field


@pytest.mark.parametrize(
    ("overrides", "needle"),
    [
        (["federated.proximal_mu=0.1"], "proximal_mu only applies to strategy 'fedprox'"),
        (["federated.privacy.delta=1e-5"], "privacy needs epsilon (a budget) or noise_multiplier"),
        (["federated.clients=2", "federated.min_clients=3"], "min_clients (3) exceeds clients (2)"),
    ],
)
def test_inconsistent_settings_are_named(overrides: list[str], needle: str) -> None:
    with pytest.raises(ConfigError, match="federated") as caught:
        load_config(None, [*BASE, *overrides])
    assert needle in str(caught.value)


def test_defaults_and_fedprox() -> None:
    config = load_config(None, [*BASE, "federated.strategy=fedprox", "federated.proximal_mu=0.1"])
    assert config.federated.proximal_mu == 0.1 and config.federated.privacy is None
    assert config.federated.expected_clients() == pytest.approx(3.0)


def test_the_shipped_federated_recipe_names_each_clients_rows() -> None:
    config = load_config(Path(__file__).parents[2] / "configs" / "federated.yaml")
    assert config.federated.clients == 10 and config.federated.fraction == 0.3
    assert config.data.path.format(client=3) == "data/fed/client-03/train.jsonl"


def test_a_simulation_needs_each_clients_rows(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"data.path: 'one.jsonl' must hold \{client\}"):
        check_simulated_data(load_config(None, ["data.path=one.jsonl"]))
    (tmp_path / "c0.jsonl").write_text("{}\n")
    pattern = str(tmp_path / "c{client}.jsonl")
    with pytest.raises(ConfigError, match=r"data\.path: no rows for client 1"):
        check_simulated_data(
            load_config(None, [f"data.path={pattern}", "federated.clients=2", "federated.min_clients=1"])
        )


def test_the_cli_names_the_field_in_one_line(tmp_path: Path) -> None:
    recipe = tmp_path / "fed.yaml"
    recipe.write_text("data: {path: 'rows-{client}.jsonl'}\nfederated: {fraction: 0}\n")
    assert_friendly_error(invoke("federate", str(recipe)), "federated.fraction")
    recipe.write_text("data: {path: rows.jsonl}\n")
    assert_friendly_error(invoke("federate", str(recipe)), "data.path", "{client}")
    assert_friendly_error(
        invoke("fl", "client", "--data", str(tmp_path / "missing.jsonl")), "--data", "no such file"
    )
    rows = tmp_path / "rows.jsonl"
    rows.write_text("{}\n")
    named = invoke("fl", "client", "--data", str(rows), "--name", 'site "a"')
    assert_friendly_error(named, "--name", "letters")
