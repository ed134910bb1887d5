"""A PEFT LoRA adapter as a GGUF LoRA file for llama.cpp's `--lora` (the base model exported apart).

PEFT adds to each adapted linear layer W₀ (out × in)

    y = W₀x + s·B(Ax),   A: r × in,  B: out × r,  s = α/r   (rsLoRA: s = α/√r)

and llama.cpp, given a GGUF LoRA, computes y = W₀x + (α_gguf/r)·B(Ax) with α_gguf read from
`adapter.lora.alpha` and r from B's shape. So the file stores α_gguf = α (rsLoRA: α·√r, since
(α·√r)/r = α/√r), A and B as PEFT holds them (GGUF lists shapes reversed: A is (in, r), B is (r, out),
which is what llama.cpp checks), under `<tensor>.weight.lora_a` / `.lora_b`. Where `rank_pattern` or
`alpha_pattern` give a module another scale s_m than α_gguf/r_m, its B is multiplied by
s_m·r_m/α_gguf so the product is still s_m·BA. B's rows of q_proj and k_proj are reordered as the
base's rows are (`gguf_layout`): (P W₀ + s·(P B)A) = P(W₀ + s·BA).

llama.cpp's LoRA has no form for DoRA's magnitude vector, fully trained modules (`modules_to_save`),
trained biases, or adapters on modules outside the decoder blocks' linear layers: those adapters are
refused with an `ExportError` that points to the merged export instead.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import torch
from gguf import GGMLQuantizationType, GGUFWriter, Keys
from peft import LoraConfig
from peft.utils.other import get_pattern_key
from transformers import PretrainedConfig

from lorafleet.adapters.storage import read_adapter
from lorafleet.errors import ExportError
from lorafleet.export.gguf_file import GgufTensor, write_gguf_file
from lorafleet.export.gguf_layout import (
    LINEAR_MODULES,
    architecture_of,
    gguf_module_name,
    rope_heads,
    to_llama_cpp_rope_order,
)

MERGED_INSTEAD = "export the adapter merged into its base instead (--format gguf)"
_PEFT_PREFIX = "base_model.model."


def write_gguf_lora(
    adapter_dir: str | os.PathLike[str],
    path: str | os.PathLike[str],
    *,
    base_config: PretrainedConfig,
    name: str | None = None,
) -> Path:
    """Write the PEFT adapter in `adapter_dir` as a GGUF LoRA at `path` (F32 tensors); return `path`.

    `base_config`: the config of the base model the adapter was trained on (head counts for the q/k row
    order, shapes to check against). Written beside `path` and renamed onto it at the end.
    """
    folder = Path(adapter_dir)
    config, state, _ = read_adapter(folder)
    check_exportable(config, folder)
    arch = architecture_of(base_config)
    pairs = _lora_pairs(state, folder)
    alpha = float(config.lora_alpha) * (math.sqrt(config.r) if config.use_rslora else 1.0)
    if alpha <= 0:
        raise ExportError(f"{folder}: lora_alpha is {config.lora_alpha}; llama.cpp needs a positive alpha")

    tensors = []
    for module, (lora_a, lora_b) in pairs.items():
        target = gguf_module_name(module)
        if target is None or module.rsplit(".", 1)[-1] not in LINEAR_MODULES:
            raise ExportError(f"{folder}: llama.cpp has no LoRA tensor for module {module}; {MERGED_INSTEAD}")
        _check_shapes(module, lora_a, lora_b, base_config, folder)
        rank = lora_a.shape[0]
        correction = _module_scale(config, module, rank) * rank / alpha  # 1 unless patterns differ
        heads = rope_heads(f"{target}.weight", base_config)
        lora_b = lora_b.float() * correction
        if heads is not None:
            lora_b = to_llama_cpp_rope_order(lora_b, heads)
        for suffix, values in (("lora_a", lora_a.float()), ("lora_b", lora_b)):
            tensors.append(
                GgufTensor(
                    name=f"{target}.weight.{suffix}",
                    shape=tuple(values.shape),
                    qtype=GGMLQuantizationType.F32,
                    values=values.contiguous().numpy,
                )
            )

    def metadata(writer: GGUFWriter) -> None:
        writer.add_type("adapter")
        writer.add_name(name or folder.name)
        writer.add_string(Keys.Adapter.TYPE, "lora")
        writer.add_float32(Keys.Adapter.LORA_ALPHA, alpha)

    return write_gguf_file(Path(path), arch=arch.name, metadata=metadata, tensors=tensors)


def check_exportable(config: LoraConfig, folder: Path) -> None:
    """`ExportError` naming the first setting of `config` that llama.cpp's LoRA cannot express."""
    refusals = [
        (config.use_dora, "DoRA (use_dora) learns a per-row magnitude that llama.cpp's LoRA has no form for"),
        (config.modules_to_save, f"modules_to_save {config.modules_to_save} are trained in full, not LoRA"),
        (config.bias != "none", f"trained biases (bias={config.bias!r}) have no place in a GGUF LoRA"),
        (getattr(config, "lora_bias", False), "a bias on lora_B (lora_bias) has no place in a GGUF LoRA"),
        (
            getattr(config, "target_parameters", None),
            "LoRA on parameters (target_parameters) has no GGUF form",
        ),
        (getattr(config, "trainable_token_indices", None), "trained token embeddings are not LoRA tensors"),
        (getattr(config, "layer_replication", None), "layer_replication changes the base's layers"),
        (getattr(config, "alora_invocation_tokens", None), "activated LoRA (aLoRA) is not exported yet"),
    ]
    for refused, reason in refusals:
        if refused:
            raise ExportError(f"{folder}: {reason}; {MERGED_INSTEAD}")


