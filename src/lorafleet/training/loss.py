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

When the labelled logits would still be large (N·V above `CHUNK_ELEMENTS`, 2^25: long rows with loss
on every token, a 128k vocabulary; not the bundled tasks on SmolLM2, whose batches of 8 hold at most
586 labelled tokens, 29M), the decoder's final hidden states are taken instead, and the head and
cross-entropy run over slices of them, each under activation checkpointing: only one slice's logits
(fp32, with their gradient) exist at a time, for one more pass of the head in the backward. A Llama-1B
step of 4 × 2048 labelled tokens holds 8192 × 128256 logits otherwise: 2 GB in bf16, 4 GB more as fp32
for the loss and 4 GB for its gradient; in slices of 261 tokens, 0.3 GB in all. Models that scale or
soft-cap their logits after the head keep the plain path.
"""

from __future__ import annotations

from functools import cache
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from lorafleet.data.tokenize import IGNORE_INDEX

# logits (labelled tokens × vocabulary) above which the head runs in slices of this many
CHUNK_ELEMENTS = 2**25
# config fields of models that transform the head's output into the logits (Gemma 2, Cohere, Granite)
_LOGIT_TRANSFORMS = ("final_logit_softcapping", "logit_scale", "logits_scaling")


def causal_lm_loss(model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int]:
    """(sum of token cross-entropies, number of labelled tokens) of `batch` under `model`."""
    labels = batch["labels"]  # (B, T)
    targets = labels[:, 1:]  # (B, T-1): the token predicted at each position 0..T-2
    inputs = {key: value for key, value in batch.items() if key != "labels"}
    labelled = targets != IGNORE_INDEX  # (B, T-1)
    count = int(labelled.sum())
    sliceable = _sliceable_head(model)
    if sliceable is not None and logit_rows(count, sliceable[1]) < count:
        return _sliced_loss(model, sliceable, inputs, labelled, targets[labelled])
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
    return loss, count


def logit_rows(labelled: int, vocabulary: int) -> int:
    """How many of a step's `labelled` tokens have their logits computed at once: all of them, or past
    `CHUNK_ELEMENTS` logits one slice's worth."""
    if labelled * vocabulary <= CHUNK_ELEMENTS:
        return labelled
    return max(1, CHUNK_ELEMENTS // vocabulary)


def _sliced_loss(
    model: nn.Module,
    sliceable: tuple[nn.Module, int],
    inputs: dict[str, torch.Tensor],
    labelled: torch.Tensor,
    chosen: torch.Tensor,
) -> tuple[torch.Tensor, int]:
    """The loss through the decoder's final hidden states, the head and cross-entropy run in slices."""
    head, vocabulary = sliceable
    decoder: Any = _causal(model).base_model  # transformers: the model under the head (LlamaModel, ...)
    hidden = decoder(**inputs, use_cache=False).last_hidden_state  # (B, T, H), after the final norm
    hidden = hidden[:, :-1][labelled]  # (N, H): the positions that predict a label
    rows = logit_rows(len(chosen), vocabulary)
    total = hidden.new_zeros((), dtype=torch.float32)
    for start in range(0, len(chosen), rows):
        piece = slice(start, start + rows)
        total = total + checkpoint(_head_loss, head, hidden[piece], chosen[piece], use_reentrant=False)
    return total, len(chosen)


def _head_loss(head: nn.Module, hidden: torch.Tensor, chosen: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(head(hidden).float(), chosen, reduction="sum")


def _sliceable_head(model: nn.Module) -> tuple[nn.Module, int] | None:
    """The output head and its vocabulary size, when the model's logits are the head's output as they are
    (no scale, no cap)."""
    causal = _causal(model)
    get_head = getattr(causal, "get_output_embeddings", None)
    config = getattr(causal, "config", None)
    head = get_head() if get_head is not None else None
    weight = getattr(head, "weight", None)
    if head is None or config is None or not isinstance(weight, torch.Tensor):
        return None
    if any(getattr(config, name, None) not in (None, 1, 1.0) for name in _LOGIT_TRANSFORMS):
        return None
    return head, weight.shape[0]


def _causal(model: nn.Module) -> nn.Module:
    """The transformers causal LM under a PEFT wrapper (the model itself when there is none)."""
    get_base_model = getattr(model, "get_base_model", None)
    return get_base_model() if get_base_model is not None else model


@cache
def _keeps_by_mask() -> bool:
    """Whether this transformers slices hidden states by a (B, T) boolean `logits_to_keep` (5.x does)."""
    try:
        from transformers.modeling_utils import slice_logits_to_keep
    except ImportError:
        return False
    hidden = torch.zeros(1, 2, 1)  # (B, T, H)
    return tuple(slice_logits_to_keep(hidden, torch.tensor([[True, False]])).shape) == (1, 1)
