"""`ContinualConfig`: how a child version guards what its parent learned (the recipe's `continual:` section).

Strategies (the math is in the module of each):

- `none`:       train the child on the new rows only.
- `replay`:     a `replay_share` of every optimizer step's rows comes from the parent's own training rows,
                at most `replay_max_rows` of them (`continual.replay`); with `replay_mode: added` they
                come on top of a full step of new rows instead of taking a share of it.
- `ewc`:        add λ/2 Σᵢ Fᵢ(θᵢ − θ*ᵢ)² to the loss, F the parent's diagonal Fisher estimated on
                `fisher_rows` of its rows, θ* the parent's LoRA weights (`continual.ewc`).
- `orthogonal`: O-LoRA: freeze the parent, train a new rank-`orthogonal_r` adapter with
                λ Σ ‖A_parent A_newᵀ‖²_F added to the loss; serve both as one `cat` adapter
                (`continual.orthogonal`).

Any strategy, and a version trained without a parent too, can also rehearse the base model's general
ability: a `rehearsal_share` of every step's rows are the base's own answers to general prompts shipped
with the package (`training.rehearsal`).

This schema imports no torch, so the API can validate a recipe cheaply. What it cannot check is left to
whoever knows the parent version: that `replay` has rows to replay (the registry's rows of the parent,
or `replay_paths` when running locally), and that `ewc` has a Fisher stored with the parent (or rows to
estimate one).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from lorafleet.errors import validated

Strategy = Literal["none", "replay", "ewc", "orthogonal"]

# The strategies that read each field: setting one under another strategy is a mistake worth naming.
_READ_BY: dict[str, tuple[str, ...]] = {
    "replay_share": ("replay",),
    "replay_max_rows": ("replay",),
    "replay_mode": ("replay",),
    "replay_paths": ("replay", "ewc"),  # the parent's rows: replayed, or the Fisher's rows
    "ewc_lambda": ("ewc",),
    "fisher_rows": ("ewc",),
    "orthogonal_lambda": ("orthogonal",),
    "orthogonal_r": ("orthogonal",),
}


class ContinualConfig(BaseModel):
    """The strategy against forgetting used when a version is trained from a parent version."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    strategy: Strategy = Field(
        "none",
        description="none; replay (mix the parent's rows in); ewc (elastic weight consolidation on the "
        "LoRA weights); orthogonal (O-LoRA: a new adapter orthogonal to the frozen parent).",
    )
    replay_share: float = Field(
        0.25,
        gt=0.0,
        lt=1.0,
        description="replay: fraction of each optimizer step's rows drawn from the parent's rows "
        "(round(share × rows per step) of them).",
    )
    replay_mode: Literal["share", "added"] = Field(
        "share",
        description="replay: share (the parent's rows take replay_share of each step's rows, so a step "
        "holds fewer new rows) or added (round(replay_share × rows per step) parent rows come on top of a "
        "full step of new rows: each step learns as many new rows as without replay, at more compute).",
    )
    replay_max_rows: int = Field(
        10_000, ge=1, le=10**8, description="replay: at most this many distinct parent rows are replayed."
    )
    replay_paths: list[str] = Field(
        default_factory=list,
        max_length=64,
        description="replay and ewc: data files holding the parent's training rows, replayed (replay) or "
        "used to estimate its Fisher when none is stored with it (ewc); the server's jobs name the "
        "parent version's own file.",
    )
    ewc_lambda: float = Field(
        100.0, gt=0.0, le=1e9, description="ewc: weight λ of the penalty λ/2 Σ F(θ − θ*)²."
    )
    fisher_rows: int = Field(
        256,
        ge=1,
        le=10**6,
        description="ewc: parent rows used to estimate its diagonal Fisher (once, stored with the parent).",
    )
    rehearsal_share: float = Field(
        0.0,
        ge=0.0,
        lt=1.0,
        description="any strategy, with or without a parent: fraction of each optimizer step's rows that "
        "are the base model's own answers to general prompts shipped with the package (general "
        "rehearsal, against drift from the base's general ability); 0 turns it off.",
    )
    orthogonal_lambda: float = Field(
        0.5, gt=0.0, le=1e6, description="orthogonal: weight λ of the overlap penalty λ Σ ‖A_p A_newᵀ‖²_F."
    )
    orthogonal_r: int | None = Field(
        None,
        ge=1,
        le=4096,
        description="orthogonal: rank of the new adapter; default: the recipe's lora.r, else the parent's.",
    )

    @field_validator("replay_paths")
    @classmethod
    def _check_paths(cls, value: list[str]) -> list[str]:
        for path in value:
            if not path.strip():
                raise ValueError("replay_paths holds an empty path; name a data file (jsonl, csv, parquet)")
        return value

    @model_validator(mode="after")
    def _check_strategy_fields(self) -> ContinualConfig:
        for name in sorted(self.model_fields_set & _READ_BY.keys()):
            readers = _READ_BY[name]
            if self.strategy not in readers:
                raise ValueError(
                    f"{name} only apply to strategy {' or '.join(map(repr, readers))}, but strategy is "
                    f"{self.strategy!r}; set strategy: {readers[0]} or remove it"
                )
        return self

    @classmethod
    def parse(cls, **values: object) -> ContinualConfig:
        """Build from untrusted values, raising `ConfigError` that names the bad field (`continual.…`)."""
        return validated(cls, "continual", **values)
