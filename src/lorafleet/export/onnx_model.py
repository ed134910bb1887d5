"""A merged causal LM written as one ONNX graph with its KV cache, through torch's exporter (torch.export).

The graph serves the prompt and every decode step alike. With L layers, H_kv key/value heads of size d:

    inputs   input_ids       (B, T)         int64   the new tokens
             attention_mask  (B, P + T)     int64   1 = a real token, 0 = padding, past and new tokens
             position_ids    (B, T)         int64   each new token's position, P.. for an unpadded row
             past_key_values.{l}.key|value  (B, H_kv, P, d)      float32, P = 0 for the prompt
    outputs  logits                         (B, T, V)            float32
             present.{l}.key|value          (B, H_kv, P + T, d)  float32, the next step's past

B, T and P are dynamic axes. transformers' cache is a Python object (`DynamicCache`), which the exporter
cannot take as an input, so a thin wrapper takes the 2·L flat past tensors, builds the cache from them,
and returns the updated cache as 2·L flat tensors again.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import torch
from torch import nn
from transformers import DynamicCache, PreTrainedModel

from lorafleet.errors import ExportError
from lorafleet.export.onnx_deps import require
from lorafleet.files import atomic_file

SUPPORTED_TYPES = ("llama", "qwen2")  # Llama-family decoders: RoPE, grouped-query attention, no extras
PAST_PREFIX = "past_key_values."  # past_key_values.{layer}.key | .value
PRESENT_PREFIX = "present."  # present.{layer}.key | .value, in the same order as the past inputs
SINGLE_FILE_LIMIT = 2**31  # bytes: protobuf's limit on one message, so on a self-contained .onnx file
# Sizes of the example inputs the exporter traces with: all different and above 1, so that no axis is
# mistaken for a constant or for another axis.
_TRACE_BATCH, _TRACE_NEW, _TRACE_PAST = 2, 3, 5


def write_onnx(model: PreTrainedModel, path: str | os.PathLike[str]) -> Path:
    """Export a merged float32 Llama-family causal LM with its KV cache as one self-contained .onnx file.

    The file appears at `path` complete or not at all: it is written beside it under a temporary name
    and renamed into place. An existing file at `path` is replaced.
    """
    _require_exportable(model)
    require("onnxscript")  # torch's exporter translates to ONNX with onnxscript
    target = Path(path)
    layers = model.config.num_hidden_layers
    with atomic_file(target) as staging, torch.no_grad(), warnings.catch_warnings():
        # Axes that share a torch.export Dim are reported one warning each; the names are kept all the same.
        warnings.filterwarnings("ignore", message="# The axis name", category=UserWarning)
        try:
            program = torch.onnx.export(
                _CachedCausalLM(model).eval(),
                _example_inputs(model),
                dynamo=True,
                dynamic_shapes=_dynamic_shapes(layers),
                input_names=["input_ids", "attention_mask", "position_ids", *kv_names(PAST_PREFIX, layers)],
                output_names=["logits", *kv_names(PRESENT_PREFIX, layers)],
                optimize=True,
                verbose=False,
            )
        except Exception as err:
            raise ExportError(
                f"torch.onnx.export could not export this {model.config.model_type} model to {target}: {err}"
            ) from err
        if program is None:  # only the legacy TorchScript exporter returns nothing
            raise ExportError(f"torch.onnx.export returned no program for {target}")
        program.save(staging, external_data=False)  # weights inside the .onnx (< 2 GB for small models)
    return target


def kv_names(prefix: str, layers: int) -> list[str]:
    """The 2·L cache tensors' names: `{prefix}0.key`, `{prefix}0.value`, `{prefix}1.key`, …"""
    return [f"{prefix}{layer}.{kind}" for layer in range(layers) for kind in ("key", "value")]


class _CachedCausalLM(nn.Module):
    """`model` with its KV cache passed in and out as flat tensors, which is what the exporter traces."""

    def __init__(self, model: PreTrainedModel) -> None:
        super().__init__()
        self.model = model

    def forward(
        self,
        input_ids: torch.Tensor,  # (B, T)
        attention_mask: torch.Tensor,  # (B, P + T)
        position_ids: torch.Tensor,  # (B, T)
        *past: torch.Tensor,  # 2·L × (B, H_kv, P, d): layer 0 key, layer 0 value, layer 1 key, …
    ) -> tuple[torch.Tensor, ...]:
        pairs = [(past[i], past[i + 1]) for i in range(0, len(past), 2)]
        cache = DynamicCache(pairs, config=self.model.config)
        output = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            use_cache=True,
        )
        present = [tensor for layer in output.cache.layers for tensor in (layer.keys, layer.values)]
        return (output.logits, *present)  # (B, T, V), 2·L × (B, H_kv, P + T, d)


def _example_inputs(model: PreTrainedModel) -> tuple[torch.Tensor, ...]:
    config = model.config
    heads = config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    batch, new, past = _TRACE_BATCH, _TRACE_NEW, _TRACE_PAST
    input_ids = torch.randint(0, config.vocab_size, (batch, new))  # (B, T)
    attention_mask = torch.ones(batch, past + new, dtype=torch.long)  # (B, P + T)
    position_ids = torch.arange(past, past + new).expand(batch, new)  # (B, T)
    cache = [torch.zeros(batch, kv_heads, past, head_dim) for _ in range(2 * config.num_hidden_layers)]
    return (input_ids, attention_mask, position_ids, *cache)


def _dynamic_shapes(layers: int) -> tuple[object, ...]:
    """torch.export's dynamic axes, in the order of `_CachedCausalLM.forward`'s arguments."""
    dim = torch.export.Dim
    batch, new, total = dim("batch"), dim("sequence"), dim("total_sequence")
    past = dim("past_sequence", min=0)
    cache = tuple({0: batch, 2: past} for _ in range(2 * layers))
    return ({0: batch, 1: new}, {0: batch, 1: total}, {0: batch, 1: new}, cache)


def _require_exportable(model: PreTrainedModel) -> None:
    if hasattr(model, "peft_config"):
        raise ExportError(
            "ONNX export takes a merged model, not base + adapter: merge it first (lorafleet.adapters.merge "
            "or PeftModel.merge_and_unload())"
        )
    model_type = getattr(model.config, "model_type", None)
    if model_type not in SUPPORTED_TYPES:
        raise ExportError(
            f"ONNX export supports {', '.join(SUPPORTED_TYPES)} models; this one is {model_type!r}"
        )
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    if weights >= SINGLE_FILE_LIMIT:
        raise ExportError(
            f"the model's weights take {weights / 2**30:.1f} GiB; a self-contained .onnx file holds under "
            "2 GiB, and write_onnx does not write external data: export a smaller model"
        )
    dtype = next(model.parameters()).dtype
    if dtype != torch.float32:
        raise ExportError(
            f"ONNX export writes float32 (ONNX Runtime's CPU kernels); the model is {dtype}: load it with "
            "dtype=torch.float32 or call model.float()"
        )
