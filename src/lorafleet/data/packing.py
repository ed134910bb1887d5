"""Pack short examples into `max_length` sequences, and collate rows into padded batches.

Attention stays inside each packed example. `position_ids` restart at 0 for every example, and the
batch of packed rows carries no `attention_mask`: transformers (`masking_utils.find_packed_sequence_indices`)
then reads each jump in `position_ids` as a sequence boundary and builds a block-diagonal causal mask
(sdpa, eager, flex) or uses variable-length kernels (flash-attention). This detection only happens
when the model is called with `use_cache=False` (no KV cache: always the case for training). Where that
cannot be arranged, `collate(..., mask_dtype=...)` adds the same mask explicitly as a 4-D additive
`attention_mask` (eager and sdpa; not flash-attention).

Labels: HF causal LMs shift labels inside the loss, so labels[t] is predicted from position t-1. At the
first token of a packed example, position t-1 belongs to the previous example, so that label is set
to -100: no example is ever predicted from another. (For an example alone, its first label is never
used either, so a packed row's loss is exactly the sum of its examples' losses.)
"""

from __future__ import annotations

from bisect import bisect_left, insort
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from lorafleet.data.tokenize import IGNORE_INDEX, TokenizedExample


@dataclass(frozen=True)
class PackedSequence:
    """Several examples laid end to end; `position_ids` restart at 0 where each one begins."""

    input_ids: list[int]
    labels: list[int]  # -100 at each example's first token, so no label crosses an example boundary
    position_ids: list[int]
    lengths: list[int]  # token count of each example, in order
    sources: list[str]  # where each example came from ("file.jsonl:12"), in order

    def __len__(self) -> int:
        return len(self.input_ids)


def pack_examples(examples: Sequence[TokenizedExample], max_length: int) -> list[PackedSequence]:
    """Best-fit-decreasing packing of `examples` into sequences of at most `max_length` tokens.

    Longest first, each into the fullest sequence that still has room (ties: the earlier one), else a
    new sequence. Deterministic: the same examples in the same order give the same sequences.
    """
    order = sorted(range(len(examples)), key=lambda i: (-len(examples[i]), i))
    bins: list[list[int]] = []
    room: list[tuple[int, int]] = []  # (tokens left, bin index) of bins with room, sorted
    for i in order:
        size = len(examples[i])
        if size > max_length:
            raise ValueError(f"{examples[i].source}: {size} tokens do not fit max_length {max_length}")
        slot = bisect_left(room, (size, -1))
        if slot == len(room):
            bins.append([i])
            left, index = max_length - size, len(bins) - 1
        else:
            free, index = room.pop(slot)
            bins[index].append(i)
            left = free - size
        if left > 0:
            insort(room, (left, index))
    return [_join([examples[i] for i in members]) for members in bins]


def _join(members: list[TokenizedExample]) -> PackedSequence:
    input_ids: list[int] = []
    labels: list[int] = []
    positions: list[int] = []
    for example in members:
        input_ids += example.input_ids
        labels += [IGNORE_INDEX, *example.labels[1:]]
        positions += range(len(example))
    return PackedSequence(
        input_ids, labels, positions, [len(e) for e in members], [e.source for e in members]
    )


def collate(
    batch: Sequence[TokenizedExample | PackedSequence],
    *,
    pad_token_id: int,
    mask_dtype: torch.dtype | None = None,
) -> dict[str, torch.Tensor]:
    """Right-pad rows to the longest one: `input_ids`, `labels` (-100 on padding) and the attention inputs.

    Plain rows get a 2-D `attention_mask` (1 = token, 0 = padding). If any row is packed, the batch
    gets `position_ids` instead (padding forms its own segment) and no `attention_mask`, unless
    `mask_dtype` asks for the explicit 4-D block-diagonal causal mask in that dtype.
    """
    if not batch:
        raise ValueError("collate needs at least one row")
    packed = any(isinstance(row, PackedSequence) for row in batch)
    rows, width = len(batch), max(len(row) for row in batch)
    input_ids = torch.full((rows, width), pad_token_id, dtype=torch.long)  # (B, T)
    labels = torch.full((rows, width), IGNORE_INDEX, dtype=torch.long)  # (B, T)
    attention_mask = torch.zeros((rows, width), dtype=torch.long)  # (B, T)
    position_ids = torch.zeros((rows, width), dtype=torch.long)  # (B, T)
    for r, row in enumerate(batch):
        n = len(row)
        input_ids[r, :n] = torch.tensor(row.input_ids, dtype=torch.long)
        labels[r, :n] = torch.tensor(row.labels, dtype=torch.long)
        attention_mask[r, :n] = 1
        positions = row.position_ids if isinstance(row, PackedSequence) else range(n)
        position_ids[r, :n] = torch.tensor(list(positions), dtype=torch.long)
        position_ids[r, n:] = torch.arange(width - n)  # padding restarts at 0: a segment of its own
    if not packed:
        return {"input_ids": input_ids, "labels": labels, "attention_mask": attention_mask}
    out = {"input_ids": input_ids, "labels": labels, "position_ids": position_ids}
    if mask_dtype is not None:
        out["attention_mask"] = packed_attention_mask(position_ids, mask_dtype)
    return out


def packed_attention_mask(position_ids: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Additive (B, 1, T, T) mask: 0 where query t may see key s (same example, s ≤ t), else dtype's min.

    Examples are found as transformers finds them: a new one starts wherever position_ids[t] is not
    position_ids[t-1] + 1.
    """
    steps = torch.diff(position_ids, prepend=position_ids[:, :1] - 1, dim=-1)  # (B, T)
    segment = (steps != 1).cumsum(-1)  # (B, T): index of the example each token belongs to
    same = segment[:, :, None] == segment[:, None, :]  # (B, T, T)
    width = position_ids.shape[1]
    causal = torch.ones(width, width, dtype=torch.bool, device=position_ids.device).tril()  # (T, T)
    allowed = (same & causal)[:, None]  # (B, 1, T, T)
    mask = torch.zeros(allowed.shape, dtype=dtype, device=position_ids.device)
    return mask.masked_fill(~allowed, torch.finfo(dtype).min)
