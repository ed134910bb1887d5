"""The running batch's KV cache: one transformers `DynamicCache` for all rows, left-padded, right-aligned.

Every row's tokens end in the same column, so one decode step appends one column for all rows:

    column:      0    1    2    3    4    5
    row 0        ·    ·    p0   p1   g0   g1      (· = padding, mask 0)
    row 1        p0   p1   p2   p3   g0   g1

Each row carries an explicit attention mask (B, L) and its own next position (the count of its real
tokens), so padding changes nothing a row computes. Requests joining between steps are prefilled
together (left-padded among themselves), then merged in: the side with fewer columns is padded on the
left. Finished rows are dropped with `index_select`, and columns that became padding in every row
are trimmed from the left.

A prefix that joiners share (a system prompt, an instruction) is prefilled once as a `PrefixKV`, whose
keys and values start every later prefill of prompts that begin with it (for the same adapter); only
the rest of each prompt is prefilled, after the prefix columns:

    column:      0    1    2    3    4
    row 0        s0   s1   ·    p0   p1      (s = the shared prefix, computed once)
    row 1        s0   s1   p0   p1   p2
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

from lorafleet.errors import ConfigError


def left_pad(rows: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids (B, T) left-padded with `pad_id`, and their attention mask (B, T)."""
    width = max(len(row) for row in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        if row:
            ids[i, width - len(row) :] = torch.tensor(row)
            mask[i, width - len(row) :] = 1
    return ids, mask


def check_batchable(config: object) -> None:
    """Raise `ConfigError` unless every layer of the model keeps a full-attention KV cache (no window)."""
    for layer in DynamicCache(config=config).layers:  # type: ignore[arg-type]
        if not isinstance(layer, DynamicLayer) or layer.is_sliding:
            raise ConfigError(
                f"the engine batches full-attention KV caches; this model uses {type(layer).__name__}"
            )


def shared_prefix_length(rows: list[list[int]], minimum: int = 8) -> int:
    """How many leading tokens every row shares, each row keeping at least one of its own; 0 under
    `minimum` (too short to be worth a forward pass of its own) or for a single row."""
    if len(rows) < 2:
        return 0
    first, shortest = rows[0], min(len(row) for row in rows)
    length = 0
    while length < shortest - 1 and all(row[length] == first[length] for row in rows):
        length += 1
    return length if length >= minimum else 0


class PrefixKV:
    """The keys and values (1, heads, P, head_dim) per layer of one prompt prefix under one adapter."""

    def __init__(self, ids: list[int], adapter: str | None, cache: DynamicCache) -> None:
        self.ids = ids
        self.adapter = adapter
        self.states = [_states(layer) for layer in cache.layers]  # type: ignore[arg-type]

    def __len__(self) -> int:
        return len(self.ids)

    def starts(self, rows: list[list[int]], adapter: str | None) -> bool:
        """Whether every row begins with this prefix (and goes on after it) under the same adapter."""
        n = len(self.ids)
        return adapter == self.adapter and all(len(row) > n and row[:n] == self.ids for row in rows)

    def cache_for(self, rows: int, config: object) -> DynamicCache:
        """A new cache of `rows` rows, each holding this prefix."""
        cache = DynamicCache(config=config)  # type: ignore[arg-type]
        for index, (keys, values) in enumerate(self.states):
            cache.update(keys.expand(rows, -1, -1, -1), values.expand(rows, -1, -1, -1), index)
        return cache


class BatchKV:
    """KV cache, attention mask (B, L) and next positions (B,) of the rows running together."""

    def __init__(self, cache: DynamicCache, mask: torch.Tensor) -> None:
        self.layers: list[DynamicLayer] = list(cache.layers)  # type: ignore[arg-type]  # see check_batchable
        self.cache = cache
        self.mask = mask  # (B, L), 1 = a real token
        self.positions = mask.sum(-1)  # (B,) the position of each row's next token

    @staticmethod
    def prefill_inputs(
        rows: list[list[int]], pad_id: int, device: torch.device
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Left-padded ids (B, T), mask (B, T) and position ids (B, T) for prefilling `rows` together."""
        ids, mask = left_pad(rows, pad_id)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)  # (B, T) padding gets 0; it is masked anyway
        return ids.to(device), mask.to(device), positions.to(device)

    def __len__(self) -> int:
        return self.mask.shape[0]

    @staticmethod
    def after_prefix(
        rows: list[list[int]], prefix: int, pad_id: int, device: torch.device
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """`prefill_inputs` of what follows the first `prefix` tokens of each row, the mask (B, prefix + T)
        covering the prefix's columns too, and positions counted from the prefix's end."""
        ids, mask, positions = BatchKV.prefill_inputs([row[prefix:] for row in rows], pad_id, device)
        mask = torch.cat([mask.new_ones(len(rows), prefix), mask], dim=1)  # (B, prefix + T)
        return ids, mask, positions + prefix

    @property
    def columns(self) -> int:
        return self.mask.shape[1]

    def decode_inputs(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Attention mask (B, L + 1) and position ids (B, 1) for one new token per row; advances the state."""
        ones = self.mask.new_ones(len(self), 1)
        self.mask = torch.cat([self.mask, ones], dim=1)  # (B, L + 1)
        position_ids = self.positions[:, None].clone()  # (B, 1)
        self.positions = self.positions + 1
        return self.mask, position_ids

    def merge(self, other: BatchKV) -> None:
        """Append `other`'s rows after this batch's, padding whichever has fewer columns on the left."""
        width = max(self.columns, other.columns)
        mine, theirs = width - self.columns, width - other.columns
        for layer, joining in zip(self.layers, other.layers, strict=True):
            (keys, values), (new_keys, new_values) = _states(layer), _states(joining)
            # keys, values: (B, heads, L, head_dim); pad the L axis on the left
            layer.keys = torch.cat([_pad_left(keys, mine), _pad_left(new_keys, theirs)])
            layer.values = torch.cat([_pad_left(values, mine), _pad_left(new_values, theirs)])
        self.mask = torch.cat([F.pad(self.mask, (mine, 0)), F.pad(other.mask, (theirs, 0))])  # (B + B', L)
        self.positions = torch.cat([self.positions, other.positions])

    def keep(self, rows: list[int]) -> None:
        """Keep only `rows` (in that order), then trim the columns that are padding in every row."""
        index = torch.tensor(rows, dtype=torch.long, device=self.mask.device)
        mask = self.mask.index_select(0, index)
        real = mask.any(0).nonzero()
        start = int(real[0]) if real.numel() else mask.shape[1]
        for layer in self.layers:
            keys, values = _states(layer)  # (B, heads, L, head_dim)
            layer.keys = keys.index_select(0, index)[:, :, start:]
            layer.values = values.index_select(0, index)[:, :, start:]
        self.mask = mask[:, start:]
        self.positions = self.positions.index_select(0, index)


def _states(layer: DynamicLayer) -> tuple[torch.Tensor, torch.Tensor]:
    assert layer.keys is not None and layer.values is not None, "a prefilled layer holds keys and values"
    return layer.keys, layer.values


def _pad_left(tensor: torch.Tensor, columns: int) -> torch.Tensor:
    """Key or value states (B, heads, L, head_dim) with `columns` zero columns added on the left."""
    return F.pad(tensor, (0, 0, columns, 0)) if columns else tensor
