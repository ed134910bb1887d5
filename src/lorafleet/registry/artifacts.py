"""Artifact storage: uploaded datasets and adapter versions, in a local directory or at any fsspec URL.

Writing is all-or-nothing. On a local disk a file or directory is written under a temporary name,
every file and the directories are fsynced, then it is renamed into place: a crash leaves either
nothing or the whole artifact. On an object store (S3, …) each file is one object, uploaded to its
final key (a PUT is atomic). The registry commits a row naming an artifact only after `put_*` returned.

Several servers (replicas) may share one object store, so its listings are never cached here: a
replica must see the artifact another one wrote a moment ago. An S3-compatible store other than AWS
is reached through botocore's own settings, `AWS_ENDPOINT_URL` and the credentials variables.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path
from typing import Any
from uuid import uuid4

from lorafleet.errors import ConfigError, CorruptFileError, NotFoundError
from lorafleet.home import lorafleet_home

_CHUNK = 1 << 20


def default_artifacts_url() -> str:
    """`$LORAFLEET_ARTIFACTS_URL`, else the directory `$LORAFLEET_HOME/artifacts`."""
    return os.environ.get("LORAFLEET_ARTIFACTS_URL") or str(lorafleet_home() / "artifacts")


def file_sha256(path: Path) -> str:
    """The SHA-256 of one file, read in chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def directory_sha256(path: Path) -> str:
    """One SHA-256 over a directory: each file's relative path and contents, in sorted order."""
    digest = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        digest.update(file.relative_to(path).as_posix().encode() + b"\0")
        digest.update(file_sha256(file).encode())
    return digest.hexdigest()


def sidecar_url(url: str, suffix: str) -> str:
    """The URL of a sidecar stored next to artifact `url`, named by `suffix` in place of the artifact's own:
    `…/file-1.jsonl` with `.scrub.json` → `…/file-1.scrub.json` (no database column needed to find it)."""
    folder, _, name = url.rpartition("/")
    stem = name.split(".", 1)[0]
    return f"{folder}/{stem}{suffix}"


def directory_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


class ArtifactStore:
    """Files and directories under one root: a local path (default) or an fsspec URL such as `s3://bucket/x`."""

    def __init__(self, url: str | None = None, *, cache_dir: Path | None = None) -> None:
        self.url = (url or default_artifacts_url()).rstrip("/")
        self.local = "://" not in self.url or self.url.startswith("file://")
        self.cache_dir = cache_dir or lorafleet_home() / "cache" / "artifacts"
        if self.local:
            self.root = Path(self.url.removeprefix("file://")).expanduser()
            self.root.mkdir(parents=True, exist_ok=True)
            self._fs: Any = None
        else:
            import fsspec

            try:
                self._fs, self._root_path = fsspec.core.url_to_fs(self.url, use_listings_cache=False)
            except (ImportError, ValueError) as err:
                raise ConfigError(f"artifacts URL {self.url!r}: {err}") from err

    def put_file(self, source: Path, key: str) -> str:
        """Store one file as `key` (a relative path); return its URL."""
        return self._put(source, key, directory=False)

    def put_directory(self, source: Path, key: str) -> str:
        """Store a directory as `key`; return its URL."""
        return self._put(source, key, directory=True)

    def url_for(self, key: str) -> str:
        """The URL `put_file` / `put_directory` return for `key`."""
        return str(self.root / key) if self.local else f"{self.url}/{key}"

    def local_path(self, url: str) -> Path:
        """A local path with the artifact's contents: the file itself on a local store, else a cached copy."""
        if self.local:
            path = Path(url.removeprefix("file://"))
            if not path.exists():
                raise NotFoundError(f"artifact {url} is missing from the store")
            return path
        return self._cached_copy(url)

    def _cached_copy(self, url: str) -> Path:
        """The artifact downloaded once into the cache, under its own name (a file keeps its suffix,
        which tells readers its format): `cache_dir/<sha256 of url>/<name>`."""
        target = self.cache_dir / hashlib.sha256(url.encode()).hexdigest()[:32] / url.rsplit("/", 1)[-1]
        if target.exists():
            return target
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(f".{target.name}.{uuid4().hex[:8]}")
        try:
            self._fs.get(url, str(partial), recursive=True)
        except FileNotFoundError as err:
            raise NotFoundError(f"artifact {url} is missing from the store") from err
        try:
            partial.rename(target)
        except OSError:  # another thread won (a directory cannot be renamed over): the same artifact
            if not target.exists():
                raise
            _remove_local(partial)
        return target

    def exists(self, url: str) -> bool:
        """Whether an artifact is stored at `url`."""
        if self.local:
            return Path(url.removeprefix("file://")).exists()
        return bool(self._fs.exists(url))

    def delete(self, url: str) -> None:
        """Remove an artifact (a missing one is fine: deleting twice is not an error)."""
        if self.local:
            _remove_local(Path(url.removeprefix("file://")))
        elif self._fs.exists(url):
            self._fs.rm(url, recursive=True)

    def _put(self, source: Path, key: str, *, directory: bool) -> str:
        if not source.exists():
            raise CorruptFileError(f"{source}: nothing to store")
        if self.local:
            final = self.root / key
            final.parent.mkdir(parents=True, exist_ok=True)
            temporary = final.with_name(f".tmp-{final.name}-{uuid4().hex[:8]}")
            try:
                if directory:
                    shutil.copytree(source, temporary)
                    for file in temporary.rglob("*"):
                        if file.is_file():
                            _fsync(file)
                    _fsync_dir(temporary)
                else:
                    shutil.copyfile(source, temporary)
                    _fsync(temporary)
                if final.exists():  # an older try of the same key that never got its row
                    self.delete(str(final))
                temporary.rename(final)
                _fsync_dir(final.parent)
            except BaseException:
                self.delete(str(temporary))
                raise
            return str(final)
        return self._upload(source, key, directory=directory)

    def _upload(self, source: Path, key: str, *, directory: bool) -> str:
        """Upload to an object store, one object per file, straight to the final key.

        Each object appears whole (a PUT is atomic) and the registry records the key only after this
        returns, so a crash leaves at most unrecorded objects. Objects are named one by one, not through
        fsspec's recursive put/mv, whose target depends on whether the prefix already exists.
        """
        final_url = f"{self.url}/{key}"
        if not directory:
            self._fs.put_file(str(source), final_url)
            return final_url
        if self._fs.exists(final_url):  # an older try of the same key that never got its row
            self._fs.rm(final_url, recursive=True)
        for file in sorted(p for p in source.rglob("*") if p.is_file()):
            self._fs.put_file(str(file), f"{final_url}/{file.relative_to(source).as_posix()}")
        return final_url


def _remove_local(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _fsync(path: Path) -> None:
    with path.open("rb") as handle:
        os.fsync(handle.fileno())


def _fsync_dir(path: Path) -> None:
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
