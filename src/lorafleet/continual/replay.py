"""Replay: mix shares of earlier rows into every optimizer step of a new version.

Two kinds of earlier rows are mixed in, each a `Pool` with its own share: the parent's own training rows
(`replay`, guarding what the parent learned) and the base model's own answers to general prompts
(`rehearsal`, guarding what the base could do; `training.rehearsal`). With b rows per optimizer step
(micro-batch × accumulation steps) and pool shares ρ₁, ρ₂, …, every full step holds

    kᵢ = round(ρᵢ·b) rows of pool i  and  b − Σkᵢ new rows,

so the new rows of an epoch fill ⌈N_new / (b − Σkᵢ)⌉ steps and each new row appears exactly once. An
`added` pool (`continual.replay_mode: added`) does not take its kᵢ rows from the b: they come on top, so a
step holds b − Σ(kᵢ of the other pools) new rows and more than b rows in all. The last step, holding
n new rows, fewer than a full step's, gets round(kᵢ·n / full) rows of pool i, keeping its shares close.

Each pool is first capped: a seeded sample of at most `max_rows` of its rows (the same sample every
epoch). A pool is drawn in a shuffled order, reshuffled each time it runs out, so its rows repeat as
evenly as possible. Everything is decided by Python's `random.Random(seed)` (the new rows' and pools'
orders also by `epoch`): the same inputs give the same stream on every machine.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

from lorafleet.continual.config import ContinualConfig
from lorafleet.errors import ConfigError

Row = TypeVar("Row")


@dataclass(frozen=True)
class Pool(Generic[Row]):
    """Earlier rows mixed into every step: `share` of its rows, from at most `max_rows` of `rows`.

    `name` is `replay` or `rehearsal`: the recipe field `continual.<name>_share` sets the share (errors
    about this pool name it), and a training step's record counts the pool's rows as `<name>_rows`.
    """

    name: str
    rows: Sequence[Row]
    share: float
    max_rows: int | None = None
    added: bool = False  # its rows come on top of the step's b rows instead of taking a share of them

    @property
    def field(self) -> str:
        return f"continual.{self.name}_share"


def mixed_pools(
    continual: ContinualConfig, *, parent: bool, replay: Sequence[Row] = (), rehearsal: Sequence[Row] = ()
) -> list[Pool[Row]]:
    """The pools a recipe mixes into every step: the parent's rows `replay` under strategy replay (with a
    parent), and the base's answers `rehearsal` when `rehearsal_share` > 0; empty when it mixes nothing."""
    pools: list[Pool[Row]] = []
    if continual.strategy == "replay" and parent:
        added = continual.replay_mode == "added"
        pools.append(Pool("replay", replay, continual.replay_share, continual.replay_max_rows, added))
    if continual.rehearsal_share > 0:
        pools.append(Pool("rehearsal", rehearsal, continual.rehearsal_share))
    return pools


def rows_per_step(pools: Sequence[Pool[Row]], batch_size: int) -> list[int]:
    """kᵢ = round(shareᵢ · batch_size) rows of each pool per full step; `ConfigError` naming the pool's
    field unless every kᵢ ≥ 1 and at least one row per step is left for the new rows."""
    if batch_size < len(pools) + 1:
        raise ConfigError(
            f"training.batch_size: mixing {' and '.join(p.field for p in pools)} needs at least "
            f"{len(pools) + 1} rows per optimizer step (one new, one of each), got {batch_size}; "
            "raise training.batch_size or gradient_accumulation_steps",
            field="training.batch_size",
        )
    counts = []
    for pool in pools:
        if not 0.0 < pool.share < 1.0:
            raise ConfigError(f"{pool.field} must be in (0, 1), got {pool.share}", field=pool.field)
        k = round(pool.share * batch_size)
        if k == 0:
            raise ConfigError(
                f"{pool.field} {pool.share} of {batch_size} rows per step rounds to 0 rows; "
                f"choose at least {0.5 / batch_size:.3g}, or more rows per step",
                field=pool.field,
            )
        counts.append(k)
    new = _new_per_full_step(pools, counts, batch_size)
    if new <= 0:
        shared = [p for p in pools if not p.added]  # new <= 0 needs at least one of them
        shares = " + ".join(f"{p.field} {p.share}" for p in shared)
        raise ConfigError(
            f"{shared[-1].field}: {shares} of {batch_size} rows per step rounds to {batch_size - new} "
            "mixed-in rows, leaving no new rows; lower the share, or use more rows per step",
            field=shared[-1].field,
        )
    return counts


def mix_replay(
    new_rows: Sequence[Row],
    pools: Sequence[Pool[Row]],
    *,
    batch_size: int,
    seed: int,
    epoch: int = 0,
) -> list[list[Row]]:
    """One epoch of optimizer steps: each a list of `batch_size` rows (more with an added pool),
    round(shareᵢ·batch_size) from pool i.

    Every new row appears once; pool i's rows come from a seeded sample of at most its `max_rows`.
    Rows are placed in each step shuffled, so micro-batches cut from a step get pool rows too.
    """
    counts = rows_per_step(pools, batch_size)
    if not new_rows:
        return []
    for pool in pools:
        if not pool.rows:
            raise ConfigError(f"{pool.field} is set, but there are no rows to mix in", field=pool.field)
    rng = random.Random(f"{seed}:{epoch}")
    streams = [_cycle_shuffled(_capped(pool, seed), rng) for pool in pools]
    order = list(range(len(new_rows)))
    rng.shuffle(order)

    per_step = _new_per_full_step(pools, counts, batch_size)
    steps: list[list[Row]] = []
    for start in range(0, len(order), per_step):
        chunk = order[start : start + per_step]
        step = [new_rows[i] for i in chunk]
        for pool, stream, k in zip(pools, streams, counts, strict=True):
            n = k if len(chunk) == per_step else round(k * len(chunk) / per_step)
            step += [pool.rows[next(stream)] for _ in range(n)]
        rng.shuffle(step)
        steps.append(step)
    return steps


def _capped(pool: Pool[Row], seed: int) -> list[int]:
    """The indices of the pool's rows that may be drawn: all, or a sample of `max_rows` of them decided by
    the seed and the pool only (the same every epoch)."""
    rows = len(pool.rows)
    if pool.max_rows is None or pool.max_rows >= rows:
        return list(range(rows))
    return random.Random(f"{seed}:{pool.name}").sample(range(rows), pool.max_rows)


def _cycle_shuffled(indices: list[int], rng: random.Random) -> Iterator[int]:
    """`indices` forever, each pass in a new shuffled order."""
    while True:
        order = indices[:]
        rng.shuffle(order)
        yield from order


def steps_per_epoch(new_rows: int, pools: Sequence[Pool[Row]], batch_size: int) -> int:
    """Optimizer steps of one `mix_replay` epoch over `new_rows` new rows."""
    return math.ceil(new_rows / _new_per_full_step(pools, rows_per_step(pools, batch_size), batch_size))


def _new_per_full_step(pools: Sequence[Pool[Row]], counts: list[int], batch_size: int) -> int:
    """New rows in a full step: b − Σkᵢ over the pools that take a share of it (an added pool's kᵢ rows
    come on top)."""
    return batch_size - sum(k for pool, k in zip(pools, counts, strict=True) if not pool.added)
