"""Packing: each example's logits in a packed batch equal its logits alone; no label crosses examples."""

from __future__ import annotations

import random

import pytest
import torch

from lorafleet.data import (
    IGNORE_INDEX,
    Example,
    Message,
    PackedSequence,
    TokenizedExample,
    collate,
    pack_examples,
    tokenize_example,
)
from lorafleet.models import tiny_model, tiny_tokenizer
from lorafleet.models.tiny import Arch


def chat_examples(count: int, seed: int = 0) -> list[TokenizedExample]:
    """Chat rows of varied lengths, tokenized with the tiny ChatML tokenizer."""
    rng = random.Random(seed)
    tokenizer = tiny_tokenizer()
    words = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta", "iota", "kappa"]
    rows = []
    for i in range(count):
        question = " ".join(rng.choices(words, k=rng.randint(1, 6)))
        answer = " ".join(rng.choices(words, k=rng.randint(1, 4)))
        rows.append(
            Example(f"rows.jsonl:{i + 1}", messages=(Message("user", question), Message("assistant", answer)))
        )
    return [tokenize_example(row, tokenizer, max_length=256) for row in rows]


def test_pack_examples_fits_and_keeps_every_example() -> None:
    examples = chat_examples(12)
    packs = pack_examples(examples, max_length=160)
    assert all(len(p) <= 160 for p in packs)
    assert sorted(s for p in packs for s in p.sources) == sorted(e.source for e in examples)
    assert len(packs) < len(examples)  # short rows really share sequences
    by_source = {e.source: e for e in examples}
    for pack in packs:
        assert sum(pack.lengths) == len(pack.input_ids) == len(pack.labels) == len(pack.position_ids)
        start = 0
        for source, length in zip(pack.sources, pack.lengths, strict=True):
            alone = by_source[source]
            assert pack.input_ids[start : start + length] == alone.input_ids
            assert pack.position_ids[start : start + length] == list(range(length))
            # HF predicts labels[t] from position t-1: the first token of an example is never a target.
            assert pack.labels[start] == IGNORE_INDEX
            assert pack.labels[start + 1 : start + length] == alone.labels[1:]
            start += length
    assert pack_examples(examples, max_length=160) == packs  # deterministic
    with pytest.raises(ValueError, match="do not fit max_length"):
        pack_examples(examples, max_length=8)


def test_collate_pads_right_and_masks_padding() -> None:
    examples = chat_examples(3)
    batch = collate(examples, pad_token_id=259)
    assert set(batch) == {"input_ids", "labels", "attention_mask"}
    for row, example in enumerate(examples):
        n = len(example)
        assert batch["input_ids"][row, :n].tolist() == example.input_ids
        assert batch["attention_mask"][row].tolist() == [1] * n + [0] * (batch["input_ids"].shape[1] - n)
        assert (batch["labels"][row, n:] == IGNORE_INDEX).all()
        assert (batch["input_ids"][row, n:] == 259).all()


def _packed_batch(examples: list[TokenizedExample]) -> list[PackedSequence]:
    packs = pack_examples(examples, max_length=160)
    assert max(len(p.lengths) for p in packs) >= 3 and len({len(p) for p in packs}) > 1  # padding too
    return packs


@pytest.mark.parametrize("explicit_mask", [False, True], ids=["position_ids", "4d_mask"])
@pytest.mark.parametrize("attention", ["sdpa", "eager"])
@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_packed_logits_equal_each_example_alone(arch: Arch, attention: str, explicit_mask: bool) -> None:
    model, tokenizer = tiny_model(arch)
    model.set_attn_implementation(attention)
    examples = chat_examples(10)
    by_source = {e.source: e for e in examples}
    packs = _packed_batch(examples)
    batch = collate(
        packs, pad_token_id=tokenizer.pad_token_id, mask_dtype=torch.float32 if explicit_mask else None
    )
    assert ("attention_mask" in batch) == explicit_mask
    with torch.no_grad():
        packed = model(**batch, use_cache=False)
        total_alone = torch.zeros(())
        for row, pack in enumerate(packs):
            start = 0
            for source, length in zip(pack.sources, pack.lengths, strict=True):
                ids = torch.tensor([by_source[source].input_ids])
                labels = torch.tensor([by_source[source].labels])
                alone = model(input_ids=ids, labels=labels, use_cache=False)
                torch.testing.assert_close(
                    packed.logits[row, start : start + length], alone.logits[0], atol=1e-5, rtol=0
                )
                total_alone += alone.loss * by_source[source].label_tokens
                start += length
    # HF's loss is the mean over labelled targets: the packed loss is the same per-token average.
    label_tokens = sum(by_source[s].label_tokens for p in packs for s in p.sources)
    torch.testing.assert_close(packed.loss * label_tokens, total_alone, atol=1e-4, rtol=1e-5)


def test_use_cache_defeats_packing_detection() -> None:
    """Why the training loop passes use_cache=False: with a KV cache, position_ids jumps are ignored."""
    model, tokenizer = tiny_model("llama")
    packs = _packed_batch(chat_examples(10))
    batch = collate(packs, pad_token_id=tokenizer.pad_token_id)
    with torch.no_grad():
        isolated = model(**batch, use_cache=False).logits
        leaky = model(**batch, use_cache=True).logits
        explicit = model(**collate(packs, pad_token_id=0, mask_dtype=torch.float32), use_cache=True).logits
    assert not torch.allclose(isolated, leaky, atol=1e-3)
    n = len(packs[0])
    torch.testing.assert_close(explicit[0, :n], isolated[0, :n], atol=1e-5, rtol=0)
