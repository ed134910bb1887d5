"""llama.cpp's tensor names and q/k row order, checked against transformers' own GGUF loader."""

from __future__ import annotations

import pytest
import torch
from transformers.modeling_gguf_pytorch_utils import LlamaTensorProcessor

from lorafleet.errors import ExportError
from lorafleet.export.gguf_layout import (
    architecture_of,
    from_llama_cpp_rope_order,
    gguf_module_name,
    gguf_tensor_name,
    rope_heads,
    to_llama_cpp_rope_order,
)
from lorafleet.models import tiny_model


@pytest.mark.parametrize(
    ("parameter", "expected"),
    [
        ("model.embed_tokens.weight", "token_embd.weight"),
        ("model.layers.0.self_attn.q_proj.weight", "blk.0.attn_q.weight"),
        ("model.layers.11.self_attn.k_proj.bias", "blk.11.attn_k.bias"),
        ("model.layers.2.self_attn.o_proj.weight", "blk.2.attn_output.weight"),
        ("model.layers.3.input_layernorm.weight", "blk.3.attn_norm.weight"),
        ("model.layers.3.post_attention_layernorm.weight", "blk.3.ffn_norm.weight"),
        ("model.layers.4.mlp.down_proj.weight", "blk.4.ffn_down.weight"),
        ("model.norm.weight", "output_norm.weight"),
        ("lm_head.weight", "output.weight"),
        ("model.layers.0.self_attn.rotary_emb.inv_freq", None),
        ("model.layers.0.self_attn.q_proj.lora_A.weight", None),
    ],
)
def test_gguf_tensor_names(parameter: str, expected: str | None) -> None:
    assert gguf_tensor_name(parameter) == expected


def test_gguf_module_name_of_a_block_linear_layer() -> None:
    assert gguf_module_name("model.layers.7.mlp.gate_proj") == "blk.7.ffn_gate"
    assert gguf_module_name("model.layers.7.mlp.act_fn") is None


def test_rope_row_order_is_the_inverse_of_transformers_gguf_loader() -> None:
    heads, kv_heads, head_dim, hidden = 4, 2, 8, 32
    processor = LlamaTensorProcessor(config={"num_attention_heads": heads, "num_key_value_heads": kv_heads})
    for name, rows in (
        ("blk.0.attn_q.weight", heads * head_dim),
        ("blk.0.attn_k.weight", kv_heads * head_dim),
    ):
        weight = torch.randn(rows, hidden)
        ours = to_llama_cpp_rope_order(weight, heads if "attn_q" in name else kv_heads)
        undone = processor.process(ours.numpy(), name).weights  # what transformers reads back
        torch.testing.assert_close(torch.from_numpy(undone), weight, rtol=0, atol=0)
        torch.testing.assert_close(
            from_llama_cpp_rope_order(ours, heads if "attn_q" in name else kv_heads), weight, rtol=0, atol=0
        )


def test_rope_row_order_interleaves_the_two_halves_of_each_head() -> None:
    rows = torch.arange(8.0)  # one head of size 8: halves (0 1 2 3) and (4 5 6 7)
    assert to_llama_cpp_rope_order(rows, 1).tolist() == [0, 4, 1, 5, 2, 6, 3, 7]


def test_rope_heads_per_tensor_and_architecture() -> None:
    llama, _ = tiny_model("llama", num_heads=4)  # 2 KV heads
    qwen2, _ = tiny_model("qwen2", num_heads=4)
    assert rope_heads("blk.1.attn_q.weight", llama.config) == 4
    assert rope_heads("blk.1.attn_k.bias", llama.config) == 2
    assert rope_heads("blk.1.attn_v.weight", llama.config) is None
    assert rope_heads("blk.1.attn_q.weight", qwen2.config) is None  # NeoX rope: rows stay


def test_architecture_of_an_unsupported_model_names_its_type() -> None:
    gpt2, _ = tiny_model("gpt2")
    with pytest.raises(ExportError, match="'gpt2'"):
        architecture_of(gpt2.config)
