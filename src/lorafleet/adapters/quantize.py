"""The QLoRA base: every linear layer but the output head stored as 4-bit NormalFloat (NF4) by bitsandbytes.

NF4 splits a weight matrix into blocks of 64 values, stores each block's absmax c (fp32) and each
value as the nearest of 16 levels q_j (quantiles of N(0, 1) scaled to [-1, 1]):

    w ≈ c · q_j,   4 bits per weight + 32 bits per 64 weights for c

Double quantization quantizes the absmax values themselves to 8 bits in blocks of 256, bringing the
overhead from 0.5 to about 0.127 bits per weight. A forward pass de-quantizes the block and multiplies
in the compute dtype: y = x · dequant(W)ᵀ + b. LoRA adapters stay in the compute dtype on top.
"""

from __future__ import annotations

import torch
from torch import nn

from lorafleet.errors import ConfigError

NF4_BLOCK = 64


def quantize_nf4(
    model: nn.Module, *, compute_dtype: torch.dtype, skip: tuple[str, ...] = ("lm_head",)
) -> int:
    """Replace every `nn.Linear` of `model` (but those named in `skip`) by an NF4 `bnb.nn.Linear4bit`.

    Works on CPU and CUDA (bitsandbytes ≥ 0.45). Returns how many layers were quantized.
    """
    try:
        import bitsandbytes as bnb
    except ImportError as err:
        raise ConfigError("quantization 'nf4' needs bitsandbytes: pip install 'lorafleet[qlora]'") from err
    device = next(model.parameters()).device
    replaced = 0
    for parent_name, parent in list(model.named_modules()):
        for child_name, child in list(parent.named_children()):
            full_name = f"{parent_name}.{child_name}" if parent_name else child_name
            if type(child) is not nn.Linear or any(full_name.split(".")[-1] == s for s in skip):
                continue
            layer = bnb.nn.Linear4bit(
                child.in_features,
                child.out_features,
                bias=child.bias is not None,
                compute_dtype=compute_dtype,
                compress_statistics=True,  # double quantization
                quant_type="nf4",
                device="cpu",
            )
            layer.weight = bnb.nn.Params4bit(
                child.weight.data.to("cpu"), requires_grad=False, compress_statistics=True, quant_type="nf4"
            )
            if child.bias is not None:
                layer.bias = nn.Parameter(child.bias.data.to(compute_dtype), requires_grad=False)
            if compute_dtype != torch.bfloat16 or child.in_features % NF4_BLOCK:
                # bitsandbytes ≥ 0.50 repacks the weight on a CPU with AVX512-BF16 at the first forward
                # without gradients, for a kernel that computes in bf16 (not the compute dtype asked for)
                # and fails on rows shorter than a block: keep its plain de-quantizing path there
                layer.support_avx512bf16_for_cpu = False
            setattr(parent, child_name, layer.to(device))  # moving the weight quantizes it
            replaced += 1
    if replaced == 0:
        raise ConfigError("quantization 'nf4' found no nn.Linear layer to quantize in this model")
    # The weights left in full precision (embeddings, norms, the head) may still be views of the
    # memory-mapped checkpoint; copying them lets the mapping, and every fp32 page read while
    # quantizing, be released.
    with torch.no_grad():
        for param in model.parameters():
            if getattr(param, "quant_state", None) is None:
                param.data = param.data.clone()
    return replaced
