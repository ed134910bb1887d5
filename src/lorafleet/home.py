"""Where lorafleet keeps its files (`$LORAFLEET_HOME`, default `~/.lorafleet`), and safe names for paths."""

from __future__ import annotations

import os
import re
from pathlib import Path

from lorafleet.errors import InvalidNameError

MAX_NAME_LENGTH = 64
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def lorafleet_home() -> Path:
    """The root of lorafleet's local state: `$LORAFLEET_HOME`, or `~/.lorafleet`."""
    return Path(os.environ.get("LORAFLEET_HOME") or Path.home() / ".lorafleet").expanduser()


def validate_name(name: str, *, what: str = "name") -> str:
    """Return `name` if it is safe as one path component, else raise `InvalidNameError` saying why.

    Allowed: letters, digits, `.`, `_`, `-`; starts with a letter or digit; at most 64 characters; no `..`.
    """
    if not name:
        raise InvalidNameError(f"{what} is empty")
    if len(name) > MAX_NAME_LENGTH:
        raise InvalidNameError(
            f"{what} {name[:20]!r}... is {len(name)} characters; the limit is {MAX_NAME_LENGTH}"
        )
    if "/" in name or "\\" in name:
        raise InvalidNameError(
            f"{what} {name!r} contains a path separator; use a plain name like 'support-v2'"
        )
    if ".." in name:
        raise InvalidNameError(f"{what} {name!r} contains '..'; use a plain name like 'support-v2'")
    if not _NAME.match(name):
        raise InvalidNameError(
            f"{what} {name!r} may hold only letters, digits, '.', '_' and '-', "
            "starting with a letter or digit"
        )
    return name
