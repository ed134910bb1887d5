"""An adaptation policy per served alias: when to retrain, what to train, the gate, and the canary.

    triggers.drift     the input-drift monitor (`monitoring.drift`) on the last `window` prompts the alias
                       served finds them unlike its version's training prompts: MMD p-value < `p_value`
    triggers.quality   the rolling quality score (`monitoring.quality.RollingScore`) of the last `window`
                       scored requests is below `below`, once at least `min_feedback` are scored; the
                       score is the users' feedback, or (`source: validator`) 1/0 for each answer that
                       the policy's `validator` accepts/refuses
    validator          a JSON Schema every answer should satisfy (`monitoring.quality.json_schema_validator`);
                       the share of valid answers is on the alias's monitor either way
    train              a continual job from the alias's version on the tenant's corrections (at least
                       `min_corrections` of them), guarded by `continual` as in a recipe (replay by
                       default), with `recipe` overrides (hyperparameters) checked by the jobs API
    gate               the promotion gate the new version must pass (`evaluation.gate.GatePolicy`); none:
                       the adapter's own gate policy
    canary             `percent` of the alias's users (sticky) get the new version until
                       `rollout.canary.decide` says promote or roll back

The schema imports no torch, so the API validates a policy cheaply; `AdaptationPolicy.parse` raises a
`ConfigError` naming the field at fault (`policy.canary.percent`).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

from lorafleet.continual.config import ContinualConfig
from lorafleet.errors import ConfigError, validated
from lorafleet.evaluation.gate import GatePolicy
from lorafleet.monitoring.quality import json_schema_validator


class DriftTrigger(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    p_value: float = Field(
        0.01, gt=0.0, lt=1.0, description="Retrain when the MMD test's p-value falls below this."
    )
    window: int = Field(
        100, ge=10, le=100_000, description="Recent prompts tested against the training ones."
    )


class QualityTrigger(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    below: float = Field(
        gt=0.0, le=1.0, description="Retrain when the rolling feedback score falls below this."
    )
    window: int = Field(100, ge=1, le=100_000, description="The last this many scored requests are averaged.")
    min_feedback: int = Field(20, ge=1, le=100_000, description="No verdict before this many are scored.")
    source: Literal["feedback", "validator"] = Field(
        "feedback", description="Score requests by users' feedback, or by the policy's validator."
    )

    @model_validator(mode="after")
    def _reachable(self) -> QualityTrigger:
        if self.min_feedback > self.window:
            raise ValueError(f"min_feedback ({self.min_feedback}) cannot exceed window ({self.window})")
        return self


class Triggers(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    drift: DriftTrigger | None = Field(default_factory=DriftTrigger, description="Input drift; null: off.")
    quality: QualityTrigger | None = Field(None, description="Feedback quality; null: off.")

    @model_validator(mode="after")
    def _one_at_least(self) -> Triggers:
        if self.drift is None and self.quality is None:
            raise ValueError("no trigger is on: set drift, quality, or both")
        return self


class TrainPlan(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    min_corrections: int = Field(
        20, ge=1, le=10**7, description="Corrections needed before a job is started (they are its rows)."
    )
    continual: ContinualConfig = Field(
        default_factory=lambda: ContinualConfig(strategy="replay"),
        description="How the job guards the alias's version (a recipe's continual: section).",
    )
    recipe: dict[str, Any] = Field(
        default_factory=dict,
        description="Recipe overrides for the job (hyperparameters), as in the jobs API.",
    )

    def job_recipe(self) -> dict[str, Any]:
        """The recipe fields of the job this plan starts (as the jobs API's `recipe`)."""
        continual = self.continual.model_dump(mode="json", exclude_defaults=True)
        return {**copy.deepcopy(self.recipe), "continual": {"strategy": self.continual.strategy, **continual}}


class CanaryPlan(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    percent: float = Field(
        10.0, gt=0.0, lt=100.0, description="Share of the alias's users on the canary, in percent."
    )
    min_requests: int = Field(
        100, ge=1, le=10**7, description="Scored canary requests needed before it may be promoted."
    )
    max_minutes: float = Field(
        60.0, gt=0.0, le=60 * 24 * 30, description="Rolled back when still undecided after this long."
    )
    alpha: float = Field(0.05, gt=0.0, lt=0.5, description="Level of the test that the canary is worse.")
    margin: float = Field(
        0.0, ge=0.0, le=1.0, description="Promoted when its mean score is at least production's minus this."
    )
    max_error_rate: float = Field(
        0.02, ge=0.0, le=1.0, description="Rolled back at once when more of its requests than this fail."
    )


class AdaptationPolicy(BaseModel):
    """Per alias: trigger → continual job → gate → canary → promote, or roll back."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    alias: str = Field(
        "production", min_length=1, max_length=64, description="The alias this policy watches."
    )
    triggers: Triggers = Field(default_factory=Triggers)
    train: TrainPlan = Field(default_factory=TrainPlan)
    gate: GatePolicy | None = Field(
        None, description="The gate for the new version; null: the adapter's own."
    )
    canary: CanaryPlan = Field(default_factory=CanaryPlan)
    validator: dict[str, Any] | None = Field(
        None, description="A JSON Schema each answer should satisfy (the task validator); null: none."
    )

    @model_validator(mode="after")
    def _validator_is_a_schema(self) -> AdaptationPolicy:
        if self.validator is not None:
            try:
                json_schema_validator(self.validator)
            except ConfigError as err:
                raise ValueError(f"validator: {err}") from None
        elif self.triggers.quality is not None and self.triggers.quality.source == "validator":
            raise ValueError("triggers.quality.source is validator, but the policy has no validator")
        return self

    @classmethod
    def parse(cls, data: Any) -> AdaptationPolicy:
        """Build from untrusted data, raising `ConfigError` naming the bad field (`policy.…`)."""
        if not isinstance(data, dict):
            raise ConfigError(
                "policy: expected a mapping of alias, triggers, train, gate, canary; "
                f"got {type(data).__name__}",
                field="policy",
            )
        if not all(isinstance(key, str) for key in data):
            raise ConfigError("policy: every key must be a string", field="policy")
        return validated(cls, "policy", **data)

    @classmethod
    def from_file(cls, path: str | Path) -> AdaptationPolicy:
        """Read a YAML or JSON policy file (JSON is YAML); errors name the file."""
        path = Path(path)
        try:
            data = yaml.safe_load(path.read_text())
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
            raise ConfigError(f"{path}: cannot read the policy: {err}", field="policy") from err
        try:
            return cls.parse(data)
        except ConfigError as err:
            raise ConfigError(f"{path}: {err}", field=err.field) from None
