"""Where a HF Llama-family checkpoint's tensors go in llama.cpp: their GGUF names and the q/k row order.

Names. llama.cpp calls `model.layers.N.self_attn.q_proj.weight` `blk.N.attn_q.weight`, and so on for
every linear layer and norm of a block (`BLOCK_MODULES`), plus `token_embd`, `output_norm` and
`output` (absent when the output head is tied to the embedding).

Rotary row order. Both implementations rotate pairs of coordinates of each head's query and key by
the angle p·θᵢ, but they pair different coordinates of a head of size d:

    transformers (rotate_half)   (xᵢ, x_{i+d/2})     i < d/2
    llama.cpp, arch "llama"      (x_{2i}, x_{2i+1})  i < d/2   (GGML's "normal" rope mode)

so llama.cpp's converter reorders the output rows of q_proj and k_proj head by head: row
h·d + p·d/2 + i of the HF weight (p ∈ {0, 1}) becomes row h·d + 2i + p. Scores q·k are unchanged
because q and k are permuted alike. Qwen2 runs llama.cpp's NeoX rope mode, which pairs as
transformers does, so its rows stay as they are. transformers' GGUF loader applies the inverse
(`from_llama_cpp_rope_order`) when it reads a Llama GGUF.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch
from transformers import PretrainedConfig

from lorafleet.errors import ExportError


@dataclass(frozen=True)
class GgufArchitecture:
    """A HF model type as llama.cpp knows it."""

    name: str  # llama.cpp's architecture name, the prefix of its hyper-parameter keys
    permute_qk: bool  # whether q/k rows are reordered for GGML's "normal" rope mode


ARCHITECTURES = {
    "llama": GgufArchitecture("llama", permute_qk=True),
    "qwen2": GgufArchitecture("qwen2", permute_qk=False),
}

# The modules of one decoder block (path under `model.layers.N.`) → llama.cpp's tensor name.
BLOCK_MODULES = {
    "input_layernorm": "attn_norm",
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "post_attention_layernorm": "ffn_norm",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}
# Modules outside the blocks.
MODEL_MODULES = {"model.embed_tokens": "token_embd", "model.norm": "output_norm", "lm_head": "output"}
LINEAR_MODULES = frozenset(path.rsplit(".", 1)[-1] for path in BLOCK_MODULES if path.endswith("_proj"))

_BLOCK = re.compile(r"^model\.layers\.(\d+)\.(.+)$")


def architecture_of(config: PretrainedConfig) -> GgufArchitecture:
    """The llama.cpp architecture of a HF config, or `ExportError` naming the model type."""
    model_type = getattr(config, "model_type", None)
    if model_type not in ARCHITECTURES:
        known = ", ".join(ARCHITECTURES)
        raise ExportError(f"GGUF export supports model types {known}; this model is {model_type!r}")
    return ARCHITECTURES[model_type]


def gguf_module_name(module: str) -> str | None:
    """llama.cpp's name for a HF module path (`model.layers.3.mlp.up_proj` → `blk.3.ffn_up`), or None."""
    if module in MODEL_MODULES:
        return MODEL_MODULES[module]
    match = _BLOCK.match(module)
    if match is None or match.group(2) not in BLOCK_MODULES:
        return None
    return f"blk.{match.group(1)}.{BLOCK_MODULES[match.group(2)]}"


def gguf_tensor_name(parameter: str) -> str | None:
    """llama.cpp's name for a HF parameter (`….q_proj.weight` → `blk.N.attn_q.weight`), or None."""
    module, _, kind = parameter.rpartition(".")
    if kind not in ("weight", "bias"):
        return None
    name = gguf_module_name(module)
    return None if name is None else f"{name}.{kind}"


def rope_heads(gguf_name: str, config: PretrainedConfig) -> int | None:
    """How many heads a tensor's rows are reordered by: query heads for attn_q, key heads for attn_k.

    None for every other tensor, and for architectures whose rope pairs as transformers' does.
    """
    if not architecture_of(config).permute_qk:
        return None
    module = gguf_name.rsplit(".", 1)[0]
    if module.endswith(".attn_q"):
        return int(config.num_attention_heads)
    if module.endswith(".attn_k"):
        return int(getattr(config, "num_key_value_heads", None) or config.num_attention_heads)
    return None


def to_llama_cpp_rope_order(rows: torch.Tensor, heads: int) -> torch.Tensor:
    """Reorder the output rows (dim 0) of a q/k weight, bias or LoRA B from transformers' to llama.cpp's.

    Within each head of size d, row p·d/2 + i moves to row 2i + p (see the module docstring).
    """
    half = rows.shape[0] // heads // 2
    # (heads·d, …) → (heads, 2, d/2, …) → (heads, d/2, 2, …) → (heads·d, …)
    return rows.reshape(heads, 2, half, *rows.shape[1:]).transpose(1, 2).reshape(rows.shape)


def from_llama_cpp_rope_order(rows: torch.Tensor, heads: int) -> torch.Tensor:
    """The inverse of `to_llama_cpp_rope_order`: row 2i + p of each head goes back to p·d/2 + i."""
    half = rows.shape[0] // heads // 2
    # (heads·d, …) → (heads, d/2, 2, …) → (heads, 2, d/2, …) → (heads·d, …)
    return rows.reshape(heads, half, 2, *rows.shape[1:]).transpose(1, 2).reshape(rows.shape)
