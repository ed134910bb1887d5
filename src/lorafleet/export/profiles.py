"""Device profiles: the size and speed budgets an export must meet on a device, and the verdict on each.

The shipped table is `profiles.yaml` beside this file; `$LORAFLEET_HOME/profiles.yaml` (or a file the
caller names) adds profiles or replaces shipped ones by name. An export fits a profile when

    size_mb ≤ profile.size_mb   and   ms_per_token ≤ profile.ms_per_token

where ms_per_token is measured on this machine (the device may be slower: the verdict says so), and
`choose` picks, among the exports that fit both, the most faithful one: the lowest mean KL divergence
from the PyTorch model's next-token distributions where it was measured (`checks`), then the largest
(the least quantized), so a device gets the best model it can hold. KL rather than top-1 agreement: on
the 64 to 256 answer tokens an export is checked on, one token is 0.4 to 1.6 points of agreement, and the
demo adapter's q4_0 (top-1 99.2%) beat q4_mix (98.8%) on it while losing 4 points of held-out field
accuracy; KL weighs every position's whole distribution.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field

from lorafleet.errors import ConfigError, ExportError, validated
from lorafleet.home import lorafleet_home

USER_PROFILES = "profiles.yaml"  # in $LORAFLEET_HOME


class DeviceProfile(BaseModel):
    """One device's budgets."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    size_mb: float = Field(gt=0, le=1e7, description="Most megabytes (10⁶ bytes) the export may take.")
    ms_per_token: float = Field(gt=0, le=1e6, description="Slowest greedy decoding allowed, per token.")
    description: str = Field("", max_length=200, description="What device this stands for.")


@dataclass(frozen=True)
class Measured:
    """An export's figures that budgets are checked against."""

    name: str  # e.g. gguf-q8_0
    size_mb: float
    ms_per_token: float
    top1_agreement: float | None = None  # with the PyTorch model, where the export was checked
    mean_kl: float | None = None  # nats, from the PyTorch model, where the export was checked


@dataclass(frozen=True)
class Verdict:
    """Whether one export fits one profile, and why not."""

    profile: str
    export: str
    fits_size: bool
    fits_speed: bool

    @property
    def fits(self) -> bool:
        return self.fits_size and self.fits_speed

    def as_dict(self) -> dict[str, object]:
        return {**asdict(self), "fits": self.fits}


def verdict_word(verdict: dict[str, object]) -> str:
    """`fits`, `too big` or `too slow` for a verdict as `Verdict.as_dict` (and `export.json`) hold it."""
    return "fits" if verdict["fits"] else "too big" if not verdict["fits_size"] else "too slow"


def load_profiles(extra: Path | None = None) -> dict[str, DeviceProfile]:
    """The shipped profiles, then `$LORAFLEET_HOME/profiles.yaml`, then `extra`; later names win."""
    shipped = resources.files("lorafleet.export").joinpath("profiles.yaml").read_text()
    profiles = _parse(yaml.safe_load(shipped), "lorafleet/export/profiles.yaml")
    for path in (lorafleet_home() / USER_PROFILES, extra):
        if path is not None and (path.is_file() or path == extra):
            profiles.update(_read(path))
    return profiles


def profile(name: str, extra: Path | None = None) -> DeviceProfile:
    """The profile called `name`; `ConfigError` listing the known ones if there is none."""
    profiles = load_profiles(extra)
    if name not in profiles:
        raise ConfigError(f"--target: no device profile {name!r}; known: {', '.join(sorted(profiles))}")
    return profiles[name]


def verdict(name: str, budget: DeviceProfile, measured: Measured) -> Verdict:
    """How `measured` fares against `budget`."""
    return Verdict(
        profile=name,
        export=measured.name,
        fits_size=measured.size_mb <= budget.size_mb,
        fits_speed=measured.ms_per_token <= budget.ms_per_token,
    )


def choose(name: str, budget: DeviceProfile, candidates: Sequence[Measured]) -> Measured:
    """The most faithful candidate that fits both budgets (the module says how); `ExportError` naming the
    gap if none.

    Candidates are judged on size first: the error says what the smallest would need (a bigger size
    budget, or a model that many times smaller) or, when sizes fit, how much faster it would have to run.
    """
    if not candidates:
        raise ExportError("no export to check against the target")
    fitting = [c for c in candidates if verdict(name, budget, c).fits]
    if fitting:
        return min(fitting, key=lambda c: (c.mean_kl is None, c.mean_kl or 0.0, -c.size_mb))
    smallest = min(candidates, key=lambda c: c.size_mb)
    if smallest.size_mb > budget.size_mb:
        raise ExportError(
            f"nothing fits {name} ({budget.size_mb:g} MB): the smallest export, {smallest.name}, is "
            f"{smallest.size_mb:.1f} MB; it would take a budget of at least {smallest.size_mb:.0f} MB or a "
            f"base model {smallest.size_mb / budget.size_mb:.1f}× smaller"
        )
    fastest = min((c for c in candidates if c.size_mb <= budget.size_mb), key=lambda c: c.ms_per_token)
    raise ExportError(
        f"nothing fits {name} ({budget.ms_per_token:g} ms per token): the fastest export within "
        f"{budget.size_mb:g} MB, {fastest.name}, takes {fastest.ms_per_token:.1f} ms per token on this "
        f"machine; it would take {fastest.ms_per_token / budget.ms_per_token:.1f}× faster decoding or a "
        "smaller model"
    )


def _read(path: Path) -> dict[str, DeviceProfile]:
    try:
        loaded = yaml.safe_load(path.read_text())
    except OSError as err:
        raise ConfigError(f"{path}: cannot read the device profiles ({err.strerror})") from err
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML ({err})") from err
    return _parse(loaded, str(path))


def _parse(loaded: Any, where: str) -> dict[str, DeviceProfile]:
    if not isinstance(loaded, Mapping):
        raise ConfigError(f"{where}: device profiles must be a mapping of name → {{size_mb, ms_per_token}}")
    profiles: dict[str, DeviceProfile] = {}
    for name, fields in loaded.items():
        if not isinstance(fields, Mapping):
            raise ConfigError(f"{where}: profile {name!r} must be a mapping with size_mb and ms_per_token")
        try:
            profiles[str(name)] = validated(DeviceProfile, str(name), **dict(fields))
        except ConfigError as err:
            raise ConfigError(f"{where}: {err}", field=err.field) from err
    return profiles
