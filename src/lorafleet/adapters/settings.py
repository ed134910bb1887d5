"""`LoraSettings`: the LoRA hyper-parameters a user chooses, validated, and their PEFT `LoraConfig`.

A LoRA adapter on a frozen linear layer W₀ (out × in) adds a low-rank update:

    y = W₀x + s · B(A(dropout(x))),   A: r × in,  B: out × r,  s = α / r   (rsLoRA: s = α / √r)

so only r · (in + out) numbers per layer are trained. DoRA additionally learns a per-output-row
magnitude m and uses m · (W₀ + sBA) / ‖W₀ + sBA‖_row.
"""

from __future__ import annotations

import re
from typing import Literal

from peft import LoraConfig
from pydantic import BaseModel, ConfigDict, Field, field_validator

from lorafleet.errors import validated

InitName = Literal["default", "gaussian", "olora", "pissa", "orthogonal", "random"]
_PISSA_NITER = re.compile(r"^pissa_niter_[1-9][0-9]*$")


class LoraSettings(BaseModel):
    """LoRA hyper-parameters; `to_peft()` gives the equivalent PEFT `LoraConfig`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    r: int = Field(
        8, ge=1, le=4096, description="Rank of the update BA: trainable numbers per layer are r·(in+out)."
    )
    alpha: float = Field(
        16.0, gt=0, le=1e6, description="Scale numerator: the update is multiplied by alpha/r."
    )
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="Dropout on the LoRA input path during training.")
    target_modules: list[str] | str = Field(
        "all-linear",
        description="Modules to adapt: a list of names (suffix match, e.g. q_proj), a regex matched against "
        "full module names, or 'all-linear' (every linear layer but the output head).",
    )
    bias: Literal["none", "all", "lora_only"] = Field(
        "none", description="Which biases to train as well: none, all, or those of adapted layers."
    )
    use_rslora: bool = Field(False, description="Rank-stabilised scale alpha/sqrt(r) instead of alpha/r.")
    use_dora: bool = Field(False, description="Weight-decomposed LoRA (DoRA): learn a per-row magnitude too.")
    init: str = Field(
        "default",
        description="Initialisation: default (Kaiming A, zero B: the adapter starts as a no-op), gaussian, "
        "olora, pissa, pissa_niter_N, orthogonal, or random (non-zero B; for tests).",
    )
    modules_to_save: list[str] | None = Field(
        None, description="Extra modules trained in full and saved with the adapter (e.g. lm_head)."
    )

    @field_validator("target_modules")
    @classmethod
    def _check_targets(cls, value: list[str] | str) -> list[str] | str:
        if isinstance(value, list):
            if not value:
                raise ValueError("target_modules is empty; name modules such as q_proj, or use 'all-linear'")
            for name in value:
                if not re.fullmatch(r"[A-Za-z0-9_.]+", name):
                    raise ValueError(
                        f"target module name {name!r} may hold only letters, digits, '_' and '.'"
                    )
            return value
        if value != "all-linear":
            try:
                re.compile(value)
            except re.error as err:
                raise ValueError(f"target_modules {value!r} is not a valid regex: {err}") from err
        return value

    @field_validator("init")
    @classmethod
    def _check_init(cls, value: str) -> str:
        if value not in InitName.__args__ and not _PISSA_NITER.match(value):  # type: ignore[attr-defined]
            choices = ", ".join(InitName.__args__)  # type: ignore[attr-defined]
            raise ValueError(f"init {value!r} is not one of {choices}, pissa_niter_N")
        return value

    @classmethod
    def parse(cls, **values: object) -> LoraSettings:
        """Build from untrusted values, raising `ConfigError` that names the bad field."""
        return validated(cls, "lora", **values)

    def to_peft(self) -> LoraConfig:
        """The PEFT `LoraConfig` with the same meaning."""
        init: bool | str = {"default": True, "random": False}.get(self.init, self.init)
        return LoraConfig(
            task_type="CAUSAL_LM",
            r=self.r,
            lora_alpha=int(self.alpha) if self.alpha.is_integer() else self.alpha,  # type: ignore[arg-type]
            lora_dropout=self.dropout,
            target_modules=self.target_modules,
            bias=self.bias,
            use_rslora=self.use_rslora,
            use_dora=self.use_dora,
            init_lora_weights=init,  # type: ignore[arg-type]
            modules_to_save=self.modules_to_save,
        )

    @classmethod
    def from_peft(cls, config: LoraConfig) -> LoraSettings:
        """Settings read back from a PEFT `LoraConfig` (as found in `adapter_config.json`)."""
        init = config.init_lora_weights
        targets = config.target_modules
        return cls(
            r=config.r,
            alpha=config.lora_alpha,
            dropout=config.lora_dropout,
            target_modules=sorted(targets) if isinstance(targets, set | list) else str(targets),
            bias=config.bias,
            use_rslora=config.use_rslora,
            use_dora=config.use_dora,
            init={True: "default", False: "random"}.get(init, str(init)),  # type: ignore[arg-type]
            modules_to_save=list(config.modules_to_save) if config.modules_to_save else None,
        )
