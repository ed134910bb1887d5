"""A merged Llama-family model as one GGUF file that llama.cpp loads: weights, hyper-parameters, tokenizer.

The merged model is a plain HF causal LM (`LlamaForCausalLM`, `Qwen2ForCausalLM`: an adapter merged
with `merge_and_unload`, no LoRA layers left). Each parameter is renamed to llama.cpp's tensor name,
q/k rows are reordered for llama.cpp's rope where the architecture needs it (`gguf_layout`), and the
tensor is stored as `quant` asks (`gguf_quant`). The file also holds:

    general.architecture, general.type = model, general.name, general.file_type
    <arch>.context_length, embedding_length, block_count, feed_forward_length, vocab_size,
           attention.head_count, attention.head_count_kv, attention.key_length, value_length,
           attention.layer_norm_rms_epsilon, rope.dimension_count, rope.freq_base (+ linear rope scaling)
    tokenizer.* and the chat template (`gguf_tokenizer`)
"""

from __future__ import annotations

import os
from collections.abc import Callable, Collection, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from gguf import GGML_QUANT_VERSION, GGUFWriter, RopeScalingType
from transformers import PretrainedConfig, PreTrainedModel, PreTrainedTokenizerBase

from lorafleet.errors import ExportError
from lorafleet.export.gguf_file import GgufTensor, write_gguf_file
from lorafleet.export.gguf_layout import (
    architecture_of,
    gguf_tensor_name,
    rope_heads,
    to_llama_cpp_rope_order,
)
from lorafleet.export.gguf_quant import FILE_TYPES, GgufQuant, base_grid_saving, check_quant, tensor_type
from lorafleet.export.gguf_tokenizer import add_tokenizer


def write_gguf_model(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    path: str | os.PathLike[str],
    *,
    quant: GgufQuant,
    source_gguf: Path | None = None,
    name: str | None = None,
    adapted: Collection[str] | None = None,
) -> Path:
    """Write `model` (merged, no LoRA layers) and its tokenizer as one GGUF file at `path`; return it.

    `quant`: f16, q8_0, q4_0 or q4_mix (or f32: exact, a reference). `source_gguf`: the GGUF the base
    model was converted from, whose tokenizer keys are copied (`models.loading.source_gguf`); without
    it the tokenizer is built from `tokenizer`. `name`: general.name (default: the model's
    name_or_path). `adapted`: the parameters the merged adapter changed (`model.named_parameters()`
    names), which q4_mix stores apart; None: every one. The file is written beside `path` and renamed
    onto it at the end, so a failure leaves no partial file at `path`.
    """
    quant = check_quant(quant)
    config = model.config
    arch = architecture_of(config)
    _check_supported(config)
    tensors = plan_tensors(model, quant, adapted)
    vocab_size = int(config.vocab_size)
    title = name or Path(str(getattr(config, "name_or_path", "") or "model")).name or "model"

    def metadata(writer: GGUFWriter) -> None:
        writer.add_type("model")
        writer.add_name(title)
        writer.add_file_type(FILE_TYPES[quant])
        if quant not in ("f32", "f16"):
            writer.add_quantization_version(GGML_QUANT_VERSION)
        add_hyperparameters(writer, config)
        add_tokenizer(writer, tokenizer, vocab_size=vocab_size, source_gguf=source_gguf)

    return write_gguf_file(Path(path), arch=arch.name, metadata=metadata, tensors=tensors)


def plan_tensors(
    model: PreTrainedModel, quant: GgufQuant, adapted: Collection[str] | None = None
) -> list[GgufTensor]:
    """Every parameter of `model` as the GGUF tensor it becomes (name, shape, type), in model order.

    `adapted`: the parameters the adapter changed (None: every one), see `write_gguf_model`."""
    config = model.config
    tied = bool(getattr(config, "tie_word_embeddings", False))
    planned = []
    for parameter, weight in model.named_parameters():  # a tied lm_head is the embedding: listed once
        if parameter == "lm_head.weight" and tied:
            continue
        if "lora_" in parameter or "base_layer" in parameter:
            raise ExportError(
                f"{parameter}: the model still has LoRA layers; merge the adapter (merge_and_unload) first"
            )
        name = gguf_tensor_name(parameter)
        if name is None:
            raise ExportError(f"{parameter}: llama.cpp's {config.model_type} architecture has no such tensor")
        shape = tuple(weight.shape)
        output_head = _is_output_head(name, tied)
        planned.append(
            GgufTensor(
                name=name,
                shape=shape,
                qtype=tensor_type(
                    shape, quant, output_head=output_head, adapted=adapted is None or parameter in adapted
                ),
                values=_values(weight, rope_heads(name, config)),
            )
        )
    return planned


