"""Elastic weight consolidation (EWC, Kirkpatrick et al. 2017) on the LoRA parameters.

The child starts from the parent's LoRA weights θ* and is trained on new rows with the penalty

    Ω(θ) = λ/2 · Σᵢ Fᵢ · (θᵢ − θ*ᵢ)²

added to its loss, where F is the diagonal of the parent's Fisher information: parameters the parent's
data is sensitive to (large Fᵢ) are held near θ*, the others move freely. ∂Ω/∂θᵢ = λ·Fᵢ·(θᵢ − θ*ᵢ).

F is the diagonal empirical Fisher, estimated on M batches of the parent's rows:

    Fᵢ = 1/M · Σₘ (∂ℓₘ/∂θᵢ)²,   ℓₘ the mean token cross-entropy of batch m (labelled tokens only).

Batches of one row give the usual per-sequence estimate; a batch of b independent rows squares the mean
of b gradients, which is about 1/b of it (and smoother), so λ must be tuned with the batch size used.
Only the LoRA factors (A: r × in, B: out × r) get a Fisher; it is computed once and stored beside the
parent adapter as `fisher.safetensors`, keyed and shaped like `adapter_model.safetensors`.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load, save_file
from torch import nn

from lorafleet.adapters.storage import read_adapter
from lorafleet.continual import FISHER_FILE
from lorafleet.continual.parameters import lora_parameters
from lorafleet.errors import AdapterError, ConfigError, CorruptFileError

Batch = dict[str, torch.Tensor]  # input_ids, attention_mask, labels (-100 where unlabelled), all (B, T)
LossFn = Callable[[nn.Module, Batch], torch.Tensor]


def mean_token_loss(model: nn.Module, batch: Batch) -> torch.Tensor:
    """The HF causal-LM loss: mean cross-entropy over the batch's labelled tokens."""
    return model(**batch, use_cache=False).loss


def estimate_fisher(
    model: nn.Module,
    batches: Iterable[Batch],
    params: Mapping[str, nn.Parameter] | None = None,
    *,
    loss_fn: LossFn = mean_token_loss,
) -> dict[str, torch.Tensor]:
    """Diagonal empirical Fisher (mean over `batches` of squared gradients) of `params`, as fp32 on the CPU.

    `params` defaults to the model's LoRA parameters keyed as saved (`lora_parameters`). The model runs in
    eval mode (no dropout); its gradients, training mode and `requires_grad` flags are left as found.
    A parameter the loss does not reach gets a Fisher of zeros.
    """
    named = dict(params) if params is not None else lora_parameters(model)
    keys, tensors = list(named), list(named.values())
    sums = [torch.zeros_like(t, dtype=torch.float32) for t in tensors]
    flags = [t.requires_grad for t in tensors]
    was_training = model.training
    count = 0
    try:
        model.eval()
        for t in tensors:
            t.requires_grad_(True)
        with torch.enable_grad():
            for batch in batches:
                loss = loss_fn(model, batch)
                grads = torch.autograd.grad(loss, tensors, allow_unused=True)
                for total, grad in zip(sums, grads, strict=True):
                    if grad is not None:
                        total += grad.detach().float() ** 2
                count += 1
    finally:
        for t, flag in zip(tensors, flags, strict=True):
            t.requires_grad_(flag)
        model.train(was_training)
    if count == 0:
        raise ConfigError("the Fisher needs at least one batch of the parent's rows; none were given")
    return {key: (total / count).cpu() for key, total in zip(keys, sums, strict=True)}


def ewc_penalty(
    params: Mapping[str, torch.Tensor],
    anchor: Mapping[str, torch.Tensor],
    fisher: Mapping[str, torch.Tensor],
    lam: float,
) -> torch.Tensor:
    """λ/2 Σ F·(θ − θ*)² over every key of `fisher` (a 0-d fp32 tensor, differentiable in `params`)."""
    if not fisher:
        raise ConfigError("the EWC penalty needs a Fisher; this one holds no parameters")
    total: torch.Tensor | None = None
    for key, weight in fisher.items():
        if key not in params or key not in anchor:
            where = "the model's LoRA parameters" if key not in params else "the parent adapter"
            raise AdapterError(f"the Fisher has {key}, which {where} lack; estimate it on this parent")
        theta = params[key]
        drift = theta.float() - anchor[key].to(theta.device, torch.float32)  # θ − θ*, shape of θ
        term = (weight.to(theta.device, torch.float32) * drift.square()).sum()
        total = term if total is None else total + term
    assert total is not None
    return 0.5 * lam * total


