"""Replay: mix a share of the parent's own training rows into every optimizer step of the child.

With b rows per optimizer step (micro-batch × accumulation steps) and replay share ρ, every full step holds

    k = round(ρ·b) parent ("old") rows  and  b − k new rows,

so the new rows of an epoch fill ⌈N_new / (b − k)⌉ steps and each new row appears exactly once. The last
step, holding n < b − k new rows, gets round(k·n / (b − k)) old rows, keeping its share close to ρ.

The old rows are first capped: a seeded sample of at most `max_rows` of them forms the replay pool (the
same pool every epoch). The pool is drawn in a shuffled order, reshuffled each time it runs out, so pool
rows repeat as evenly as possible. Everything is decided by Python's `random.Random(seed)` (the new
rows' and pool's orders also by `epoch`): the same inputs give the same stream on every machine.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator, Sequence
from typing import TypeVar

from lorafleet.errors import ConfigError

Row = TypeVar("Row")


def replay_rows_per_step(share: float, batch_size: int) -> int:
    """k = round(share · batch_size) old rows per full step; `ConfigError` unless 0 < k < batch_size."""
    if not 0.0 < share < 1.0:
        raise ConfigError(
            f"continual.replay_share must be in (0, 1), got {share}", field="continual.replay_share"
        )
    if batch_size < 2:
        raise ConfigError(
            f"replay needs at least 2 rows per optimizer step (one new, one replayed), got {batch_size}; "
            "raise training.batch_size or gradient_accumulation_steps",
            field="training.batch_size",
        )
    k = round(share * batch_size)
    if k == 0 or k == batch_size:
        raise ConfigError(
            f"continual.replay_share {share} of {batch_size} rows per step rounds to {k} replayed rows; "
            f"choose a share between {0.5 / batch_size:.3g} and {1 - 0.5 / batch_size:.3g}, "
            "or more rows per step",
            field="continual.replay_share",
        )
    return k


def mix_replay(
    new_rows: Sequence[Row],
    old_rows: Sequence[Row],
    *,
    share: float,
    max_rows: int,
    batch_size: int,
    seed: int,
    epoch: int = 0,
) -> list[list[Row]]:
    """One epoch of optimizer steps: each a list of `batch_size` rows, round(share·batch_size) of them old.

    Every new row appears once; old rows come from a seeded pool of at most `max_rows` of `old_rows`.
    Rows are placed in each step shuffled, so micro-batches cut from a step get old rows too.
    """
    if max_rows < 1:
        raise ConfigError(
            f"continual.replay_max_rows must be ≥ 1, got {max_rows}", field="continual.replay_max_rows"
        )
    k = replay_rows_per_step(share, batch_size)
    if not new_rows:
        return []
    if not old_rows:
        raise ConfigError(
            "replay has no parent rows to mix in: the parent version records no training rows; "
            "name them with continual.replay_paths, or choose another strategy",
            field="continual.replay_paths",
        )
    pool_rng = random.Random(seed)  # the pool depends on the seed only: one cap, the same every epoch
    pool = pool_rng.sample(range(len(old_rows)), min(max_rows, len(old_rows)))
    rng = random.Random(f"{seed}:{epoch}")
    order = list(range(len(new_rows)))
    rng.shuffle(order)
    old = _cycle_shuffled(pool, rng)

    per_step = batch_size - k  # new rows per full step
    steps: list[list[Row]] = []
    for start in range(0, len(order), per_step):
        chunk = order[start : start + per_step]
        n_old = k if len(chunk) == per_step else round(k * len(chunk) / per_step)
        step = [new_rows[i] for i in chunk] + [old_rows[next(old)] for _ in range(n_old)]
        rng.shuffle(step)
        steps.append(step)
    return steps


def _cycle_shuffled(indices: list[int], rng: random.Random) -> Iterator[int]:
    """`indices` forever, each pass in a new shuffled order."""
    while True:
        order = indices[:]
        rng.shuffle(order)
        yield from order


def steps_per_epoch(new_rows: int, share: float, batch_size: int) -> int:
    """Optimizer steps of one `mix_replay` epoch over `new_rows` new rows (for the learning-rate schedule)."""
    return math.ceil(new_rows / (batch_size - replay_rows_per_step(share, batch_size)))
