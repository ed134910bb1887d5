"""`FinetuneConfig`: one schema for YAML recipes, `lorafleet train` flags and (later) the jobs API.

A recipe is YAML with the sections below; `--set section.field=value` overrides any field (the
value is read as YAML, so `--set training.learning_rate=1e-4` gives a float). Unknown keys and
out-of-range values fail with `ConfigError` naming the key, e.g. `training.learning_rate: ...`.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from lorafleet.adapters.settings import LoraSettings
from lorafleet.continual.config import ContinualConfig
from lorafleet.continual.replay import Pool, mixed_pools, rows_per_step
from lorafleet.data.config import DataConfig
from lorafleet.errors import ConfigError, describe_validation_error, first_field
from lorafleet.federated.config import FederatedConfig
from lorafleet.home import lorafleet_home, validate_name
from lorafleet.training.metrics import TASK_METRICS

_STRICT = ConfigDict(extra="forbid", frozen=True)
# rows up to this many tokens train faster on a CPU with eager attention than with sdpa (`training.attention`)
EAGER_CPU_MAX_LENGTH = 512
# YAML 1.1 (PyYAML) reads "1e-4" as a string: it wants a dot ("1.0e-4"). Overrides accept both.
_EXPONENT_FLOAT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


class ModelConfig(BaseModel):
    """The base model to adapt."""

    model_config = _STRICT

    name: str = Field("default", min_length=1, description="'default', a HF directory, a .gguf or a hub id.")
    device: Literal["cpu", "cuda", "mps"] | None = Field(None, description="Default: the best present.")
    dtype: Literal["float32", "bfloat16", "float16"] | None = Field(
        None,
        description="Weights dtype; default fp32 on CPU (held in bf16 for bf16 steps, see "
        "training.mixed_precision), bf16 (or fp16) on CUDA, fp16 on MPS. A dtype named here is kept.",
    )
    parent: str | None = Field(
        None,
        min_length=1,
        description="A parent adapter of this same base to start from (`lorafleet train --from`): a name "
        "under $LORAFLEET_HOME/adapters or a directory. Its LoRA settings (rank, alpha, targets, rsLoRA, "
        "DoRA) and exact weights are the starting point; the child's lineage names it. Registry versions "
        "(NAME@V) are resolved by the server's jobs.",
    )

    @field_validator("parent")
    @classmethod
    def _check_parent(cls, value: str | None) -> str | None:
        if value is not None and "@" in value:
            raise ValueError(
                f"{value!r} names a registry version; a local run starts from an adapter name or directory "
                "(versions are resolved by the server's training jobs)"
            )
        return value


class QuantizationConfig(BaseModel):
    """How the frozen base weights are stored during training."""

    model_config = _STRICT

    method: Literal["none", "nf4"] = Field(
        "none", description="none: plain LoRA; nf4: QLoRA (bitsandbytes NF4 with double quantization)."
    )


class TrainingConfig(BaseModel):
    """The optimisation loop."""

    model_config = _STRICT

    learning_rate: float = Field(2e-4, gt=0.0, le=1.0, description="Peak AdamW learning rate.")
    epochs: int = Field(1, ge=1, le=1000, description="Passes over the training rows (unless max_steps).")
    max_steps: int | None = Field(
        None, ge=1, le=10**8, description="Stop after this many optimizer steps (overrides epochs)."
    )
    batch_size: int = Field(8, ge=1, le=4096, description="Examples per micro-batch.")
    gradient_accumulation_steps: int = Field(
        1, ge=1, le=1024, description="Micro-batches per optimizer step (effective batch = product)."
    )
    lr_scheduler: Literal["cosine", "linear", "constant"] = Field(
        "cosine", description="Learning-rate decay after warmup."
    )
    warmup_ratio: float = Field(0.05, ge=0.0, le=0.5, description="Share of steps spent warming up.")
    weight_decay: float = Field(0.0, ge=0.0, le=1.0, description="AdamW weight decay.")
    max_grad_norm: float = Field(1.0, ge=0.0, le=1e6, description="Gradient clipping norm (0: off).")
    mixed_precision: Literal["auto", "no", "bf16", "fp16"] = Field(
        "auto",
        description="auto: bf16 on CUDA where supported, else fp16 with loss scaling; on a CPU with bf16 "
        "instructions (AVX512-BF16 or AMX) bf16, its frozen base held in bf16 for the steps (scored in "
        "fp32); fp32 on other CPUs. no: fp32 everywhere.",
    )
    gradient_checkpointing: bool = Field(False, description="Recompute activations to save memory.")
    attention: Literal["auto", "sdpa", "eager"] = Field(
        "auto",
        description="The attention kernel of the steps. auto: on a CPU when rows are at most "
        f"{EAGER_CPU_MAX_LENGTH} tokens (data.max_length), eager attention that recomputes its "
        "probabilities in the backward pass (faster there than torch's CPU flash-attention kernel, at "
        "the same memory); elsewhere the model's own (sdpa). eager: transformers' own, which keeps "
        "the probabilities.",
    )
    seed: int = Field(0, ge=0, le=2**32 - 1, description="Seed of initialisation, shuffling and dropout.")
    checkpoint_steps: int = Field(
        100, ge=0, le=10**8, description="Write a resumable checkpoint every N steps (0: only on Ctrl-C)."
    )
    keep_checkpoints: int = Field(2, ge=1, le=1000, description="How many recent checkpoints to keep.")
    early_stopping_patience: int | None = Field(
        None, ge=1, le=1000, description="Stop after this many evaluations without a better validation loss."
    )
    tracker: Literal["none", "tensorboard", "wandb", "mlflow"] = Field(
        "none", description="An accelerate tracker to log to as well (JSONL and PNG are always written)."
    )
    liger_kernels: bool = Field(
        True, description="Apply Liger kernels when CUDA and liger-kernel (extra 'gpu') are present."
    )

    @field_validator("mixed_precision", mode="before")
    @classmethod
    def _yaml_no(cls, value: Any) -> Any:
        """YAML 1.1 reads a bare `no` (`mixed_precision: no`, `--set training.mixed_precision=no`) as
        false; it means "no"."""
        return "no" if value is False else value


class EvalConfig(BaseModel):
    """What is measured during and after training."""

    model_config = _STRICT

    steps: int = Field(
        0, ge=0, le=10**8, description="Validation loss every N steps (0: only at the end of training)."
    )
    metric: Literal["none", *TASK_METRICS] = Field(  # type: ignore[valid-type]
        "none", description="Task metric scored by generating answers to held-out prompts."
    )
    test_path: str | None = Field(
        None, description="Held-out rows for the task metric; default: the validation rows."
    )
    generation_rows: int = Field(200, ge=1, le=10**6, description="Held-out rows scored by generation.")
    max_new_tokens: int = Field(128, ge=1, le=32768, description="Longest generated answer.")
    batch_size: int = Field(32, ge=1, le=4096, description="Prompts generated together.")
    compare_base: bool = Field(
        False, description="Also score the base model before training, for a before/after table."
    )


class OutputConfig(BaseModel):
    """Where the adapter and the run's files go."""

    model_config = _STRICT

    name: str = Field("adapter", description="Adapter name: saved as $LORAFLEET_HOME/adapters/<name>.")
    run_dir: str | None = Field(
        None, description="Checkpoints, metrics, curves, summary; default $LORAFLEET_HOME/runs/<name>."
    )
    overwrite: bool = Field(False, description="Replace an existing adapter of that name.")


