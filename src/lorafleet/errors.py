"""lorafleet's exceptions: one small hierarchy whose messages say what is wrong, where, and how to fix it.

The CLI prints a `LorafleetError` as one or two lines without a traceback; the API (a later layer)
maps each kind to a 4xx answer.
"""

from __future__ import annotations


class LorafleetError(Exception):
    """Base class of every error lorafleet raises on purpose."""


class ConfigError(LorafleetError, ValueError):
    """A setting is missing, unknown or out of range; the message names the field."""


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


def describe_validation_error(err: object, prefix: str) -> str:
    """One line per bad field of a pydantic `ValidationError`: `lora.r: Input should be ≥ 1 (got 0)`."""
    lines = []
    for item in err.errors():  # type: ignore[attr-defined]
        field = ".".join(str(part) for part in (prefix, *item["loc"]) if part != "")
        got = item.get("input")
        shown = "" if isinstance(got, dict) else f" (got {got!r})"
        lines.append(f"{field}: {item['msg']}{shown}")
    return "; ".join(lines)
