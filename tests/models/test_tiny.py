"""Tiny random models: right shapes, a round-tripping byte-level tokenizer, seeded weights."""

from __future__ import annotations

import pytest
import torch
from transformers import GPT2LMHeadModel, LlamaForCausalLM, Qwen2ForCausalLM

from lorafleet.errors import ConfigError
from lorafleet.models import tiny_model, tiny_tokenizer

ARCHS = ["llama", "qwen2", "gpt2"]
CLASSES = {"llama": LlamaForCausalLM, "qwen2": Qwen2ForCausalLM, "gpt2": GPT2LMHeadModel}
TEXTS = [
    "hello world",
    "héllo wörld — naïve café",
    "日本語のテキスト",
    "emoji 🙂🚀 and\ttabs\nnewlines",
    "  leading spaces",
]


@pytest.mark.parametrize("arch", ARCHS)
def test_builds_in_eval_mode(arch: str) -> None:
    model, tokenizer = tiny_model(arch)

    assert isinstance(model, CLASSES[arch])
    assert not model.training
    assert model.config.vocab_size == len(tokenizer)
    assert model.config.name_or_path == f"lorafleet/tiny-{arch}"


@pytest.mark.parametrize("arch", ARCHS)
def test_forward_gives_logits_over_the_vocabulary(arch: str) -> None:
    model, tokenizer = tiny_model(arch)
    batch = tokenizer(["hi there", "a longer second prompt"], padding=True, return_tensors="pt")
    B, T = batch["input_ids"].shape

    with torch.no_grad():
        logits = model(**batch).logits  # (B, T, vocab)

    assert logits.shape == (B, T, len(tokenizer))
    assert logits.dtype == torch.float32
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize("arch", ARCHS)
def test_size_arguments_and_dtype_are_honoured(arch: str) -> None:
    model, _ = tiny_model(arch, hidden_size=16, num_layers=3, num_heads=2, dtype=torch.bfloat16)

    assert model.get_input_embeddings().embedding_dim == 16
    assert model.config.num_hidden_layers == 3
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}


def test_unknown_arch_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="'mamba'"):
        tiny_model("mamba")  # type: ignore[arg-type]


@pytest.mark.parametrize("text", TEXTS)
def test_tokenizer_round_trips_text_one_token_per_byte(text: str) -> None:
    tokenizer = tiny_tokenizer()

    ids = tokenizer(text)["input_ids"]

    assert len(ids) == len(text.encode("utf-8"))
    assert all(0 <= i < 256 for i in ids)
    assert tokenizer.unk_token_id not in ids
    assert tokenizer.decode(ids) == text


def test_special_tokens_are_distinct_single_tokens() -> None:
    tokenizer = tiny_tokenizer()
    special = [tokenizer.pad_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.unk_token_id]

    assert len(set(special)) == 4
    assert all(i >= 256 for i in special)
    assert tokenizer("<|im_end|>")["input_ids"] == [tokenizer.eos_token_id]
    assert (
        tokenizer.decode([*tokenizer("hi")["input_ids"], tokenizer.eos_token_id], skip_special_tokens=True)
        == "hi"
    )


def test_chat_template_renders_chatml() -> None:
    tokenizer = tiny_tokenizer()
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Où est Paris ?"}]

    rendered = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    without_prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=False)

    assert rendered == (
        "<|im_start|>system\nBe brief.<|im_end|>\n"
        "<|im_start|>user\nOù est Paris ?<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    assert rendered == without_prompt + "<|im_start|>assistant\n"
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_dict=True)["input_ids"]
    assert tokenizer.decode(ids) == rendered


@pytest.mark.parametrize("arch", ARCHS)
def test_same_seed_gives_identical_weights(arch: str) -> None:
    first, _ = tiny_model(arch, seed=7)
    second, _ = tiny_model(arch, seed=7)

    a, b = first.state_dict(), second.state_dict()
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=key)


@pytest.mark.parametrize("arch", ARCHS)
def test_different_seed_gives_different_weights(arch: str) -> None:
    first, _ = tiny_model(arch, seed=0)
    second, _ = tiny_model(arch, seed=1)

    a, b = first.state_dict(), second.state_dict()
    matrices = [key for key, value in a.items() if value.dim() == 2]
    assert matrices
    for key in matrices:  # every randomly initialised matrix differs (norms start at ones either way)
        assert not torch.equal(a[key], b[key]), key