class FinetuneConfig(BaseModel):
    """A whole fine-tuning run: model, data, LoRA, quantization, training, evaluation and output."""

    model_config = _STRICT

    model: ModelConfig = Field(default_factory=ModelConfig)
    data: DataConfig
    lora: LoraSettings = Field(default_factory=LoraSettings)
    quantization: QuantizationConfig = Field(default_factory=QuantizationConfig)
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    output: OutputConfig = Field(default_factory=OutputConfig)
    continual: ContinualConfig = Field(
        default_factory=ContinualConfig,
        description="The strategy against forgetting when training from `model.parent` (default none).",
    )
    federated: FederatedConfig = Field(
        default_factory=FederatedConfig,
        description="Rounds, sampling, aggregation and privacy of `lorafleet federate` and `lorafleet fl`; "
        "`lorafleet train` ignores it.",
    )

    @model_validator(mode="after")
    def _check_name(self) -> FinetuneConfig:
        validate_name(self.output.name, what="output.name")
        return self

    def adapter_dir(self) -> Path:
        """Where the trained adapter is saved."""
        from lorafleet.adapters.storage import adapters_dir

        return adapters_dir() / self.output.name

    def run_dir(self) -> Path:
        """Where checkpoints, metrics, the loss curve and the summary are written."""
        if self.output.run_dir:
            return Path(self.output.run_dir).expanduser()
        return lorafleet_home() / "runs" / self.output.name


