"""`DataConfig`: where the training rows come from and how they become token ids, validated."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from lorafleet.errors import validated

FormatName = Literal["auto", "text", "prompt_completion", "alpaca", "chat"]


class DataConfig(BaseModel):
    """The data section of a training recipe: files, row format, lengths, packing, masking and split."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    path: str = Field(
        description="Training rows: a .jsonl/.json, .csv or .parquet file, or a `datasets` directory "
        "written by save_to_disk (a DatasetDict's 'train' split is used).",
    )
    format: FormatName = Field(
        "auto",
        description="Row format: text {text}; prompt_completion {prompt, completion}; alpaca "
        "{instruction, input, output}; chat {messages: [{role, content}]}; auto: from the first row.",
    )
    validation_path: str | None = Field(
        None, description="A separate held-out file in the same format; when unset, `path` is split."
    )
    validation_fraction: float = Field(
        0.05,
        ge=0.0,
        le=0.5,
        description="Share of `path`'s rows held out for validation (0: none); unused with validation_path.",
    )
    max_length: int = Field(
        512, ge=8, le=131072, description="Tokens per example (or per packed sequence); longer rows are cut."
    )
    packing: bool = Field(
        False,
        description="Pack short examples together into sequences of max_length tokens; attention stays "
        "inside each example. Off by default (batches are grouped by length); training's data line says "
        "what packing would save on these rows.",
    )
    train_on_inputs: bool = Field(
        False, description="Compute the loss on prompt tokens too, not only on completions / assistant turns."
    )
    skip_bad_rows: bool = Field(
        False, description="Drop and count malformed rows instead of failing on the first one."
    )
    seed: int = Field(0, ge=0, le=2**32 - 1, description="Seed of the train/validation split and shuffling.")
    system_prompt: str | None = Field(
        None,
        max_length=100_000,
        description="A system message put before prompt/alpaca/chat rows that have none.",
    )
    scrub: bool = Field(
        False,
        description="Replace PHI/PII (names, dates, record numbers, phones, e-mails, addresses) with "
        "consistent pseudonyms before training (the `privacy` extra; .jsonl files only); the scrubbed "
        "copy and its audit report go under $LORAFLEET_HOME/scrubbed/.",
    )
    max_rows: int | None = Field(
        None, ge=1, le=10**9, description="Use only the first N usable rows of each file (quick runs)."
    )

    @field_validator("path")
    @classmethod
    def _check_path(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("path is empty; name a .jsonl, .csv or .parquet file or a datasets directory")
        return value

    @field_validator("validation_path")
    @classmethod
    def _check_validation_path(cls, value: str | None) -> str | None:
        if value is not None and not value.strip():
            raise ValueError("validation_path is empty; leave it out to split validation rows from path")
        return value

    @model_validator(mode="after")
    def _check_scrub(self) -> DataConfig:
        if self.scrub:
            for path in (self.path, self.validation_path):
                if path is not None and not path.lower().endswith(".jsonl"):
                    raise ValueError(
                        f"scrub reads .jsonl files; {path} is not one (convert it or set scrub: false)"
                    )
        return self

    @classmethod
    def parse(cls, **values: object) -> DataConfig:
        """Build from untrusted values, raising `ConfigError` that names the bad field."""
        return validated(cls, "data", **values)
