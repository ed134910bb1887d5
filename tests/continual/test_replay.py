"""Replay mixing: the configured share in every step, the cap on parent rows, every new row once, seeded."""

from __future__ import annotations

from collections import Counter

import pytest

from lorafleet.continual import Pool, mix_replay, rows_per_step, steps_per_epoch
from lorafleet.errors import ConfigError

NEW = [("new", i) for i in range(50)]
OLD = [("old", j) for j in range(40)]


GENERAL = [("general", j) for j in range(6)]
Row = tuple[str, int]


def parent_pool(share: float = 0.25, max_rows: int = 1000, rows: list[Row] = OLD) -> Pool[Row]:
    return Pool("replay", rows, share, max_rows)


def mix(
    *, share: float = 0.25, max_rows: int = 1000, batch_size: int = 8, seed: int = 0, epoch: int = 0
) -> list[list[Row]]:
    return mix_replay(NEW, [parent_pool(share, max_rows)], batch_size=batch_size, seed=seed, epoch=epoch)


@pytest.mark.parametrize(
    ("share", "batch_size", "k"), [(0.25, 8, 2), (0.5, 4, 2), (0.1, 32, 3), (0.3, 10, 3)]
)
def test_every_full_step_holds_the_configured_share(share: float, batch_size: int, k: int) -> None:
    steps = mix(share=share, batch_size=batch_size)
    assert rows_per_step([parent_pool(share)], batch_size) == [k]
    for step in steps[:-1]:
        assert len(step) == batch_size
        assert sum(kind == "old" for kind, _ in step) == k
    last_new = sum(kind == "new" for kind, _ in steps[-1])
    assert sum(kind == "old" for kind, _ in steps[-1]) == round(k * last_new / (batch_size - k))
    assert len(steps) == steps_per_epoch(len(NEW), [parent_pool(share)], batch_size)


def test_every_new_row_appears_once_per_epoch() -> None:
    for epoch in range(3):
        rows = [row for step in mix(epoch=epoch) for row in step if row[0] == "new"]
        assert sorted(rows) == NEW


def test_old_rows_are_capped_and_repeat_evenly() -> None:
    steps = mix(max_rows=5)
    counts = Counter(row for step in steps for row in step if row[0] == "old")
    assert len(counts) == 5  # 18 replayed rows from a pool of 5
    assert max(counts.values()) - min(counts.values()) <= 1


def test_without_a_binding_cap_old_rows_do_not_repeat_before_the_pool_is_used() -> None:
    old = [row for step in mix() for row in step if row[0] == "old"]
    assert len(old) == len(set(old))  # 17 of 40 parent rows, each once


def test_the_stream_is_decided_by_seed_and_epoch() -> None:
    assert mix(seed=3) == mix(seed=3)
    assert mix(seed=3) != mix(seed=4)
    assert mix(seed=3, epoch=1) != mix(seed=3, epoch=0)
    pool = {row for epoch in range(4) for step in mix(seed=3, max_rows=5, epoch=epoch) for row in step}
    assert sum(kind == "old" for kind, _ in pool) == 5, "the capped pool is the same every epoch"


def test_two_pools_each_get_their_share_of_every_step() -> None:
    pools = [parent_pool(0.25), Pool("rehearsal", GENERAL, 0.125)]
    steps = mix_replay(NEW, pools, batch_size=8, seed=0)

    assert rows_per_step(pools, 8) == [2, 1]
    for step in steps[:-1]:
        kinds = Counter(kind for kind, _ in step)
        assert kinds == {"new": 5, "old": 2, "general": 1}
    assert sorted(row for step in steps for row in step if row[0] == "new") == NEW  # 50 new rows: 10 steps
    assert len(steps) == 10 == steps_per_epoch(len(NEW), pools, 8)
    general = Counter(row for step in steps for row in step if row[0] == "general")
    assert len(general) == 6 and max(general.values()) - min(general.values()) <= 1


def test_added_replay_rows_come_on_top_of_a_full_step_of_new_rows() -> None:
    pools = [Pool("replay", OLD, 0.25, 1000, added=True), Pool("rehearsal", GENERAL, 0.125)]
    steps = mix_replay(NEW, pools, batch_size=8, seed=0)

    for step in steps[:-1]:
        assert Counter(kind for kind, _ in step) == {"new": 7, "old": 2, "general": 1}  # 10 rows
    assert [kind for kind, _ in steps[-1]] == ["new"]  # 50 = 7 × 7 + 1: round(2/7) = round(1/7) = 0 mixed
    assert sorted(row for step in steps for row in step if row[0] == "new") == NEW
    assert len(steps) == 8 == steps_per_epoch(len(NEW), pools, 8)
    share = [Pool("replay", OLD, 0.9, 1000, added=True)]
    assert len(mix_replay(NEW, share, batch_size=4, seed=0)[0]) == 4 + 4  # no share of the step to exceed


def test_shares_that_round_to_nothing_or_everything_are_refused() -> None:
    with pytest.raises(ConfigError, match="rounds to 0 rows"):
        mix(share=0.05, batch_size=8)
    with pytest.raises(ConfigError, match="rounds to 4 mixed-in rows"):
        mix(share=0.9, batch_size=4)
    with pytest.raises(ConfigError, match="at least 2 rows"):
        mix(batch_size=1)
    both = [parent_pool(0.5), Pool("rehearsal", GENERAL, 0.5)]
    with pytest.raises(ConfigError, match="leaving no new rows") as err:
        mix_replay(NEW, both, batch_size=8, seed=0)
    assert err.value.field == "continual.rehearsal_share"


def test_a_pool_without_rows_is_refused_and_no_new_rows_is_empty() -> None:
    with pytest.raises(ConfigError, match="no rows to mix in") as err:
        mix_replay(NEW, [parent_pool(rows=[])], batch_size=8, seed=0)
    assert err.value.field == "continual.replay_share"
    assert mix_replay([], [parent_pool()], batch_size=8, seed=0) == []
