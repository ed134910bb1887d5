"""Greedy decoding for evaluation: one left-padded batch whose rows leave as soon as they are done.

`model.generate` keeps every row in the batch until the last one finishes, so one long answer makes
the whole batch pay for it. Here a row leaves the batch (and the KV cache) when it emits EOS, reaches
`max_new_tokens`, or when `hopeless(text)` says its answer can no longer score (a JSON metric cannot
accept an answer that starts with prose). Prompts are batched by length to keep padding small, and
the prefix every prompt of a batch shares (system prompt, instruction) is computed once, its keys and
values copied to every row.
Tokens are the same as `generate(do_sample=False)` gives for the rows that run to the end.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn
from transformers import DynamicCache

from lorafleet.models import eos_token_ids


@torch.inference_mode()
def greedy_decode(
    model: nn.Module,
    tokenizer: Any,
    prompts: Sequence[list[int]],
    *,
    max_new_tokens: int,
    batch_size: int,
    hopeless: Callable[[str], bool] | None = None,
    on_batch: Callable[[int], None] | None = None,
) -> list[list[int]]:
    """The greedy continuation (token ids, EOS excluded) of each prompt, in the prompts' order."""
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))  # similar lengths share a batch
    outputs: list[list[int]] = [[] for _ in prompts]
    for start in range(0, len(order), batch_size):
        rows = order[start : start + batch_size]
        for row, tokens in zip(
            rows,
            _decode_batch(model, tokenizer, [prompts[i] for i in rows], max_new_tokens, hopeless),
            strict=True,
        ):
            outputs[row] = tokens
        if on_batch is not None:
            on_batch(len(rows))
    return outputs


def _decode_batch(
    model: nn.Module,
    tokenizer: Any,
    prompts: list[list[int]],
    max_new_tokens: int,
    hopeless: Callable[[str], bool] | None,
) -> list[list[int]]:
    device = next(model.parameters()).device
    stop_ids = eos_token_ids(model, tokenizer)
    cache = DynamicCache()
    shared = _shared_prefix(prompts)
    if shared:  # the common prefix (system prompt, instruction) is computed once and copied per row
        model(
            input_ids=torch.tensor([shared], device=device),
            cache=cache,
            use_cache=True,
            logits_to_keep=1,
        )
        cache.batch_repeat_interleave(len(prompts))
    suffixes = [prompt[len(shared) :] for prompt in prompts]
    width = max(len(suffix) for suffix in suffixes)
    input_ids = torch.full((len(prompts), width), tokenizer.pad_token_id, dtype=torch.long)  # (B, T)
    padded = torch.zeros((len(prompts), width), dtype=torch.long)  # (B, T): 1 = token, 0 = left padding
    for i, suffix in enumerate(suffixes):
        input_ids[i, width - len(suffix) :] = torch.tensor(suffix)
        padded[i, width - len(suffix) :] = 1
    positions = len(shared) + (padded.cumsum(-1) - 1).clamp(min=0)  # (B, T): padding skipped
    mask = torch.cat([torch.ones((len(prompts), len(shared)), dtype=torch.long), padded], dim=1)  # (B, P+T)
    input_ids, mask, positions = input_ids.to(device), mask.to(device), positions.to(device)
    logits = model(
        input_ids=input_ids,
        attention_mask=mask,
        position_ids=positions,
        cache=cache,
        use_cache=True,
        logits_to_keep=1,
    ).logits[:, -1]  # (B, V)
    outputs: list[list[int]] = [[] for _ in prompts]
    active = list(range(len(prompts)))  # which prompt each remaining batch row belongs to
    for _ in range(max_new_tokens):
        chosen = logits.argmax(-1)  # (B,)
        keep: list[int] = []
        for row, (index, token) in enumerate(zip(active, chosen.tolist(), strict=True)):
            if token in stop_ids:
                continue
            outputs[index].append(token)
            if len(outputs[index]) >= max_new_tokens:
                continue
            if hopeless is not None and hopeless(tokenizer.decode(outputs[index], skip_special_tokens=True)):
                continue
            keep.append(row)
        if not keep:
            break
        if len(keep) < len(active):
            selected = torch.tensor(keep, device=device)
            cache.batch_select_indices(selected)
            mask, chosen = mask[selected], chosen[selected]
            active = [active[row] for row in keep]
        mask = torch.cat([mask, mask.new_ones((len(active), 1))], dim=1)  # (B, T+1)
        logits = model(
            input_ids=chosen[:, None],
            attention_mask=mask,
            position_ids=mask.sum(-1, keepdim=True) - 1,
            cache=cache,
            use_cache=True,
        ).logits[:, -1]  # (B, V)
    return outputs


def _shared_prefix(prompts: list[list[int]], minimum: int = 8) -> list[int]:
    """The leading tokens every prompt shares (each keeps at least one token of its own), if worth it."""
    shortest = min(len(p) for p in prompts)
    length = 0
    while length < shortest - 1 and all(p[length] == prompts[0][length] for p in prompts):
        length += 1
    return prompts[0][:length] if length >= minimum and len(prompts) > 1 else []
