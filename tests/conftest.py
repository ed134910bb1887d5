"""Shared fixtures: an isolated $LORAFLEET_HOME and tiny random models (never a download)."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

pytest_plugins = ["tests.support.fixtures", "tests.support.platform", "tests.support.s3"]


@pytest.fixture(autouse=True)
def lorafleet_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test gets its own empty $LORAFLEET_HOME (the slow default-model tests share one)."""
    home = tmp_path / "home"
    monkeypatch.setenv("LORAFLEET_HOME", str(home))
    return home


@pytest.fixture(autouse=True)
def _one_thread(request: pytest.FixtureRequest) -> Iterator[None]:
    """Tiny models run fastest on one thread (more threads mostly wait for each other on a small CPU);
    tests of the real default model (marked slow) keep every thread."""
    if request.node.get_closest_marker("slow"):
        yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random llama and its byte-level tokenizer saved with `save_pretrained` (a `--model`)."""
    from lorafleet.models import tiny_model

    folder = tmp_path_factory.mktemp("tiny-llama")
    model, tokenizer = tiny_model("llama")
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture
def random_adapter(tiny_dir: Path, lorafleet_home: Path) -> Path:
    """A non-zero (init="random") rank-4 adapter of `tiny_dir`, saved by the library as adapters/rand."""
    from lorafleet.adapters import LoraSettings, attach, save_adapter
    from lorafleet.models import load_base

    base, _ = load_base(str(tiny_dir), device="cpu")
    peft_model = attach(base, LoraSettings(r=4, target_modules=["q_proj", "v_proj"], init="random"))
    return save_adapter(peft_model, lorafleet_home / "adapters" / "rand", name="rand")


@pytest.fixture
def tiny_base() -> torch.nn.Module:
    """A tiny random llama (hidden 32, 2 layers), built from config."""
    from lorafleet.models import tiny_model

    model, _ = tiny_model("llama", seed=0)
    return model


@pytest.fixture
def make_adapter() -> Callable[..., Path]:
    """`make_adapter(base, path, seed=0, **settings)`: save a random (B ≠ 0) adapter of a copy of `base`."""
    from tests.helpers import save_random_adapter

    return save_random_adapter
