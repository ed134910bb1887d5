"""lorafleet's exceptions: one small hierarchy whose messages say what is wrong, where, and how to fix it.

The CLI prints a `LorafleetError` as one or two lines without a traceback; the API (a later layer)
maps each kind to a 4xx answer.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any, TypeVar

_Model = TypeVar("_Model", bound=Any)  # a pydantic model class


class LorafleetError(Exception):
    """Base class of every error lorafleet raises on purpose."""


class ConfigError(LorafleetError, ValueError):
    """A setting is missing, unknown or out of range; the message names the field.

    `field` is that field's dotted path (`lora.r`) where one field is at fault, for callers that point at
    it (the API's `param`).
    """

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class AlreadyExistsError(LorafleetError, FileExistsError):
    """The directory to write exists and overwriting was not asked for."""


class InvalidNameError(ConfigError):
    """A name that becomes a path holds `..`, a separator, or an unsafe character."""


class ModelLoadError(LorafleetError):
    """A base model could not be found, read or converted; the message names the path or spec."""


class AdapterError(LorafleetError):
    """An adapter directory is missing, incomplete, or inconsistent with its own config."""


class CorruptFileError(AdapterError):
    """A file exists but cannot be read: truncated, not safetensors, not JSON."""


class BaseModelMismatchError(AdapterError):
    """An adapter was trained on another base model; the message names the first mismatching module."""


class ExportError(LorafleetError):
    """An adapter cannot be exported as asked (format, quantization, target); the message says what would."""


def validated(model: type[_Model], prefix: str, **values: object) -> _Model:
    """`model(**values)` for a pydantic model, or `ConfigError` naming each bad field as `prefix.field`."""
    from pydantic import ValidationError

    try:
        return model(**values)
    except ValidationError as err:
        raise ConfigError(describe_validation_error(err, prefix), field=first_field(err, prefix)) from err


def describe_validation_error(err: object, prefix: str) -> str:
    """One line per bad field of a pydantic `ValidationError`: `lora.r: Input should be ≥ 1 (got 0)`."""
    lines = []
    for item in err.errors():  # type: ignore[attr-defined]
        field = field_path(item["loc"], prefix)
        got = item.get("input")
        shown = "" if isinstance(got, dict) else f" (got {got!r})"
        lines.append(f"{field}: {item['msg']}{shown}")
    return "; ".join(lines)


def first_field(err: object, prefix: str) -> str | None:
    """The dotted path of the first bad field of a pydantic `ValidationError` (`prefix.field`)."""
    items = err.errors()  # type: ignore[attr-defined]
    if not items:
        return None
    return field_path(items[0]["loc"], prefix) or None


def field_path(loc: Sequence[object], prefix: str = "") -> str:
    """The dotted field path of a pydantic error's `loc` under `prefix`, without the parts that name which
    member of a union a value was checked against (`int`, `literal['auto']`): no one wrote those."""
    return ".".join(str(part) for part in (prefix, *loc) if part != "" and not _union_member(part))


def _union_member(part: object) -> bool:
    return isinstance(part, str) and bool(_UNION_MEMBER.search(part))


_UNION_MEMBER = re.compile(r"^(int|float|str|bool|bytes|none|list|dict)$|\[")


class UnknownAdapterError(AdapterError):
    """No adapter, version, alias or task of that name is known; the message names it and what is known."""


class QueueFullError(LorafleetError):
    """The request queue (or one tenant's share of it) is full; the API answers 429 with Retry-After."""

    retry_after: float  # seconds the client should wait before trying again (HTTP Retry-After)

    def __init__(self, message: str, *, retry_after: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class DataError(ConfigError):
    """A data file is missing or unreadable, or a row is bad; the message names `file:line` and the fault."""


class TrainingInterrupted(LorafleetError):
    """Training stopped on Ctrl-C after saving a checkpoint; `lorafleet train --resume` continues it."""


class NotFoundError(LorafleetError, LookupError):
    """No such resource for this tenant (another tenant's is "not found" too); the API answers 404."""


class ConflictError(LorafleetError):
    """The request clashes with the current state (a name in use, a finished job); the API answers 409."""


class GateRefusedError(ConflictError):
    """A version fails its adapter's promotion gate; `report` holds every check (see `evaluation.gate`)."""

    def __init__(self, message: str, *, report: dict[str, Any]) -> None:
        super().__init__(message)
        self.report = report


class AuthenticationError(LorafleetError):
    """A missing, unknown or revoked API key; the API answers 401."""


class QuotaExceededError(LorafleetError):
    """A tenant's quota or a key's rate limit is used up; the API answers 429 with Retry-After."""

    retry_after: float  # seconds until the limit allows the request again

    def __init__(self, message: str, *, retry_after: float = 60.0) -> None:
        super().__init__(message)
        self.retry_after = retry_after
