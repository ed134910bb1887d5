"""`causal_lm_loss` against the model's own loss, with and without the logits of unlabelled positions."""

from __future__ import annotations

import pytest
import torch

from lorafleet.data import IGNORE_INDEX
from lorafleet.data.packing import collate, pack_examples
from lorafleet.data.tokenize import TokenizedExample
from lorafleet.models.tiny import tiny_model
from lorafleet.training import loss as loss_module
from lorafleet.training.loss import causal_lm_loss
from tests.helpers import saved_for_backward


def _rows() -> list[TokenizedExample]:
    """Three rows of different lengths whose answers start at different positions."""
    generator = torch.Generator().manual_seed(0)
    rows = []
    for length, prompt in ((9, 5), (14, 3), (6, 4)):
        ids = torch.randint(0, 250, (length,), generator=generator).tolist()
        labels = [IGNORE_INDEX] * prompt + ids[prompt:]
        rows.append(TokenizedExample(ids, labels, f"row{length}", truncated=False))
    return rows


def _reference(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int]:
    """HF's own causal-LM loss (mean over labelled tokens) times the labelled-token count."""
    count = int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())
    return model(**batch, use_cache=False).loss * count, count


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
@pytest.mark.parametrize("by_mask", [True, False], ids=["mask", "columns"])
def test_loss_matches_the_models_own(
    arch: str, packed: bool, by_mask: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    model, _ = tiny_model(arch)  # type: ignore[arg-type]
    rows = _rows()
    batch = collate(pack_examples(rows, 32) if packed else rows, pad_token_id=0)
    monkeypatch.setattr(loss_module, "_keeps_by_mask", lambda: by_mask)

    total, count = causal_lm_loss(model, batch)
    expected, expected_count = _reference(model, batch)

    assert count == expected_count == sum(row.label_tokens for row in rows)
    torch.testing.assert_close(total, expected, rtol=1e-5, atol=1e-5)


def test_gradients_match_the_models_own() -> None:
    model, _ = tiny_model()
    batch = collate(_rows(), pad_token_id=0)

    causal_lm_loss(model, batch)[0].backward()
    ours = [p.grad.clone() for p in model.parameters() if p.grad is not None]
    model.zero_grad()
    _reference(model, batch)[0].backward()
    theirs = [p.grad for p in model.parameters() if p.grad is not None]

    assert len(ours) == len(theirs) > 0
    for mine, reference in zip(ours, theirs, strict=True):
        torch.testing.assert_close(mine, reference, rtol=1e-4, atol=1e-6)


def test_this_transformers_keeps_logits_by_mask() -> None:
    """The memory saving needs transformers' (B, T) boolean `logits_to_keep` (5.x); the pinned one has it."""
    assert loss_module._keeps_by_mask()


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
def test_loss_and_lora_gradients_in_slices_match_the_models_own(
    arch: str, packed: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past `CHUNK_ELEMENTS` the head and cross-entropy run over slices of the hidden states (here of 4
    tokens: 17 labelled tokens make 5 slices, the last one short); the loss and the LoRA gradients are
    the model's own."""
    from peft import LoraConfig, get_peft_model

    base, _ = tiny_model(arch)  # type: ignore[arg-type]
    model = get_peft_model(
        base, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    )
    rows = _rows()
    batch = collate(pack_examples(rows, 32) if packed else rows, pad_token_id=0)
    vocab = base.get_output_embeddings().weight.shape[0]
    monkeypatch.setattr(loss_module, "CHUNK_ELEMENTS", 4 * vocab)
    sliced: list[int] = []
    head_loss = loss_module._head_loss
    monkeypatch.setattr(loss_module, "_head_loss", lambda *a: sliced.append(len(a[1])) or head_loss(*a))

    total, count = causal_lm_loss(model, batch)
    total.backward()
    ours = {name: p.grad.clone() for name, p in model.named_parameters() if p.requires_grad}
    model.zero_grad()
    expected, expected_count = _reference(model, batch)
    expected.backward()

    assert count == expected_count == 17
    assert sliced[:5] == [4, 4, 4, 4, 1]
    assert sorted(sliced[5:]) == [1, 4, 4, 4, 4]  # the backward recomputes each slice once
    torch.testing.assert_close(total, expected, rtol=1e-5, atol=1e-5)
    assert len(ours) == 4 * 2  # A and B of q and v in both layers
    for name, p in model.named_parameters():
        if p.requires_grad:
            torch.testing.assert_close(ours[name], p.grad, rtol=1e-4, atol=1e-6)


def test_a_model_that_caps_its_logits_keeps_the_plain_path() -> None:
    model, _ = tiny_model()
    assert loss_module._sliceable_head(model) == (model.get_output_embeddings(), model.config.vocab_size)
    model.config.final_logit_softcapping = 30.0
    assert loss_module._sliceable_head(model) is None


def test_the_sliced_loss_keeps_no_logits_for_backward(monkeypatch: pytest.MonkeyPatch) -> None:
    model, _ = tiny_model()
    batch = collate(_rows(), pad_token_id=0)
    vocab = model.get_output_embeddings().weight.shape[0]

    def saved_bytes() -> int:
        with saved_for_backward(model) as saved:
            causal_lm_loss(model, batch)
        return sum(saved.values())

    plain = saved_bytes()
    monkeypatch.setattr(loss_module, "CHUNK_ELEMENTS", 4 * vocab)
    sliced = saved_bytes()
    assert plain - sliced >= 17 * vocab * 4  # at least the labelled tokens' fp32 logits cross-entropy keeps
