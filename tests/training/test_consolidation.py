"""EWC in `train`: a child under a large λ stays much closer to its parent than under a tiny one; the
parent's Fisher is estimated once, saved beside it and reused; without it or the rows to estimate it, a
clear error before anything is written."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from lorafleet.adapters import read_adapter
from lorafleet.continual import FISHER_FILE, load_fisher
from lorafleet.errors import ConfigError
from lorafleet.training import TrainResult, train
from tests.training.conftest import RecipeFactory


def quiet(config: object, lines: list[str] | None = None) -> TrainResult:
    return train(config, show_progress=False, log=(lines if lines is not None else []).append)  # type: ignore[arg-type]


def distance(
    a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], weight: dict[str, torch.Tensor]
) -> float:
    """√Σ F(a − b)²: the drift EWC penalises (parameters the parent's data ignores may move freely)."""
    return sum(float((weight[k] * (a[k] - b[k]).square()).sum()) for k in weight) ** 0.5


@pytest.fixture
def parent(recipe: RecipeFactory) -> Path:
    """An adapter trained by `train` on `qa_file`, so its card records its training rows."""
    return quiet(recipe("output.name=parent", "training.max_steps=2")).adapter_dir


def child(
    recipe: RecipeFactory, json_file: Path, lam: float, name: str, lines: list[str] | None = None
) -> Path:
    config = recipe(
        "model.parent=parent",
        f"output.name={name}",
        f"data.path={json_file}",
        "training.max_steps=8",
        "continual.strategy=ewc",
        f"continual.ewc_lambda={lam}",
        "continual.fisher_rows=8",
    )
    return quiet(config, lines).adapter_dir


def test_a_large_lambda_keeps_the_child_near_its_parent(
    recipe: RecipeFactory, parent: Path, json_file: Path
) -> None:
    _, anchor, _ = read_adapter(parent)

    _, held, _ = read_adapter(child(recipe, json_file, 1e9, "held"))
    _, free, _ = read_adapter(child(recipe, json_file, 1e-9, "free"))
    fisher = load_fisher(parent)

    held_drift, free_drift = distance(held, anchor, fisher), distance(free, anchor, fisher)
    assert free_drift > 0
    assert held_drift < 0.2 * free_drift, (held_drift, free_drift)


def test_the_fisher_is_estimated_once_and_stored_beside_the_parent(
    recipe: RecipeFactory, parent: Path, json_file: Path
) -> None:
    first: list[str] = []
    second: list[str] = []

    child(recipe, json_file, 10.0, "one", first)
    stored = load_fisher(parent)
    child(recipe, json_file, 10.0, "two", second)

    assert any("estimating the parent's Fisher on up to 8 rows" in line for line in first), first
    assert any(f"the parent's Fisher from {parent / FISHER_FILE}" in line for line in second), second
    assert all(bool((f >= 0).all()) for f in stored.values()) and any(
        bool(f.sum() > 0) for f in stored.values()
    )
    card = read_adapter(parent / ".." / "two")[2]
    assert card is not None and card.lineage.method == "continual:ewc"


def test_ewc_without_a_fisher_or_the_parents_rows_fails_before_writing(
    recipe: RecipeFactory, random_adapter: Path, lorafleet_home: Path
) -> None:
    config = recipe("model.parent=rand", "output.name=child", "continual.strategy=ewc")

    with pytest.raises(ConfigError, match="its card records no training data") as err:
        quiet(config)

    assert err.value.field == "continual.strategy"
    assert not (lorafleet_home / "adapters" / "child").exists()
    assert not (random_adapter / FISHER_FILE).exists()


def test_ewc_estimates_the_fisher_on_the_named_parent_rows(
    recipe: RecipeFactory, random_adapter: Path, json_file: Path
) -> None:
    lines: list[str] = []
    config = recipe(
        "model.parent=rand",
        "output.name=child",
        "training.max_steps=2",
        "continual.strategy=ewc",
        "continual.fisher_rows=4",
        f"continual.replay_paths=[{json_file}]",
    )

    quiet(config, lines)  # the parent's card records no data: the named rows serve instead

    assert any(f"estimating the parent's Fisher on up to 4 rows of {json_file}" in line for line in lines), (
        lines
    )
    assert (random_adapter / FISHER_FILE).is_file()
