"""Which adapter serves a request: by reference, by task, or by an A/B experiment or canary.

A request's `model` is an adapter reference:

    support              the adapter's default version (its `production` alias if set, else its latest)
    support@3            version label 3 (a label: `3`, `v3`, `2024-06-01`)
    support:staging      the version an alias points at
    base                 the base model, no adapter (any name in `RouterSettings.base_names`)

Without a `model` (or with a base name), a `task` picks the first adapter whose metadata lists it.

The catalog answers each resolved reference with an `AdapterHandle` (the version's id, which is the
engine's adapter key, and its `name@version` reference), and the `Route` carries it: everything after
the router takes that record and nothing parses `model` again. The server builds a `Router` per request
on the registry's catalog and the tenant's splits (`registry.routing`), with the OpenAI `user` field
as the user (the API key when absent).

Splits are sticky: a user's bucket is `sha256(f"{experiment}:{user}") → [0, 100)`, and arm i takes
the buckets `[p₀ + … + pᵢ₋₁, p₀ + … + pᵢ)`. A canary takes the users whose bucket
(`sha256(f"canary:{model}:{user}")`) is below its percent, so raising 10 → 20 keeps everyone already
in it. A request without a user is assigned at random, independently each time; pass the request id
as `user` for reproducible assignment. A split applies to requests naming exactly its `model`
reference (`support`, not `support@3`); a canary takes its share before an experiment on the same
reference. This module imports neither torch nor the adapters layer.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from lorafleet.errors import ConfigError, InvalidNameError, UnknownAdapterError, describe_validation_error
from lorafleet.home import lorafleet_home, validate_name

__all__ = [
    "AdapterCatalog",
    "AdapterHandle",
    "AdapterRef",
    "Arm",
    "Canary",
    "CatalogEntry",
    "DirectoryCatalog",
    "Experiment",
    "Route",
    "Router",
    "RouterSettings",
    "StaticCatalog",
    "assignment_bucket",
    "check_percents",
    "parse_reference",
]


@dataclass(frozen=True)
class AdapterRef:
    """An adapter reference as written in a request: a name with at most one version or alias."""

    name: str
    version: str | None = None
    alias: str | None = None

    def __str__(self) -> str:
        if self.version is not None:
            return f"{self.name}@{self.version}"
        return f"{self.name}:{self.alias}" if self.alias is not None else self.name


@dataclass(frozen=True)
class AdapterHandle:
    """One adapter version, resolved once: what the engine loads and what responses and logs name."""

    version_id: str  # the version's id, the engine's adapter key (a registry id; a catalog's path or ref)
    reference: str  # the version as a request would name it: `support@3`
    artifact: str | None = None  # where its files are stored: a registry artifact URL, or a directory
    base_model: str | None = None  # the base model it was trained on, where the catalog knows it


@dataclass(frozen=True)
class Route:
    """Where a request goes: `handle` is the version to load (None = the base model alone)."""

    adapter: AdapterRef | None  # the reference resolved: the request's, or a canary's or an arm's target
    handle: AdapterHandle | None
    reason: str  # "base", "explicit", "alias", "task", "ab:<experiment>" or "canary"

    @property
    def target(self) -> str | None:
        """The engine's adapter key (the handle's version id); None for the base model."""
        return self.handle.version_id if self.handle is not None else None

    @property
    def is_base(self) -> bool:
        return self.handle is None


def parse_reference(text: str) -> AdapterRef:
    """Parse `name`, `name@version` or `name:alias`; raise `InvalidNameError` naming a bad reference."""
    if text.count("@") + text.count(":") > 1:
        raise InvalidNameError(
            f"adapter reference {text!r} has more than one '@' or ':'; "
            "write 'name', 'name@version' or 'name:alias'"
        )
    name, sep, label = text.partition("@") if "@" in text else text.partition(":")
    validate_name(name, what=f"adapter reference {text!r}: name")
    if not sep:
        return AdapterRef(name)
    what = "version" if sep == "@" else "alias"
    validate_name(label, what=f"adapter reference {text!r}: {what}")
    return AdapterRef(name, version=label) if sep == "@" else AdapterRef(name, alias=label)


def check_percents(percents: list[float]) -> None:
    """`ValueError` unless an experiment's arm percents sum to 100."""
    total = sum(percents)
    if abs(total - 100.0) > 1e-6:
        raise ValueError(f"arm percents sum to {total:g}; they must sum to 100")


