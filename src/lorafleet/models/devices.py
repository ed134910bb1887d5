"""Where a model runs and in which dtype: cuda, then mps, then cpu; bf16 where the hardware does it well."""

from __future__ import annotations

import torch

from lorafleet.errors import ConfigError

DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}


def choose_device(device: str | torch.device | None = None) -> torch.device:
    """The device asked for, or the best one present: cuda, then mps, then cpu."""
    if device is not None and str(device) != "auto":
        try:
            return torch.device(device)
        except RuntimeError as err:
            raise ConfigError(
                f"device {device!r} is not a torch device (try cpu, cuda, cuda:1, mps)"
            ) from err
    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def choose_dtype(device: torch.device, dtype: str | torch.dtype | None = None) -> torch.dtype:
    """The dtype asked for, or a sensible one for `device`.

    CUDA: bf16 where the GPU supports it, else fp16. MPS: fp16. CPU: fp32, because bf16 matmuls on
    most CPUs are slower than fp32 and training in bf16 without a GPU's fp32 accumulators loses accuracy.
    """
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype is not None and dtype != "auto":
        if dtype not in DTYPES:
            raise ConfigError(f"dtype {dtype!r} is not one of {', '.join(sorted(DTYPES))}")
        return DTYPES[dtype]
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "mps":
        return torch.float16
    return torch.float32
