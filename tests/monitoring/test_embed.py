"""Prompt embeddings on the tiny llama: one row per prompt, independent of the batch it is padded in,
equal to the mean of the base's last hidden states, and the same under an adapter (disabled)."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from lorafleet.adapters import LoraSettings, attach
from lorafleet.errors import DataError
from lorafleet.models import tiny_model
from lorafleet.monitoring.embed import embed_texts

TEXTS = ["a short one", "a somewhat longer prompt about an invoice from ACME", "x"]


def test_each_embedding_is_the_mean_hidden_state_and_does_not_depend_on_the_batch() -> None:
    model, tokenizer = tiny_model("llama")

    batched = embed_texts(model, tokenizer, TEXTS, batch_size=3)
    alone = np.concatenate([embed_texts(model, tokenizer, [text]) for text in TEXTS])

    assert batched.shape == (3, model.config.hidden_size) and batched.dtype == np.float64
    np.testing.assert_allclose(batched, alone, atol=1e-5)
    ids = torch.tensor([tokenizer(TEXTS[1], add_special_tokens=False)["input_ids"]])
    with torch.no_grad():
        direct = model(input_ids=ids, output_hidden_states=True).hidden_states[-1][0].mean(dim=0)
    np.testing.assert_allclose(batched[1], direct.double().numpy(), atol=1e-5)
    assert not np.allclose(batched[0], batched[1])


def test_an_adapter_does_not_change_the_embeddings() -> None:
    model, tokenizer = tiny_model("llama")
    adapted = attach(
        copy.deepcopy(model), LoraSettings(r=4, target_modules=["q_proj", "v_proj"], init="random")
    )
    ids = torch.tensor([tokenizer(TEXTS[1], add_special_tokens=False)["input_ids"]])
    with torch.no_grad():  # enabled, the adapter does move the hidden states
        moved = adapted(input_ids=ids, output_hidden_states=True).hidden_states[-1][0].mean(dim=0)
    assert not np.allclose(moved.double().numpy(), embed_texts(model, tokenizer, [TEXTS[1]])[0], atol=1e-4)

    np.testing.assert_allclose(
        embed_texts(adapted, tokenizer, TEXTS), embed_texts(model, tokenizer, TEXTS), atol=1e-6
    )


def test_nothing_to_embed_is_refused() -> None:
    model, tokenizer = tiny_model("llama")
    with pytest.raises(DataError, match="no texts"):
        embed_texts(model, tokenizer, [])
    with pytest.raises(DataError, match="text 1 is empty"):
        embed_texts(model, tokenizer, ["ok", "  "])