def assignment_bucket(salt: str, user: str) -> float:
    """A user's sticky bucket in [0, 100) for the split named `salt`: the same inputs, the same bucket."""
    digest = hashlib.sha256(f"{salt}:{user}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 * 100


class AdapterCatalog(Protocol):
    """What the router needs to know about adapters; the registry implements it from its database."""

    def resolve(self, name: str, version: str | None = None, alias: str | None = None) -> AdapterHandle:
        """The version meant, as the handle the engine loads; `UnknownAdapterError` if none.

        With neither version nor alias: the `production` alias if set, else the latest version.
        """
        ...

    def adapters_for_task(self, task: str) -> list[str]:
        """Names of the adapters whose metadata lists `task`, most preferred first."""
        ...


class CatalogEntry(BaseModel):
    """One adapter of a `StaticCatalog`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    versions: dict[str, str] = Field(
        min_length=1,
        description="Version label → reference to load (its handle's version id); the last is the latest.",
    )
    aliases: dict[str, str] = Field(
        default_factory=dict, description="Alias (e.g. production) → version label."
    )
    tasks: list[str] = Field(default_factory=list, description="Task types this adapter serves.")

    @model_validator(mode="after")
    def _aliases_point_at_versions(self) -> CatalogEntry:
        for alias, label in self.aliases.items():
            if _find_label(self.versions, label) is None:
                raise ValueError(f"alias {alias!r} points at version {label!r}, which is not in versions")
        return self


def _find_label(versions: Mapping[str, str], label: str) -> str | None:
    """The stored label matching `label`, treating `3` and `v3` as the same version."""
    if label in versions:
        return label
    bare = label[1:] if label[:1] in "vV" and label[1:].isdigit() else label
    return next((key for key in versions if (key[1:] if key[:1] in "vV" else key) == bare), None)


def _known(items: Any) -> str:
    names = sorted(items)
    return ", ".join(names[:10]) + (", …" if len(names) > 10 else "") if names else "none"


class StaticCatalog:
    """An in-memory catalog: `{name: {"versions": {label: ref}, "aliases": {...}, "tasks": [...]}}`.

    A plain string stands for one version labelled `1`: `StaticCatalog({"support": "/adapters/support"})`.
    """

    def __init__(self, entries: Mapping[str, CatalogEntry | Mapping[str, Any] | str]) -> None:
        self._entries: dict[str, CatalogEntry] = {}
        for name, raw in entries.items():
            validate_name(name, what="catalog adapter name")
            if isinstance(raw, str):
                raw = {"versions": {"1": raw}}
            try:
                self._entries[name] = (
                    raw if isinstance(raw, CatalogEntry) else CatalogEntry.model_validate(raw)
                )
            except ValidationError as err:
                raise ConfigError(describe_validation_error(err, f"catalog.{name}")) from err

    def resolve(self, name: str, version: str | None = None, alias: str | None = None) -> AdapterHandle:
        entry = self._entries.get(name)
        if entry is None:
            raise UnknownAdapterError(f"unknown adapter {name!r}; known adapters: {_known(self._entries)}")
        if alias is None and version is None:
            alias = "production" if "production" in entry.aliases else None
            version = None if alias else list(entry.versions)[-1]
        if alias is not None:
            if alias not in entry.aliases:
                raise UnknownAdapterError(
                    f"adapter {name!r} has no alias {alias!r}; its aliases: {_known(entry.aliases)}"
                )
            version = entry.aliases[alias]
        label = _find_label(entry.versions, str(version))
        if label is None:
            raise UnknownAdapterError(
                f"adapter {name!r} has no version {version!r}; its versions: {', '.join(entry.versions)}"
            )
        target = entry.versions[label]
        return AdapterHandle(version_id=target, reference=f"{name}@{label}", artifact=target)

    def adapters_for_task(self, task: str) -> list[str]:
        return sorted(name for name, entry in self._entries.items() if task in entry.tasks)


class DirectoryCatalog:
    """The adapters saved under `$LORAFLEET_HOME/adapters/<name>` (one version each, no aliases).

    Tasks come from `training.task` (a string or a list) in each adapter's `lorafleet.json`.
    """

    def __init__(self, root: Path | None = None) -> None:
        self.root = root if root is not None else lorafleet_home() / "adapters"

    def _names(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if (p / "adapter_config.json").is_file())

    def resolve(self, name: str, version: str | None = None, alias: str | None = None) -> AdapterHandle:
        folder = self.root / validate_name(name, what="adapter name")
        if not (folder / "adapter_config.json").is_file():
            raise UnknownAdapterError(
                f"unknown adapter {name!r}: no adapter_config.json in {folder}; "
                f"adapters in {self.root}: {_known(self._names())}"
            )
        if version is not None or alias is not None:
            asked = f"@{version}" if version is not None else f":{alias}"
            raise UnknownAdapterError(
                f"adapter {name!r} in {self.root} has no versions or aliases, so {name}{asked} is unknown; "
                f"ask for {name!r}, or register it to version it"
            )
        return AdapterHandle(version_id=str(folder), reference=name, artifact=str(folder))

    def adapters_for_task(self, task: str) -> list[str]:
        return [name for name in self._names() if task in self._tasks(self.root / name)]

    @staticmethod
    def _tasks(folder: Path) -> list[str]:
        try:
            card = json.loads((folder / "lorafleet.json").read_text())
        except (OSError, ValueError):
            return []  # no sidecar, or an unreadable one: the adapter simply lists no task
        training = card.get("training") if isinstance(card, dict) else None
        task = training.get("task") if isinstance(training, dict) else None
        return [task] if isinstance(task, str) else [t for t in task or [] if isinstance(t, str)]


class Arm(BaseModel):
    """One side of an A/B experiment."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    target_ref: str = Field(
        description="Reference served to this arm's users: 'support@4', 'support:staging'."
    )
    percent: float = Field(ge=0.0, le=100.0, description="Share of users, in percent.")


