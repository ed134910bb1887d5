"""Adaptation policies: defaults that make sense, files read as YAML or JSON, every bad field named."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lorafleet.errors import ConfigError
from lorafleet.rollout import AdaptationPolicy


def test_the_defaults_watch_production_for_drift_and_retrain_with_replay() -> None:
    policy = AdaptationPolicy.parse({})

    assert policy.alias == "production"
    assert policy.triggers.drift is not None and policy.triggers.quality is None
    assert policy.train.continual.strategy == "replay"
    assert 0 < policy.canary.percent < 100 and policy.gate is None


def test_a_yaml_and_a_json_file_give_the_same_policy(tmp_path: Path) -> None:
    body = {
        "alias": "production",
        "triggers": {"drift": {"p_value": 0.001, "window": 200}, "quality": {"below": 0.8}},
        "train": {"min_corrections": 50, "continual": {"strategy": "ewc", "ewc_lambda": 1e6}},
        "gate": {"max_forgetting": 0.02, "max_general_drift": 0.05},
        "canary": {"percent": 5, "min_requests": 200},
    }
    (tmp_path / "p.json").write_text(json.dumps(body))
    (tmp_path / "p.yaml").write_text(
        "triggers:\n  drift: {p_value: 0.001, window: 200}\n  quality: {below: 0.8}\n"
        "train:\n  min_corrections: 50\n  continual: {strategy: ewc, ewc_lambda: 1.0e+6}\n"
        "gate: {max_forgetting: 0.02, max_general_drift: 0.05}\ncanary: {percent: 5, min_requests: 200}\n"
    )

    assert AdaptationPolicy.from_file(tmp_path / "p.json") == AdaptationPolicy.from_file(tmp_path / "p.yaml")


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"canary": {"percent": 100}}, "policy.canary.percent"),
        ({"canary": {"percnt": 10}}, "policy.canary.percnt"),
        ({"triggers": {"drift": None}}, "policy.triggers"),
        ({"triggers": {"quality": {"below": 1.5}}}, "policy.triggers.quality.below"),
        ({"train": {"continual": {"strategy": "replay", "ewc_lambda": 5}}}, "policy.train.continual"),
        ({"gate": {"max_forgetting": 2}}, "policy.gate.max_forgetting"),
    ],
)
def test_a_bad_field_is_named(body: dict[str, object], field: str) -> None:
    with pytest.raises(ConfigError) as err:
        AdaptationPolicy.parse(body)
    assert err.value.field == field, str(err.value)


def test_a_file_that_is_not_a_policy_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text("- just\n- a list\n")
    with pytest.raises(ConfigError, match=r"p\.yaml: policy: expected a mapping"):
        AdaptationPolicy.from_file(path)
    path.write_text("canary: {percent: [\n")
    with pytest.raises(ConfigError, match=r"p\.yaml: cannot read"):
        AdaptationPolicy.from_file(path)
