"""Prompt embeddings for the drift monitor: the base model's last hidden state, mean-pooled over a prompt.

For a prompt of tokens t₁ … t_L (cut to `max_length`), with h_ℓ ∈ ℝᵈ the base model's final hidden state
at position ℓ, the embedding is (1/L) Σ_ℓ h_ℓ. Prompts are batched with right padding and the mean runs
over the attention mask only, so a prompt's embedding does not depend on the batch it is in. The model
is the bare base (a PEFT model is run with its adapter disabled): every version of every adapter on that
base is compared in one space, and the version's own training changes nothing about it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from peft import PeftModel
from torch import nn

from lorafleet.errors import DataError


@torch.inference_mode()
def embed_texts(
    model: nn.Module, tokenizer: Any, texts: Sequence[str], *, batch_size: int = 16, max_length: int = 256
) -> np.ndarray:
    """(len(texts), d) float64 embeddings of `texts` (module docstring)."""
    if not texts:
        raise DataError("no texts to embed", field="texts")
    empty = [i for i, text in enumerate(texts) if not text.strip()]
    if empty:
        raise DataError(f"text {empty[0]} is empty; nothing to embed", field="texts")
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    rows: list[np.ndarray] = []
    disabled = model.disable_adapter() if isinstance(model, PeftModel) else contextlib.nullcontext()
    try:
        with disabled:
            for start in range(0, len(texts), batch_size):
                ids = [
                    tokenizer(text, add_special_tokens=False)["input_ids"][:max_length]
                    for text in texts[start : start + batch_size]
                ]
                width = max(len(row) for row in ids)
                pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
                input_ids = torch.tensor([row + [pad] * (width - len(row)) for row in ids], device=device)
                mask = torch.tensor([[1] * len(row) + [0] * (width - len(row)) for row in ids], device=device)
                hidden = model(
                    input_ids=input_ids, attention_mask=mask, output_hidden_states=True
                ).hidden_states[-1]
                weights = mask.unsqueeze(-1).to(hidden.dtype)  # (B, T, 1)
                pooled = (hidden * weights).sum(dim=1) / weights.sum(dim=1)  # (B, d)
                rows.append(pooled.to(torch.float64).cpu().numpy())
    finally:
        model.train(was_training)
    return np.concatenate(rows)