class Experiment(BaseModel):
    """An A/B split of the requests naming `model` across arms whose percents sum to 100."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(description="Experiment name; also the salt of its sticky assignment.")
    model: str = Field(description="The reference being split, e.g. 'support'.")
    arms: list[Arm] = Field(min_length=1, description="The arms; their percents sum to 100.")

    @field_validator("name")
    @classmethod
    def _valid_name(cls, name: str) -> str:
        return validate_name(name, what="experiment name")

    @field_validator("arms")
    @classmethod
    def _percents_sum_to_100(cls, arms: list[Arm]) -> list[Arm]:
        check_percents([arm.percent for arm in arms])
        return arms


class Canary(BaseModel):
    """Send `percent` of the users of `model` (sticky) to `target_ref`; the rest route as usual."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: str = Field(description="The reference whose users are sampled, e.g. 'support'.")
    target_ref: str = Field(description="The canary served to the sample, e.g. 'support@5'.")
    percent: float = Field(ge=0.0, le=100.0, description="Share of users sent to the canary, in percent.")


class RouterSettings(BaseModel):
    """The router's configuration: names of the base model, experiments and canaries."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    base_names: list[str] = Field(
        default_factory=lambda: ["base"], description="Model names meaning the base model, no adapter."
    )
    experiments: list[Experiment] = Field(
        default_factory=list, description="A/B splits, at most one per model."
    )
    canaries: list[Canary] = Field(default_factory=list, description="Canaries, at most one per model.")

    @model_validator(mode="after")
    def _consistent(self) -> RouterSettings:
        refs = [(f"experiments.{i}.model", e.model) for i, e in enumerate(self.experiments)]
        refs += [
            (f"experiments.{i}.arms.{j}.target_ref", a.target_ref)
            for i, e in enumerate(self.experiments)
            for j, a in enumerate(e.arms)
        ]
        refs += [(f"canaries.{i}.model", c.model) for i, c in enumerate(self.canaries)]
        refs += [(f"canaries.{i}.target_ref", c.target_ref) for i, c in enumerate(self.canaries)]
        for field, ref in refs:
            if ref not in self.base_names:
                try:
                    parse_reference(ref)
                except InvalidNameError as err:
                    raise ValueError(f"{field}: {err}") from err
        for field, values in [
            ("experiments.*.name", [e.name for e in self.experiments]),
            ("experiments.*.model", [e.model for e in self.experiments]),
            ("canaries.*.model", [c.model for c in self.canaries]),
        ]:
            repeated = sorted({v for v in values if values.count(v) > 1})
            if repeated:
                raise ValueError(
                    f"{field}: {', '.join(map(repr, repeated))} appears more than once; keep one"
                )
        return self

    @classmethod
    def parse(cls, data: Mapping[str, Any], *, source: str = "router") -> RouterSettings:
        """Validate `data` (e.g. a YAML section), raising `ConfigError` that names the bad field."""
        try:
            return cls.model_validate(data)
        except ValidationError as err:
            raise ConfigError(describe_validation_error(err, source)) from err


class Router:
    """Turn a request's `model`, `task` and `user` into a `Route`, reading adapters from a catalog."""

    def __init__(
        self,
        catalog: AdapterCatalog,
        settings: RouterSettings | Mapping[str, Any] | None = None,
        *,
        rng: random.Random | None = None,
    ) -> None:
        """`rng` draws the buckets of requests without a user (seed it for reproducible tests)."""
        self.catalog = catalog
        self.settings = (
            settings if isinstance(settings, RouterSettings) else RouterSettings.parse(settings or {})
        )
        self._rng = rng or random.Random()
        self._experiments = {self._key(e.model): e for e in self.settings.experiments}
        self._canaries = {self._key(c.model): c for c in self.settings.canaries}

    def route(self, model: str | None, *, task: str | None = None, user: str | None = None) -> Route:
        """Where this request goes. An adapter named in `model` wins over `task`; neither means base."""
        key = self._key(model) if model is not None else None
        reason = "base"
        if key is None and task is not None:
            names = self.catalog.adapters_for_task(task)
            if not names:
                raise UnknownAdapterError(
                    f"no adapter lists task {task!r}; name an adapter in 'model', or add the task "
                    "to an adapter's metadata"
                )
            key, reason = AdapterRef(names[0]), "task"
        elif key is not None:
            reason = "alias" if key.alias is not None else "explicit"

        canary = self._canaries.get(key)
        if canary is not None and self._bucket(f"canary:{canary.model}", user) < canary.percent:
            return self._resolve_split(f"the canary of {canary.model!r}", canary.target_ref, "canary")
        experiment = self._experiments.get(key)
        if experiment is not None:
            bucket, upper = self._bucket(experiment.name, user), 0.0
            arm = experiment.arms[-1]  # buckets past a sum a hair under 100 fall in the last arm
            for candidate in experiment.arms:
                upper += candidate.percent
                if bucket < upper:
                    arm = candidate
                    break
            owner = f"experiment {experiment.name!r}"
            return self._resolve_split(owner, arm.target_ref, f"ab:{experiment.name}")
        return self._resolve(key, reason)

    def check_targets(self) -> None:
        """Resolve every arm and canary target now; `UnknownAdapterError` names the first unknown one."""
        targets = [
            (f"experiment {e.name!r}", a.target_ref) for e in self.settings.experiments for a in e.arms
        ]
        targets += [(f"canary of {c.model!r}", c.target_ref) for c in self.settings.canaries]
        for owner, ref in targets:
            self._resolve_split(owner, ref, "check")

    def _key(self, text: str) -> AdapterRef | None:
        """The parsed reference, or None for a base-model name."""
        return None if text in self.settings.base_names else parse_reference(text)

    def _bucket(self, salt: str, user: str | None) -> float:
        return assignment_bucket(salt, user) if user is not None else self._rng.random() * 100

    def _resolve(self, ref: AdapterRef | None, reason: str) -> Route:
        if ref is None:
            return Route(adapter=None, handle=None, reason=reason)
        handle = self.catalog.resolve(ref.name, version=ref.version, alias=ref.alias)
        return Route(adapter=ref, handle=handle, reason=reason)

    def _resolve_split(self, owner: str, ref: str, reason: str) -> Route:
        """A canary's or an arm's target; an unknown one names the split that sent the request there."""
        try:
            return self._resolve(self._key(ref), reason)
        except UnknownAdapterError as err:
            raise UnknownAdapterError(f"{owner} targets {ref!r}: {err}") from err
