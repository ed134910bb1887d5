"""The causal-LM loss on labelled tokens only, computing logits only where a label needs them.

HF causal LMs predict token t+1 from position t. With prompts masked (-100), most positions carry
no label; the vocabulary projection (49k × 576 MACs per token on SmolLM2, a fifth of the model) and
its (tokens × vocabulary) logits, their log-softmax and their gradient, are then computed only at the
N labelled (row, position) pairs of the batch: transformers' `logits_to_keep` takes a (B, T) boolean
mask and returns (N, V) logits. On the support-ticket task that is about a third of the positions a
per-column selection keeps (rows' answers start at different columns), so the largest activations of
a step shrink about threefold. Transformers too old to take a mask get the per-column selection.
The loss is returned as a sum with its token count, so gradient accumulation can average over
every labelled token of an optimizer step, not over micro-batches.
"""

from __future__ import annotations

from functools import cache

import torch
import torch.nn.functional as F
from torch import nn

from lorafleet.data.tokenize import IGNORE_INDEX


def causal_lm_loss(model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int]:
    """(sum of token cross-entropies, number of labelled tokens) of `batch` under `model`."""
    labels = batch["labels"]  # (B, T)
    targets = labels[:, 1:]  # (B, T-1): the token predicted at each position 0..T-2
    inputs = {key: value for key, value in batch.items() if key != "labels"}
    labelled = targets != IGNORE_INDEX  # (B, T-1)
    if _keeps_by_mask():
        keep = F.pad(labelled, (0, 1))  # (B, T): the last position predicts nothing
        logits = model(
            **inputs, logits_to_keep=keep, use_cache=False
        ).logits  # (N, V); no cache: data.packing
        chosen = targets[labelled]  # (N,)
    else:
        columns = labelled.any(dim=0).nonzero().squeeze(1)  # (K,) positions where some row has a label
        logits = model(**inputs, logits_to_keep=columns, use_cache=False).logits.flatten(0, 1)  # (B·K, V)
        chosen = targets[:, columns].flatten()  # (B·K,)
    loss = F.cross_entropy(logits.float(), chosen, ignore_index=IGNORE_INDEX, reduction="sum")
    return loss, int(labelled.sum())


@cache
def _keeps_by_mask() -> bool:
    """Whether this transformers slices hidden states by a (B, T) boolean `logits_to_keep` (5.x does)."""
    try:
        from transformers.modeling_utils import slice_logits_to_keep
    except ImportError:
        return False
    hidden = torch.zeros(1, 2, 1)  # (B, T, H)
    return tuple(slice_logits_to_keep(hidden, torch.tensor([[True, False]])).shape) == (1, 1)
