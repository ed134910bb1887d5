"""Replay in training: the parent's own rows (`continual.replay_paths`) mixed into every optimizer step.

The rows are read and tokenized exactly as the training rows are (`data:` settings, none held out), and
`continual.mix_replay` decides each step's rows: with b = batch_size × gradient_accumulation_steps rows
per step, round(replay_share · b) are the parent's, drawn from a seeded pool of at most `replay_max_rows`.
Each step's rows are cut into its micro-batches of `batch_size` (the last step may have fewer).
"""

from __future__ import annotations

from typing import Any

import torch

from lorafleet.continual.config import ContinualConfig
from lorafleet.continual.replay import mix_replay
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
    old_rows: list[TokenizedExample],
    continual: ContinualConfig,
    *,
    batch_size: int,
    accumulation: int,
    pad_token_id: int,
    seed: int,
    epoch: int,
) -> tuple[list[Batch], list[int]]:
    """One epoch's micro-batches, `accumulation` per optimizer step, and how many replayed rows each holds."""
    steps = mix_replay(
        new_rows,
        old_rows,
        share=continual.replay_share,
        max_rows=continual.replay_max_rows,
        batch_size=batch_size * accumulation,
        seed=seed,
        epoch=epoch,
    )
    old = {id(row) for row in old_rows}
    micro: list[Batch] = []
    replayed: list[int] = []
    for step in steps:
        for start in range(0, len(step), batch_size):
            rows = step[start : start + batch_size]
            micro.append(collate(rows, pad_token_id=pad_token_id))
            replayed.append(sum(id(row) in old for row in rows))
    return micro, replayed
