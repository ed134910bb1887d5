"""Writing a directory or a file all at once: build it in a temporary sibling, fsync it, rename it into place.

Readers see either the old directory (file) or the complete new one, never half of one; a crash or error
midway leaves the old one (if any) untouched and removes the temporary one.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from lorafleet.errors import AlreadyExistsError, LorafleetError


@contextmanager
def atomic_directory(target: Path, *, overwrite: bool = False) -> Iterator[Path]:
    """Yield an empty staging directory; on success it replaces `target` in one rename.

    Raises `AlreadyExistsError` before anything is written if `target` exists and `overwrite` is false.
    """
    if target.exists() and not overwrite:
        raise AlreadyExistsError(f"{target} already exists; choose another name or path, or overwrite it")
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        yield staging
        _fsync_tree(staging)
        if not target.exists():
            os.replace(staging, target)
            return
        # Move the old directory aside, put the new one in, and bring the old one back if that fails.
        aside = Path(tempfile.mkdtemp(prefix=f".{target.name}.old.", dir=target.parent)) / target.name
        os.replace(target, aside)
        try:
            os.replace(staging, target)
        except BaseException:
            os.replace(aside, target)
            raise
        finally:
            shutil.rmtree(aside.parent, ignore_errors=True)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


@contextmanager
def atomic_file(target: Path) -> Iterator[Path]:
    """Yield a path to write instead of `target`, in a temporary directory beside it; on success the
    written file is fsynced and renamed onto `target`, and in every case the temporary directory goes."""
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        written = staging / target.name
        yield written
        if not written.is_file():
            raise LorafleetError(f"nothing was written for {target}")
        with open(written, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(written, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _fsync_tree(root: Path) -> None:
    for path in root.rglob("*"):
        if path.is_file():
            with open(path, "rb") as handle:
                os.fsync(handle.fileno())
    descriptor = os.open(root, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