def save_fisher(adapter_dir: str | os.PathLike[str], fisher: Mapping[str, torch.Tensor]) -> Path:
    """Write `fisher` as `fisher.safetensors` beside the adapter in `adapter_dir` atomically; return its path.

    It is checked against the adapter first (same keys and shapes, finite, non-negative).
    """
    folder = Path(adapter_dir)
    tensors = {key: value.detach().to("cpu", torch.float32).contiguous() for key, value in fisher.items()}
    path = folder / FISHER_FILE
    _check_against_adapter(folder, tensors, path, stored=False)
    handle, staging = tempfile.mkstemp(prefix=f".{FISHER_FILE}.", dir=folder)
    os.close(handle)
    try:
        save_file(tensors, staging, metadata={"format": "pt", "lorafleet": "diagonal empirical fisher"})
        with open(staging, "rb") as file:
            os.fsync(file.fileno())
        os.replace(staging, path)
    except BaseException:
        Path(staging).unlink(missing_ok=True)
        raise
    return path


def load_fisher(adapter_dir: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Read and validate the `fisher.safetensors` stored beside the adapter in `adapter_dir`.

    `AdapterError` when it is missing or does not fit the adapter; `CorruptFileError` when it is unreadable
    or holds negative or non-finite values. Only safetensors are read.
    """
    folder = Path(adapter_dir)
    path = folder / FISHER_FILE
    if not path.is_file():
        raise AdapterError(
            f"{path}: no Fisher stored with this adapter; estimate it on the parent's rows "
            "(continual.estimate_fisher) and save it with continual.save_fisher"
        )
    try:
        fisher = load(path.read_bytes())
    except (SafetensorError, OSError, ValueError) as err:
        raise CorruptFileError(
            f"{path}: unreadable safetensors file, truncated or corrupted ({err})"
        ) from err
    _check_against_adapter(folder, fisher, path, stored=True)
    return {key: value.float() for key, value in fisher.items()}


def _check_against_adapter(
    folder: Path, fisher: Mapping[str, torch.Tensor], path: Path, *, stored: bool
) -> None:
    """Raise unless `fisher` has exactly the adapter's LoRA keys and shapes and finite values ≥ 0.

    Bad values are a `CorruptFileError` in a `stored` file, an `AdapterError` in one about to be written.
    """
    _, state, _ = read_adapter(folder)
    expected = {k: v for k, v in state.items() if k.endswith((".lora_A.weight", ".lora_B.weight"))}
    missing = sorted(expected.keys() - fisher.keys())
    extra = sorted(fisher.keys() - expected.keys())
    if missing or extra:
        first = f"lacks {missing[0]}" if missing else f"has {extra[0]}, which the adapter lacks"
        raise AdapterError(
            f"{path}: does not fit the adapter in {folder} ({len(missing)} keys missing, {len(extra)} "
            f"extra): it {first}; estimate the Fisher again on this adapter"
        )
    for key in sorted(expected):
        value = fisher[key]
        if value.shape != expected[key].shape:
            raise AdapterError(
                f"{path}: {key} has shape {tuple(value.shape)}, the adapter's {tuple(expected[key].shape)}; "
                "estimate the Fisher again on this adapter"
            )
        if not value.is_floating_point() or not bool(torch.isfinite(value).all()) or bool((value < 0).any()):
            if stored:
                raise CorruptFileError(f"{path}: {key} holds negative or non-finite values; a Fisher is ≥ 0")
            raise AdapterError(
                f"not writing {path}: {key} holds negative or non-finite values; a Fisher is ≥ 0"
            )
