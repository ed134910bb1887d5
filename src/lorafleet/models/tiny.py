"""Tiny random causal LMs with a matching byte-level tokenizer, built offline in milliseconds, for tests.

The tokenizer maps every byte to one token (256 ids) and adds four special tokens and a ChatML chat
template, so chat rendering, padding and EOS behave as they do for real instruct models.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import (
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen2ForCausalLM,
)

from lorafleet.errors import ConfigError

Arch = Literal["llama", "qwen2", "gpt2"]
SPECIAL_TOKENS = ["<|pad|>", "<|im_start|>", "<|im_end|>", "<|unk|>"]
# Llama-shaped architectures: config class, model class, whether the output head shares the embedding.
_LLAMA_LIKE: dict[str, tuple[Callable[..., PretrainedConfig], Callable[..., PreTrainedModel], bool]] = {
    "llama": (LlamaConfig, LlamaForCausalLM, False),
    "qwen2": (Qwen2Config, Qwen2ForCausalLM, True),
}
CHATML_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def tiny_tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level tokenizer: 256 byte tokens, then `<|im_start|>`, `<|im_end|>`, `<|unk|>`, `<|pad|>`."""
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {ch: i for i, ch in enumerate(sorted(alphabet))}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token=None))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    backend.decoder = decoders.ByteLevel()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token="<|pad|>",
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        unk_token="<|unk|>",
    )
    tokenizer.chat_template = CHATML_TEMPLATE
    return tokenizer


def tiny_model(
    arch: Arch = "llama",
    *,
    hidden_size: int = 32,
    num_layers: int = 2,
    num_heads: int = 4,
    intermediate_size: int = 64,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
) -> tuple[PreTrainedModel, PreTrainedTokenizerFast]:
    """A random `arch` causal LM of the given size and its tokenizer; same seed, same weights."""
    tokenizer = tiny_tokenizer()
    with torch.random.fork_rng(devices=[]):  # seed the weights without touching the caller's RNG
        torch.manual_seed(seed)
        model = _build(arch, tokenizer, hidden_size, num_layers, num_heads, intermediate_size)
    model.config.name_or_path = f"lorafleet/tiny-{arch}"
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model.to(dtype).eval(), tokenizer  # type: ignore[arg-type]


def _build(
    arch: str,
    tokenizer: PreTrainedTokenizerFast,
    hidden_size: int,
    num_layers: int,
    num_heads: int,
    intermediate_size: int,
) -> PreTrainedModel:
    special = {
        "vocab_size": len(tokenizer),
        "pad_token_id": tokenizer.pad_token_id,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
    }
    if arch == "gpt2":
        return GPT2LMHeadModel(
            GPT2Config(
                n_embd=hidden_size,
                n_layer=num_layers,
                n_head=num_heads,
                n_inner=intermediate_size,
                n_positions=512,
                **special,
            )
        )
    if arch not in _LLAMA_LIKE:
        raise ConfigError(f"tiny_model arch {arch!r} is not one of llama, qwen2, gpt2")
    config_class, model_class, tied = _LLAMA_LIKE[arch]
    config = config_class(
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=max(1, num_heads // 2),  # grouped-query attention, as in the real models
        max_position_embeddings=512,
        tie_word_embeddings=tied,
        **special,
    )
    return model_class(config)
