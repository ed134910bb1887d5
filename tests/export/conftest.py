"""Fixtures for the export tests: tiny random models whose logits are not near-uniform (never a download)."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from transformers import PreTrainedModel, PreTrainedTokenizerFast

from lorafleet.models import tiny_model

EdgeModel = tuple[PreTrainedModel, PreTrainedTokenizerFast]  # a tiny model and its tokenizer
EdgeModelFactory = Callable[..., EdgeModel]


def edge_model(arch: str = "llama", *, tied: bool | None = None, seed: int = 0) -> EdgeModel:
    """A tiny `arch` model llama.cpp runs (head_dim 32, 2 query heads, 1 KV head) with sharp logits.

    `tiny_model`'s initialisation (std 0.02) leaves logits near 0 and attention near uniform, where a
    wrong q/k row order would go unnoticed. Here every matrix has std 1/√fan_in (peaked attention), the
    output head (the embedding, when tied) 0.5/√fan_in: logits of std ≈ 0.5, small enough that
    llama.cpp's fp16 arithmetic stays well inside the tests' 1e-2, large enough that a misplaced tensor
    moves them by about 1. Norm gains and biases are random too. The weights are rounded to fp16, so an
    F16 export holds them exactly and any difference in llama.cpp is the runtime's, not the file's.
    """
    model, tokenizer = tiny_model(arch, hidden_size=64, num_heads=2, intermediate_size=128, seed=seed)  # type: ignore[arg-type]
    if tied is not None and tied != model.config.tie_word_embeddings:
        model.config.tie_word_embeddings = tied
        model = type(model)(model.config).eval()
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, weight in model.named_parameters():
            if "embed_tokens" in name or "lm_head" in name:  # the output head: logits of std ≈ 0.5
                weight.normal_(0.0, 0.5 * weight.shape[1] ** -0.5, generator=generator)
            elif weight.ndim == 2:
                weight.normal_(0.0, weight.shape[1] ** -0.5, generator=generator)
            elif "norm" in name:  # RMSNorm gains around 1, so a misplaced one shows
                weight.copy_(1.0 + 0.1 * torch.randn(weight.shape, generator=generator))
            else:  # biases (Qwen2's q, k, v)
                weight.normal_(0.0, 0.1, generator=generator)
            weight.copy_(weight.half().float())
    return model, tokenizer


@pytest.fixture
def make_edge_model() -> EdgeModelFactory:
    """`make_edge_model(arch="llama", tied=None, seed=0)`: see `edge_model`."""
    return edge_model


@pytest.fixture
def edge_llama() -> EdgeModel:
    """The tiny sharp llama of `edge_model` (untied output head) and its byte-level tokenizer."""
    return edge_model("llama")


@pytest.fixture(scope="module")
def llama() -> PreTrainedModel:
    """`tiny_model("llama")` (hidden 32, 2 layers, 2 KV heads of 8), built once per test module."""
    model, _ = tiny_model("llama", seed=0)
    return model