def load_config(path: str | os.PathLike[str] | None, overrides: list[str] | None = None) -> FinetuneConfig:
    """Read a YAML recipe (or start from nothing) and apply `section.field=value` overrides."""
    values: dict[str, Any] = {}
    source = "overrides"
    if path is not None:
        source = str(path)
        file = Path(path)
        if not file.is_file():
            raise ConfigError(f"{file}: no such recipe file")
        try:
            loaded = yaml.safe_load(file.read_text())
        except yaml.YAMLError as err:
            raise ConfigError(f"{file}: not valid YAML ({err})") from err
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"{file}: a recipe is a mapping of sections (model, data, lora, ...)")
        values = loaded or {}
    for override in overrides or []:
        apply_override(values, override)
    return parse_config(values, source=source)


def parse_config(values: dict[str, Any], *, source: str = "config") -> FinetuneConfig:
    """Validate a recipe mapping, raising `ConfigError` that names the file and key at fault."""
    try:
        config = FinetuneConfig.model_validate(values)
    except ValidationError as err:
        message = f"{source}: {describe_validation_error(err, '')}"
        raise ConfigError(message, field=first_field(err, "")) from err
    try:
        check_continual(config)
    except ConfigError as err:
        raise ConfigError(f"{source}: {err}", field=err.field) from None
    return config


def check_continual(config: FinetuneConfig) -> None:
    """Raise `ConfigError` when `continual` does not fit the rest of the recipe (parent, data)."""
    strategy = config.continual.strategy
    if strategy != "none" and config.model.parent is None:
        raise ConfigError(
            f"continual.strategy: {strategy} guards a parent's knowledge, but no parent is given; "
            "name one with --from (model.parent) or set strategy: none",
            field="continual.strategy",
        )
    if strategy == "replay" and not config.continual.replay_paths:
        raise ConfigError(
            "continual.replay_paths: strategy replay needs the parent's training rows; name their files",
            field="continual.replay_paths",
        )
    pools: list[Pool[Any]] = mixed_pools(config.continual, parent=config.model.parent is not None)
    if pools and config.data.packing:
        raise ConfigError(
            f"data.packing: the rows {' and '.join(p.field for p in pools)} mix into each step are not "
            "packed yet; set data.packing: false",
            field="data.packing",
        )
    if pools:
        rows_per_step(pools, config.training.batch_size * config.training.gradient_accumulation_steps)


def apply_override(values: dict[str, Any], override: str) -> None:
    """Set `section.field=value` in a nested mapping; the value is parsed as YAML."""
    key, sep, raw = override.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {override!r}: write it as section.field=value")
    try:
        value = yaml.safe_load(raw)
        if isinstance(value, str) and _EXPONENT_FLOAT.fullmatch(value):
            value = float(value)
    except yaml.YAMLError as err:
        raise ConfigError(f"override {override!r}: value is not valid YAML ({err})") from err
    *parents, leaf = key.strip().split(".")
    node = values
    for part in parents:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override {override!r}: {part} is not a section")
        node = child
    node[leaf] = value
