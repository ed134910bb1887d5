"""Replay in `train`: each optimizer step holds the configured share of the parent's rows, read from
`continual.replay_paths` with the recipe's tokenization, and no more distinct ones than the cap."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from lorafleet.continual import ContinualConfig, Pool
from lorafleet.data import DataConfig, TokenizedExample
from lorafleet.errors import ConfigError
from lorafleet.models import tiny_tokenizer
from lorafleet.training import train
from lorafleet.training.replay import read_replay_rows, replay_batches
from tests.helpers import write_jsonl
from tests.training.conftest import RecipeFactory

OLD_ROWS = [{"prompt": f"old {i}", "completion": f"kept {i}"} for i in range(10)]


@pytest.fixture
def old_file(tmp_path: Path) -> Path:
    return write_jsonl(tmp_path / "old.jsonl", OLD_ROWS)


def test_every_step_holds_the_configured_share_of_parent_rows(
    recipe: RecipeFactory, random_adapter: Path, old_file: Path
) -> None:
    # 4 rows per micro-batch × 2 micro-batches = 8 rows per step; share 0.25 → 2 of them replayed.
    config = recipe(
        "model.parent=rand",
        "output.name=child",
        "data.validation_fraction=0",
        "training.gradient_accumulation_steps=2",
        "training.max_steps=2",
        "continual.strategy=replay",
        "continual.replay_share=0.25",
        f"continual.replay_paths=[{old_file}]",
    )
    records: list[dict[str, Any]] = []

    result = train(config, show_progress=False, log=lambda _: None, on_step=records.append)

    assert [r["replay_rows"] for r in records] == [2, 2]
    assert result.summary["steps"] == 2


def test_an_epoch_of_replay_counts_its_steps_from_the_new_rows_only(
    recipe: RecipeFactory, random_adapter: Path, old_file: Path
) -> None:
    # 16 new rows, 3 new + 1 old per step of 4 → ⌈16 / 3⌉ = 6 steps; the last (1 new row) gets 0 old ones.
    config = recipe(
        "model.parent=rand",
        "output.name=child",
        "data.validation_fraction=0",
        "training.max_steps=null",
        "training.epochs=1",
        "continual.strategy=replay",
        f"continual.replay_paths=[{old_file}]",
    )
    records: list[dict[str, Any]] = []

    train(config, show_progress=False, log=lambda _: None, on_step=records.append)

    assert [r["replay_rows"] for r in records] == [1, 1, 1, 1, 1, 0]


def rows(n: int, first_token: int) -> list[TokenizedExample]:
    """`n` three-token rows whose first tokens are first_token, first_token + 1, ..."""
    return [
        TokenizedExample([first_token + i, 2, 3], [first_token + i, 2, 3], f"row {i}", False)
        for i in range(n)
    ]


def test_replay_batches_cut_steps_into_micro_batches_and_cap_the_parent_rows() -> None:
    new, old = rows(24, 0), rows(50, 1000)
    pool = Pool("replay", old, 0.5, max_rows=3)

    micro, mixed = replay_batches(new, [pool], batch_size=2, accumulation=2, pad_token_id=0, seed=0, epoch=0)
    replayed = [counts[0] for counts in mixed]

    # 4 rows per step, 2 of them old: 24 new rows fill 12 steps of 2 micro-batches.
    assert len(micro) == 24 and all(b["input_ids"].shape == (2, 3) for b in micro)
    assert [replayed[i] + replayed[i + 1] for i in range(0, 24, 2)] == [2] * 12
    first_tokens = [int(t) for batch in micro for t in batch["input_ids"][:, 0]]
    assert sorted(t for t in first_tokens if t < 1000) == list(range(24))  # each new row once
    assert len({t for t in first_tokens if t >= 1000}) == 3  # the capped pool, reused
    assert sum(replayed) == sum(t >= 1000 for t in first_tokens)


def test_added_replay_rows_make_larger_micro_batches_and_keep_accumulation_per_step() -> None:
    new, old = rows(24, 0), rows(50, 1000)
    pool = Pool("replay", old, 0.5, added=True)

    micro, mixed = replay_batches(new, [pool], batch_size=2, accumulation=2, pad_token_id=0, seed=0, epoch=0)

    # 4 new rows per step and 2 old ones on top: 6 steps of 2 micro-batches of 3 rows.
    assert len(micro) == 12 and all(b["input_ids"].shape == (3, 3) for b in micro)
    assert [mixed[i][0] + mixed[i + 1][0] for i in range(0, 12, 2)] == [2] * 6
    first_tokens = [int(t) for batch in micro for t in batch["input_ids"][:, 0]]
    assert sorted(t for t in first_tokens if t < 1000) == list(range(24))


def test_replay_rows_are_tokenized_like_the_training_rows(old_file: Path) -> None:
    data = DataConfig(path="unused.jsonl", max_length=64, validation_fraction=0.2)
    continual = ContinualConfig(strategy="replay", replay_paths=[str(old_file), str(old_file)])

    read = read_replay_rows(data, continual, tiny_tokenizer())

    assert len(read) == 20  # none held out, both files read
    assert all(row.label_tokens > 0 and len(row) <= 64 for row in read)


def test_replay_paths_with_no_rows_fail_naming_the_field(recipe: RecipeFactory, random_adapter: Path) -> None:
    with pytest.raises(ConfigError, match=r"continual\.replay_paths"):
        recipe("model.parent=rand", "continual.strategy=replay", "continual.replay_paths=[]")