def updates_to_give_up(model: PreTrainedModel, changes: Mapping[str, float], excess: int) -> list[str]:
    """The adapted parameters a q4_mix export stores on the base's grid to come `excess` bytes smaller:
    the smallest relative changes (`changes`: parameter → ‖ΔW‖/‖W‖) first, until the saving covers
    `excess` or none is left (`gguf_quant` says why)."""
    shapes = {name: tuple(weight.shape) for name, weight in model.named_parameters()}
    tied = bool(getattr(model.config, "tie_word_embeddings", False))
    given_up, saved = [], 0
    for parameter in sorted(changes, key=changes.__getitem__):
        if saved >= excess:
            break
        name = gguf_tensor_name(parameter)
        saving = base_grid_saving(shapes[parameter])
        if name is None or _is_output_head(name, tied) or saving <= 0:
            continue
        given_up.append(parameter)
        saved += saving
    return given_up


def _is_output_head(name: str, tied: bool) -> bool:
    """Whether the GGUF tensor `name` computes the logits (`output`, or `token_embd` when tied)."""
    return name == "output.weight" or (tied and name == "token_embd.weight")


def _values(weight: torch.Tensor, heads: int | None) -> Callable[[], np.ndarray]:
    """A function computing `weight` as float32 numpy in llama.cpp's layout (q/k rows reordered)."""

    def values() -> np.ndarray:
        rows = weight.detach().to("cpu", torch.float32)
        if heads is not None:
            rows = to_llama_cpp_rope_order(rows, heads)
        return rows.numpy()

    return values


def add_hyperparameters(writer: GGUFWriter, config: PretrainedConfig) -> None:
    """The `<arch>.*` keys llama.cpp builds the network from."""
    heads = int(config.num_attention_heads)
    head_dim = int(getattr(config, "head_dim", None) or config.hidden_size // heads)
    writer.add_context_length(int(config.max_position_embeddings))
    writer.add_embedding_length(int(config.hidden_size))
    writer.add_block_count(int(config.num_hidden_layers))
    writer.add_feed_forward_length(int(config.intermediate_size))
    writer.add_vocab_size(int(config.vocab_size))
    writer.add_head_count(heads)
    writer.add_head_count_kv(int(getattr(config, "num_key_value_heads", None) or heads))
    writer.add_key_length(head_dim)
    writer.add_value_length(head_dim)
    writer.add_layer_norm_rms_eps(float(config.rms_norm_eps))
    writer.add_rope_dimension_count(head_dim)
    rope = _rope_parameters(config)
    writer.add_rope_freq_base(float(rope["rope_theta"]))
    if rope.get("rope_type", "default") == "linear":
        writer.add_rope_scaling_type(RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(float(rope["factor"]))


def _rope_parameters(config: PretrainedConfig) -> dict[str, Any]:
    """rope_theta, rope_type and factor, from transformers 5's `rope_parameters` or 4's attributes."""
    parameters = dict(getattr(config, "rope_parameters", None) or {})
    legacy = dict(getattr(config, "rope_scaling", None) or {})
    return {
        "rope_theta": parameters.get("rope_theta", getattr(config, "rope_theta", 10000.0)),
        "rope_type": parameters.get("rope_type", legacy.get("rope_type", legacy.get("type", "default"))),
        "factor": parameters.get("factor", legacy.get("factor", 1.0)),
    }


def _check_supported(config: PretrainedConfig) -> None:
    """`ExportError` for settings llama.cpp's architecture would silently compute differently."""
    rope_type = _rope_parameters(config)["rope_type"]
    if rope_type not in ("default", "linear"):
        raise ExportError(
            f"GGUF export supports default and linear rope scaling; this model uses {rope_type!r}"
        )
    activation = getattr(config, "hidden_act", "silu")
    if activation != "silu":
        raise ExportError(
            f"llama.cpp's {config.model_type} uses SiLU; this model's hidden_act is {activation!r}"
        )
