"""The causal-LM loss on labelled tokens only, computing logits only where a label needs them.

HF causal LMs predict token t+1 from position t. With prompts masked (-100), most positions carry
no label; the vocabulary projection (49k × 576 MACs per token on SmolLM2, a fifth of the model) is
then computed only at positions where some row of the batch has a label (`logits_to_keep`).
The loss is returned as a sum with its token count, so gradient accumulation can average over
every labelled token of an optimizer step, not over micro-batches.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lorafleet.data.tokenize import IGNORE_INDEX


def causal_lm_loss(model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int]:
    """(sum of token cross-entropies, number of labelled tokens) of `batch` under `model`."""
    labels = batch["labels"]  # (B, T)
    targets = labels[:, 1:]  # (B, T-1): the token predicted at each position 0..T-2
    keep = (targets != IGNORE_INDEX).any(dim=0).nonzero().squeeze(1)  # (K,) positions with a label
    inputs = {key: value for key, value in batch.items() if key != "labels"}
    logits = model(
        **inputs, logits_to_keep=keep, use_cache=False
    ).logits  # (B, K, V); no cache: see data.packing
    chosen = targets[:, keep]  # (B, K)
    loss = F.cross_entropy(
        logits.float().flatten(0, 1), chosen.flatten(), ignore_index=IGNORE_INDEX, reduction="sum"
    )
    return loss, int((chosen != IGNORE_INDEX).sum())
