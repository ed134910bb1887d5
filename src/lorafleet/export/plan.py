"""`ExportPlan`: what an export is asked to write, checked before any work (light to import, for the API)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lorafleet.errors import ConfigError
from lorafleet.export.profiles import profile

VARIANTS: dict[str, tuple[str, ...]] = {
    "gguf": ("f16", "q8_0", "q4_0", "q4_mix", "lora"),
    "onnx": ("fp32", "int8"),
}
DEFAULT_VARIANT = {"gguf": "q8_0", "onnx": "int8"}
# PyTorch's greedy answer tokens each variant is checked on: at 99% top-1 agreement, 256 allow two
# near-tie flips where 64 allowed none (the demo adapter's q8_0 failed on one token of 64)
DEFAULT_CHECK_TOKENS = 256


@dataclass(frozen=True)
class ExportPlan:
    """What to export: the format, its variants, the device profile to fit (if any), how hard to check."""

    format: str
    variants: tuple[str, ...]
    target: str | None = None
    profiles_file: Path | None = None  # more device profiles, beside the shipped ones
    check_tokens: int = DEFAULT_CHECK_TOKENS  # answer tokens each variant must agree on (0: not checked)
    threads: int | None = None  # the runtimes' threads (None: theirs)

    @classmethod
    def parse(
        cls, format: str, quant: str | None = None, target: str | None = None, **options: Any
    ) -> ExportPlan:
        """A plan from the CLI's or the API's words: `quant` is a variant, a comma list, or `all`.

        Without `quant`, a target weighs every merged variant of the format and no target means the
        format's default (q8_0, int8). `ConfigError` names the bad field before any work is done.
        """
        if format not in VARIANTS:
            raise ConfigError(f"format {format!r} is not one of {', '.join(VARIANTS)}", field="format")
        known = VARIANTS[format]
        if quant is None:
            variants = tuple(v for v in known if v != "lora") if target else (DEFAULT_VARIANT[format],)
        elif quant == "all":
            variants = known
        else:
            variants = tuple(dict.fromkeys(v.strip().lower() for v in quant.split(",") if v.strip()))
            if not variants or any(v not in known for v in variants):
                raise ConfigError(
                    f"quant {quant!r}: {format} exports are {', '.join(known)} or all", field="quant"
                )
        plan = cls(format=format, variants=variants, target=target, **options)
        if target:
            if variants == ("lora",):
                raise ConfigError("a target needs a merged variant: the lora file alone runs on no device")
            profile(target, plan.profiles_file)  # an unknown target or a bad profiles file fails now
        return plan