def _lora_pairs(state: dict[str, torch.Tensor], folder: Path) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """module path (`model.layers.0.self_attn.q_proj`) → (A, B), in the adapter's order."""
    halves: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in state.items():
        module, _, kind = key.removeprefix(_PEFT_PREFIX).rpartition(".lora_")
        if kind not in ("A.weight", "B.weight"):
            raise ExportError(f"{folder}: tensor {key} is not a LoRA A or B matrix; {MERGED_INSTEAD}")
        halves.setdefault(module, {})[kind[0]] = tensor
    pairs = {}
    for module, half in halves.items():
        if set(half) != {"A", "B"}:
            raise ExportError(f"{folder}: module {module} has lora_{''.join(half)} without its partner")
        pairs[module] = (half["A"], half["B"])
    if not pairs:
        raise ExportError(f"{folder}: the adapter holds no LoRA tensors")
    return pairs


def _module_scale(config: LoraConfig, module: str, rank: int) -> float:
    """PEFT's scale s for `module`: its alpha (alpha_pattern or lora_alpha) over r, or over √r for rsLoRA."""
    alpha_key = get_pattern_key(list(config.alpha_pattern or {}), module)
    alpha = float((config.alpha_pattern or {}).get(alpha_key, config.lora_alpha))
    return alpha / math.sqrt(rank) if config.use_rslora else alpha / rank


def _check_shapes(
    module: str, lora_a: torch.Tensor, lora_b: torch.Tensor, base: PretrainedConfig, folder: Path
) -> None:
    """`ExportError` unless A is (r, in) and B is (out, r) for this module of the base model."""
    heads = int(base.num_attention_heads)
    kv_heads = int(getattr(base, "num_key_value_heads", None) or heads)
    head_dim = int(getattr(base, "head_dim", None) or base.hidden_size // heads)
    hidden, inner = int(base.hidden_size), int(base.intermediate_size)
    shapes = {  # linear layer → (out, in)
        "q_proj": (heads * head_dim, hidden),
        "k_proj": (kv_heads * head_dim, hidden),
        "v_proj": (kv_heads * head_dim, hidden),
        "o_proj": (hidden, heads * head_dim),
        "gate_proj": (inner, hidden),
        "up_proj": (inner, hidden),
        "down_proj": (hidden, inner),
    }
    out_features, in_features = shapes[module.rsplit(".", 1)[-1]]
    rank = lora_a.shape[0]
    if tuple(lora_a.shape) != (rank, in_features) or tuple(lora_b.shape) != (out_features, rank):
        raise ExportError(
            f"{folder}: {module} has A {tuple(lora_a.shape)} and B {tuple(lora_b.shape)}, but the base "
            f"model's layer is {out_features} × {in_features}; was the adapter trained on another base?"
        )
