"""The artifact store writes all or nothing, digests directories stably, and works over fsspec."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from uuid import uuid4

import pytest

from lorafleet.errors import CorruptFileError, NotFoundError
from lorafleet.registry import ArtifactStore
from lorafleet.registry.artifacts import directory_bytes, directory_sha256, file_sha256


def leftovers(root: Path) -> list[str]:
    """Names of temporary files or folders anywhere under `root`."""
    return [p.name for p in root.rglob(".tmp-*")]


def test_put_file_lands_at_its_key_with_nothing_left_over(tmp_path: Path) -> None:
    store = ArtifactStore(str(tmp_path / "store"))
    source = tmp_path / "train.jsonl"
    source.write_text('{"prompt": "a"}\n')
    url = store.put_file(source, "tenants/t1/files/file-1.jsonl")
    assert Path(url) == tmp_path / "store" / "tenants" / "t1" / "files" / "file-1.jsonl"
    assert store.local_path(url).read_text() == '{"prompt": "a"}\n'
    assert file_sha256(Path(url)) == file_sha256(source)
    assert leftovers(tmp_path / "store") == []


def test_put_directory_copies_every_file_with_nothing_left_over(
    tmp_path: Path, make_adapter_dir: Callable[..., Path]
) -> None:
    store = ArtifactStore(str(tmp_path / "store"))
    source = make_adapter_dir()
    url = store.put_directory(source, "tenants/t1/adapters/a/av-1")
    assert directory_sha256(Path(url)) == directory_sha256(source)
    assert directory_bytes(Path(url)) == directory_bytes(source) > 0
    assert leftovers(tmp_path / "store") == []


def test_putting_the_same_key_again_replaces_it(
    tmp_path: Path, make_adapter_dir: Callable[..., Path]
) -> None:
    store = ArtifactStore(str(tmp_path / "store"))
    first = store.put_directory(make_adapter_dir("one", weights=b"one"), "k")
    second = store.put_directory(make_adapter_dir("two", weights=b"two"), "k")
    assert first == second
    assert (Path(second) / "adapter_model.safetensors").read_bytes() == b"two"
    assert leftovers(tmp_path / "store") == []


def test_a_missing_source_is_refused(tmp_path: Path) -> None:
    store = ArtifactStore(str(tmp_path / "store"))
    with pytest.raises(CorruptFileError, match="nothing to store"):
        store.put_file(tmp_path / "absent.jsonl", "k")


def _fail_on_call(number: int, real: Callable[..., object]) -> Callable[..., object]:
    """`real`, except that call `number` (1-based) raises OSError, like a disk that filled up."""
    calls = iter(range(1, 1_000_000))

    def maybe_fail(*args: object, **kwargs: object) -> object:
        if next(calls) == number:
            raise OSError(28, "No space left on device (injected)")
        return real(*args, **kwargs)

    return maybe_fail


@pytest.mark.parametrize(
    ("target", "call"),
    [("shutil.copyfile", 2), ("os.fsync", 2), ("os.fsync", 4)],
    ids=["copy-second-file", "fsync-second-file", "fsync-directory"],
)
def test_a_directory_copy_failing_midway_leaves_nothing(
    tmp_path: Path,
    make_adapter_dir: Callable[..., Path],
    monkeypatch: pytest.MonkeyPatch,
    target: str,
    call: int,
) -> None:
    store = ArtifactStore(str(tmp_path / "store"))
    source = make_adapter_dir()
    module, name = target.split(".")
    real = getattr({"shutil": shutil, "os": os}[module], name)
    monkeypatch.setattr(f"{module}.{name}", _fail_on_call(call, real))
    with pytest.raises(OSError, match="injected"):
        store.put_directory(source, "tenants/t1/adapters/a/av-1")
    monkeypatch.undo()
    final = tmp_path / "store" / "tenants" / "t1" / "adapters" / "a" / "av-1"
    assert not final.exists()
    assert leftovers(tmp_path / "store") == []
    assert directory_sha256(Path(store.put_directory(source, "tenants/t1/adapters/a/av-1"))) == (
        directory_sha256(source)
    )


@pytest.mark.parametrize("target", ["shutil.copyfile", "os.fsync"])
def test_a_file_copy_failing_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, target: str
) -> None:
    store = ArtifactStore(str(tmp_path / "store"))
    source = tmp_path / "train.jsonl"
    source.write_text("{}\n")
    module, name = target.split(".")
    monkeypatch.setattr(
        f"{module}.{name}", _fail_on_call(1, getattr({"shutil": shutil, "os": os}[module], name))
    )
    with pytest.raises(OSError, match="injected"):
        store.put_file(source, "tenants/t1/files/file-1.jsonl")
    monkeypatch.undo()
    assert not (tmp_path / "store" / "tenants" / "t1" / "files" / "file-1.jsonl").exists()
    assert leftovers(tmp_path / "store") == []


def test_directory_sha256_is_stable_and_sensitive_to_content_and_names(
    tmp_path: Path, make_adapter_dir: Callable[..., Path]
) -> None:
    source = make_adapter_dir("a", weights=b"\x00\x01")
    twin = make_adapter_dir("b", weights=b"\x00\x01")  # same files under another folder name
    digest = directory_sha256(source)
    assert len(digest) == 64
    assert directory_sha256(source) == digest == directory_sha256(twin)

    (twin / "adapter_model.safetensors").write_bytes(b"\x00\x02")
    assert directory_sha256(twin) != digest
    (twin / "adapter_model.safetensors").write_bytes(b"\x00\x01")
    assert directory_sha256(twin) == digest
    (twin / "extra" / "notes.txt").rename(twin / "extra" / "renamed.txt")
    assert directory_sha256(twin) != digest


def test_deleting_twice_is_fine(tmp_path: Path, make_adapter_dir: Callable[..., Path]) -> None:
    store = ArtifactStore(str(tmp_path / "store"))
    url = store.put_directory(make_adapter_dir(), "k")
    store.delete(url)
    store.delete(url)
    assert not Path(url).exists()
    with pytest.raises(NotFoundError, match="missing"):
        store.local_path(url)


@pytest.fixture
def memory_store(lorafleet_home: Path) -> Iterator[ArtifactStore]:
    """An fsspec `memory://` store under a root of its own (the memory filesystem is process-wide)."""
    import fsspec

    root = f"memory://lorafleet-test-{uuid4().hex[:8]}"
    yield ArtifactStore(root)
    fs = fsspec.filesystem("memory")
    if fs.exists(root):
        fs.rm(root, recursive=True)


def test_memory_store_round_trips_a_directory(
    memory_store: ArtifactStore, make_adapter_dir: Callable[..., Path], lorafleet_home: Path
) -> None:
    source = make_adapter_dir()
    url = memory_store.put_directory(source, "tenants/t1/adapters/a/av-1")
    assert url == f"{memory_store.url}/tenants/t1/adapters/a/av-1"
    local = memory_store.local_path(url)
    assert local.is_relative_to(lorafleet_home)  # a cached copy under $LORAFLEET_HOME/cache
    assert directory_sha256(local) == directory_sha256(source)
    assert memory_store.local_path(url) == local  # cached
    assert [p for p in memory_store._fs.find(memory_store.url) if "/.tmp/" in p] == []
    memory_store.delete(url)
    assert not memory_store._fs.exists(url)
    memory_store.delete(url)  # twice is fine


def test_memory_store_round_trips_a_file(memory_store: ArtifactStore, tmp_path: Path) -> None:
    source = tmp_path / "train.jsonl"
    source.write_text('{"prompt": "a"}\n')
    url = memory_store.put_file(source, "tenants/t1/files/file-1.jsonl")
    assert memory_store.local_path(url).read_text() == '{"prompt": "a"}\n'
    memory_store.delete(url)
    assert not memory_store._fs.exists(url)


def test_memory_store_reports_a_missing_artifact(memory_store: ArtifactStore) -> None:
    with pytest.raises(NotFoundError, match="missing"):
        memory_store.local_path(f"{memory_store.url}/nothing/here")


@pytest.mark.integration
def test_two_stores_on_one_s3_bucket_read_what_the_other_wrote(
    s3_artifacts_url: str, make_adapter_dir: Callable[..., Path], tmp_path: Path
) -> None:
    """Two replicas' stores on moto's S3 server: each reads what the other wrote (no stale listing), and
    writing a key again replaces all of its files, not nests a copy under it."""
    writer = ArtifactStore(s3_artifacts_url, cache_dir=tmp_path / "writer-cache")
    reader = ArtifactStore(s3_artifacts_url, cache_dir=tmp_path / "reader-cache")
    assert reader._fs.find(reader.url) == []  # the reader looked before anything was there
    source = make_adapter_dir("one", weights=b"one")
    url = writer.put_directory(source, "tenants/t1/adapters/a/av-1")
    assert url == f"{s3_artifacts_url}/tenants/t1/adapters/a/av-1"
    assert directory_sha256(reader.local_path(url)) == directory_sha256(source)

    again = writer.put_directory(make_adapter_dir("two", weights=b"two"), "tenants/t1/adapters/a/av-1")
    stored = sorted(path.removeprefix(writer._root_path) for path in writer._fs.find(again))
    assert stored == [
        "/tenants/t1/adapters/a/av-1/adapter_config.json",
        "/tenants/t1/adapters/a/av-1/adapter_model.safetensors",
        "/tenants/t1/adapters/a/av-1/extra/notes.txt",
    ]
    fresh = ArtifactStore(s3_artifacts_url, cache_dir=tmp_path / "fresh-cache")
    assert (fresh.local_path(again) / "adapter_model.safetensors").read_bytes() == b"two"

    rows = tmp_path / "train.jsonl"
    rows.write_text('{"prompt": "a"}\n')
    file_url = writer.put_file(rows, "tenants/t1/files/file-1.jsonl")
    cached = reader.local_path(file_url)
    assert cached.read_text() == '{"prompt": "a"}\n'
    assert cached.name == "file-1.jsonl"  # its suffix says its format to the data loader
    reader.delete(file_url)
    with pytest.raises(NotFoundError, match="missing"):
        ArtifactStore(s3_artifacts_url, cache_dir=tmp_path / "third").local_path(file_url)
