"""Replay in training: earlier rows mixed into every optimizer step.

The pools are the parent's own rows (`continual.replay_paths`, read and tokenized exactly as the training
rows are: `data:` settings, none held out) and the base's answers to general prompts
(`training.rehearsal`). `continual.mix_replay` decides each step's rows: with b = batch_size ×
gradient_accumulation_steps rows per step, round(share · b) come from each pool (the parent's drawn from
a seeded sample of at most `replay_max_rows`). Each step's rows are cut into its micro-batches of
`batch_size` (the last step may have fewer); a step with more rows than batch_size × accumulation (replay
rows added on top, `continual.replay_mode: added`) into `gradient_accumulation_steps` larger ones.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from lorafleet.continual.config import ContinualConfig
from lorafleet.continual.replay import Pool, mix_replay
from lorafleet.data import DataConfig, TokenizedExample, collate, prepare_data

Batch = dict[str, torch.Tensor]  # input_ids, labels, attention_mask: (B, T)


def read_replay_rows(data: DataConfig, continual: ContinualConfig, tokenizer: Any) -> list[TokenizedExample]:
    """Every row of `continual.replay_paths`, tokenized with the recipe's `data:` settings."""
    return [row for path in continual.replay_paths for row in read_parent_rows(path, data, tokenizer)]


def read_parent_rows(
    path: str, data: DataConfig, tokenizer: Any, *, max_rows: int | None = None
) -> list[TokenizedExample]:
    """The first `max_rows` (default all) rows of the parent's data file `path`, tokenized with the recipe's
    `data:` settings, none held out for validation."""
    settings = data.model_copy(
        update={"path": path, "validation_path": None, "validation_fraction": 0.0, "max_rows": max_rows}
    )
    return prepare_data(settings, tokenizer).train


def replay_batches(
    new_rows: list[TokenizedExample],
    pools: list[Pool[TokenizedExample]],
    *,
    batch_size: int,
    accumulation: int,
    pad_token_id: int,
    seed: int,
    epoch: int,
) -> tuple[list[Batch], list[list[int]]]:
    """One epoch's micro-batches, `accumulation` per optimizer step, and how many rows of each pool each
    micro-batch holds."""
    steps = mix_replay(new_rows, pools, batch_size=batch_size * accumulation, seed=seed, epoch=epoch)
    owner = {id(row): index for index, pool in enumerate(pools) for row in pool.rows}
    micro: list[Batch] = []
    mixed: list[list[int]] = []
    for step in steps:
        size = max(batch_size, math.ceil(len(step) / accumulation))  # `accumulation` micro-batches per step
        for start in range(0, len(step), size):
            rows = step[start : start + size]
            micro.append(collate(rows, pad_token_id=pad_token_id))
            counts = [0] * len(pools)
            for row in rows:
                if id(row) in owner:
                    counts[owner[id(row)]] += 1
            mixed.append(counts)
    return micro, mixed
