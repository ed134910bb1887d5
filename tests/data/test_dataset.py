"""prepare_data: a deterministic disjoint split, truncation counts, statistics; batches per epoch."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lorafleet.data import (
    IGNORE_INDEX,
    DataConfig,
    TokenizedExample,
    batches,
    dataset_stats,
    packing_gain,
    prepare_data,
    split_indices,
)
from lorafleet.errors import DataError
from lorafleet.models import tiny_tokenizer
from tests.data.conftest import write_jsonl


def qa_rows(count: int) -> list[dict[str, str]]:
    return [
        {"prompt": f"Question {i}: " + "q" * (i % 7), "completion": f"Answer {i}" + "!" * (i % 5)}
        for i in range(count)
    ]


def test_split_is_deterministic_disjoint_and_complete() -> None:
    train, validation = split_indices(100, 0.1, seed=3)
    assert len(validation) == 10 and len(train) == 90
    assert set(train).isdisjoint(validation) and sorted(train + validation) == list(range(100))
    assert split_indices(100, 0.1, seed=3) == (train, validation)
    assert split_indices(100, 0.1, seed=4)[1] != validation
    assert split_indices(100, 0.0, seed=3) == (list(range(100)), [])
    assert split_indices(5, 0.01, seed=0)[1] != []  # a fraction > 0 holds out at least one row
    assert split_indices(1, 0.5, seed=0) == ([0], [])  # ... but never every row


def test_split_is_the_same_in_another_process() -> None:
    code = "from lorafleet.data.dataset import split_indices; print(split_indices(1000, 0.05, 7)[1])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == str(split_indices(1000, 0.05, 7)[1])


def test_prepare_data_splits_rows_and_keeps_eval_examples(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "qa.jsonl", qa_rows(40))
    config = DataConfig(path=str(path), validation_fraction=0.25, seed=1, system_prompt="Be exact.")
    prepared = prepare_data(config, tiny_tokenizer())
    assert prepared.format == "prompt_completion"
    assert len(prepared.train) == 30 and len(prepared.validation) == 10
    train_sources = {e.source for e in prepared.train}
    assert train_sources.isdisjoint(e.source for e in prepared.validation)
    assert [e.source for e in prepared.eval_examples] == [e.source for e in prepared.validation]
    assert prepared.eval_examples[0].messages[0].content == "Be exact."  # the system prompt is applied
    again = prepare_data(config, tiny_tokenizer())
    assert [e.source for e in again.validation] == [e.source for e in prepared.validation]
    assert prepared.train_stats.rows == 30 and prepared.validation_stats.rows == 10


def test_validation_path_and_max_rows(tmp_path: Path) -> None:
    train = write_jsonl(tmp_path / "train.jsonl", qa_rows(20))
    held_out = write_jsonl(tmp_path / "test.jsonl", qa_rows(8))
    config = DataConfig(path=str(train), validation_path=str(held_out), max_rows=12)
    prepared = prepare_data(config, tiny_tokenizer())
    assert len(prepared.train) == 12 and len(prepared.validation) == 8
    assert all(e.source.startswith(str(held_out)) for e in prepared.validation)


def test_truncated_and_dropped_rows_are_counted(tmp_path: Path) -> None:
    rows = [
        {"prompt": "short", "completion": "fine"},
        {"prompt": "p", "completion": "long answer " * 10},  # truncated, keeps some labels
        {"prompt": "very long prompt " * 10, "completion": "lost"},  # truncated away entirely
    ]
    path = write_jsonl(tmp_path / "rows.jsonl", rows)
    prepared = prepare_data(
        DataConfig(path=str(path), max_length=48, validation_fraction=0), tiny_tokenizer()
    )
    stats = prepared.train_stats
    assert (stats.rows, stats.truncated, stats.dropped) == (2, 2, 1)
    assert stats.length_max == 48
    assert stats.label_tokens == sum(e.label_tokens for e in prepared.train)
    with pytest.raises(DataError, match="no training examples left: 3 lost every labelled token"):
        prepare_data(DataConfig(path=str(path), max_length=8, validation_fraction=0), tiny_tokenizer())


def test_skip_bad_rows_counts_in_stats(tmp_path: Path) -> None:
    path = tmp_path / "rows.jsonl"
    path.write_text('{"prompt": "a", "completion": "b"}\n{oops\n{"prompt": "c", "completion": "d"}\n')
    with pytest.raises(DataError, match=r"rows.jsonl:2: invalid JSON"):
        prepare_data(DataConfig(path=str(path)), tiny_tokenizer())
    prepared = prepare_data(
        DataConfig(path=str(path), skip_bad_rows=True, validation_fraction=0), tiny_tokenizer()
    )
    assert prepared.train_stats.skipped == 1 and prepared.train_stats.rows == 2


def fake(length: int, truncated: bool = False) -> TokenizedExample:
    return TokenizedExample(list(range(length)), [IGNORE_INDEX, *range(1, length)], f"f:{length}", truncated)


def test_stats_percentiles() -> None:
    examples = [fake(n, truncated=n > 95) for n in range(1, 101)]
    stats = dataset_stats(examples, skipped=4, dropped=2)
    assert stats.as_dict() == {
        "rows": 100,
        "skipped": 4,
        "truncated": 5 + 2,
        "dropped": 2,
        "tokens": 5050,
        "label_tokens": 5050 - 100,
        "length_p50": 50,
        "length_p90": 90,
        "length_p99": 99,
        "length_max": 100,
    }
    assert dataset_stats([]).length_p50 == 0


def test_batches_are_deterministic_per_epoch_and_cover_every_example() -> None:
    examples = [fake(n) for n in range(2, 70)]

    def epoch_batches(epoch: int, *, packing: bool, shuffle: bool = True) -> list[dict[str, torch.Tensor]]:
        return batches(
            examples,
            batch_size=4,
            pad_token_id=0,
            max_length=128,
            packing=packing,
            shuffle=shuffle,
            seed=5,
            epoch=epoch,
        )

    def epoch_ids(epoch: int, packing: bool) -> list[list[list[int]]]:
        return [b["input_ids"].tolist() for b in epoch_batches(epoch, packing=packing)]

    for packing in (False, True):
        assert epoch_ids(0, packing) == epoch_ids(0, packing)
        assert epoch_ids(0, packing) != epoch_ids(1, packing)
    unpacked = epoch_batches(0, packing=False)
    assert sum(int(b["attention_mask"].sum()) for b in unpacked) == sum(len(e) for e in examples)
    padding = sum(int((b["attention_mask"] == 0).sum()) for b in unpacked)
    assert padding < 0.2 * sum(len(e) for e in examples)  # grouped by length: little padding
    packed = epoch_batches(0, packing=True)
    assert set(packed[0]) == {"input_ids", "labels", "position_ids"}
    assert all(b["input_ids"].shape[1] <= 128 for b in packed)
    assert sum(int((b["labels"] != IGNORE_INDEX).sum()) for b in packed) == sum(
        e.label_tokens for e in examples
    )
    in_order = epoch_batches(0, packing=False, shuffle=False)
    assert in_order[0]["input_ids"][0].tolist()[:2] == [0, 1] and in_order[0]["input_ids"].shape == (4, 5)


def test_packing_gain_counts_the_positions_each_way_of_batching_computes() -> None:
    """Three rows of 40 and three of 60 in batches of 2: by length [40 40] [40 60] [60 60] is 320 positions
    (the middle batch pads a 40 to 60); packed into 100 they are three full rows, 300."""
    rows = [fake(40), fake(60)] * 3
    assert packing_gain(rows, batch_size=2, max_length=100) == pytest.approx(1 - 300 / 320)
    same = [fake(60) for _ in range(16)]  # two never share a row of 100: packing saves nothing
    assert packing_gain(same, batch_size=4, max_length=100) == 0.0
    assert packing_gain([], batch_size=4, max_length=100) == 0.0
