"""Which GGML type each tensor of a GGUF export is stored in, and encoding float weights in it.

The block formats split each row into blocks of 32 values x and store, per block, one f16 scale d
and 32 small integers q, read back as x̂ = d·q:

    Q8_0   d = max|x| / 127,   q = round(x / d) ∈ [−127, 127]          34 bytes / 32 values (8.5 bits)
    Q4_0   d = x_m / −8 (x_m the value of largest |x|),
           q = min(15, ⌊x / d + 8.5⌋) − 8 ∈ [−8, 7]                    18 bytes / 32 values (4.5 bits)
    Q5_0   the same on 5 bits: d = x_m / −16, q ∈ [−16, 15]           22 bytes / 32 values (5.5 bits)
    Q4_1   d = (max x − min x) / 15 and an f16 offset m = min x,
           q = round((x − m) / d) ∈ [0, 15], x̂ = d·q + m               20 bytes / 32 values (5 bits)

so a row must hold a multiple of 32 values. `f32` stores every tensor exactly, as a reference: it
shows what the layout alone does, without rounding. As llama.cpp's tools do, 1-D tensors (norms,
biases) stay F32, a matrix whose rows are not a multiple of the block falls back to F16, and at the
4-bit type the output head (or the embedding that serves as it when tied) is kept at Q8_0:
llama-quantize keeps it at Q6_K because its errors reach every logit directly, and the `gguf` package
has no Q6_K encoder.

Q4_1 is not offered alone on purpose. The bundled SmolLM2 is distributed as Q4_1, so its weights lie on
Q4_1's grid; an adapter's small update re-quantized onto that same grid rounds back to the base's values,
and the adapter all but vanishes (measured on the demo adapter: top-1 agreement 89%, held-out field
accuracy 0.33 against PyTorch's 0.91, where Q4_0 keeps 0.87).

`q4_mix` turns the same fact around. A matrix the adapter left alone is stored in Q4_1: on a base
distributed as Q4_1 that is the base's own grid, so it is written back exactly (Q4_0 moves those weights
by ~9% of their norm), and on any other base it is an ordinary 5-bit code. A matrix the adapter changed
(`adapted=True`) is stored in Q5_0, whose grid is not the base's, so the update is not rounded away.
The output head stays at Q8_0. On the demo adapter (attention adapted, MLP not) it took both halves to
come within 2 points of PyTorch's held-out field accuracy (0.906): q4_mix 0.908, where q4_0 gave 0.868,
an exact MLP with Q4_0 attention 0.862, Q5_0 attention with a Q4_0 MLP 0.854, and q4_mix with its query
and key projections in Q4_0 0.836 (100 tickets each); 100.02 MB against q4_0's 91.7. The file is mostly
Q4_1 and is labelled so (general.file_type); llama.cpp reads each tensor's own type.

A q4_mix export can be held to a size budget (`lorafleet export --target`): while the file is over it,
the adapted matrix whose update is smallest against its weights (‖ΔW‖/‖W‖) is stored on the base's grid
too, giving up that matrix's update for `base_grid_saving` bytes (0.5 bit per weight). The demo adapter
gives up three of its 120 (two key projections and a query projection) to meet mobile_cpu's 100 MB, and
keeps PyTorch's held-out field accuracy within 0.8 points (bench/export.py).
"""

from __future__ import annotations

from typing import Literal, get_args

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, LlamaFileType
from gguf.quants import quant_shape_to_byte_shape, quantize

from lorafleet.errors import ExportError

GgufQuant = Literal["f32", "f16", "q8_0", "q4_0", "q4_mix"]
QUANTS: tuple[str, ...] = get_args(GgufQuant)

FILE_TYPES = {
    "f32": LlamaFileType.ALL_F32,
    "f16": LlamaFileType.MOSTLY_F16,
    "q8_0": LlamaFileType.MOSTLY_Q8_0,
    "q4_0": LlamaFileType.MOSTLY_Q4_0,
    "q4_mix": LlamaFileType.MOSTLY_Q4_1,  # the unchanged matrices, usually most of the model
}
_MATRIX_TYPES = {  # a matrix the adapter changed
    "f32": GGMLQuantizationType.F32,
    "f16": GGMLQuantizationType.F16,
    "q8_0": GGMLQuantizationType.Q8_0,
    "q4_0": GGMLQuantizationType.Q4_0,
    "q4_mix": GGMLQuantizationType.Q5_0,
}
_UNCHANGED_TYPES = {**_MATRIX_TYPES, "q4_mix": GGMLQuantizationType.Q4_1}  # one the adapter left alone
_OUTPUT_HEAD_TYPES = {**_MATRIX_TYPES, "q4_0": GGMLQuantizationType.Q8_0, "q4_mix": GGMLQuantizationType.Q8_0}


def check_quant(quant: str) -> GgufQuant:
    """`quant` if it is one of `QUANTS`, else `ExportError` listing them."""
    if quant not in QUANTS:
        raise ExportError(f"GGUF quantization {quant!r} is not one of {', '.join(QUANTS)}")
    return quant  # type: ignore[return-value]


def tensor_type(
    shape: tuple[int, ...], quant: GgufQuant, *, output_head: bool, adapted: bool = True
) -> GGMLQuantizationType:
    """The GGML type of a tensor of numpy `shape` (rows, columns) in a `quant` export.

    `output_head`: the tensor computes the logits (`output`, or `token_embd` when tied). `adapted`: the
    adapter changed it (only `q4_mix` stores the two kinds differently; unknown is safest as True).
    """
    if len(shape) < 2:
        return GGMLQuantizationType.F32
    if output_head:
        wanted = _OUTPUT_HEAD_TYPES[quant]
    else:
        wanted = (_MATRIX_TYPES if adapted else _UNCHANGED_TYPES)[quant]
    block, _ = GGML_QUANT_SIZES[wanted]
    return wanted if shape[-1] % block == 0 else GGMLQuantizationType.F16  # F32 and F16: block 1


def tensor_bytes(shape: tuple[int, ...], qtype: GGMLQuantizationType) -> int:
    """How many bytes a tensor of numpy `shape` takes in the file as GGML type `qtype`."""
    block, size = GGML_QUANT_SIZES[qtype]
    return int(np.prod(shape[:-1], dtype=np.int64)) * (shape[-1] // block) * size


def base_grid_saving(shape: tuple[int, ...]) -> int:
    """Bytes a q4_mix export saves by storing an adapted matrix of `shape` as an unchanged one (Q4_1, the
    base's grid, where the update is mostly rounded away) instead of Q5_0."""
    adapted = tensor_type(shape, "q4_mix", output_head=False, adapted=True)
    unchanged = tensor_type(shape, "q4_mix", output_head=False, adapted=False)
    return tensor_bytes(shape, adapted) - tensor_bytes(shape, unchanged)


def stored_shape(shape: tuple[int, ...], qtype: GGMLQuantizationType) -> tuple[int, ...]:
    """The numpy shape of a tensor as written: float types keep it, block types hold bytes per row."""
    if qtype in (GGMLQuantizationType.F32, GGMLQuantizationType.F16):
        return shape
    return quant_shape_to_byte_shape(shape, qtype)


def stored_dtype(qtype: GGMLQuantizationType) -> np.dtype:
    """The numpy dtype a tensor of GGML type `qtype` is written as (bytes for block types)."""
    if qtype == GGMLQuantizationType.F32:
        return np.dtype(np.float32)
    if qtype == GGMLQuantizationType.F16:
        return np.dtype(np.float16)
    return np.dtype(np.uint8)


def encode(values: np.ndarray, qtype: GGMLQuantizationType) -> np.ndarray:
    """`values` (float32, numpy order) as GGML type `qtype`: a float array, or the blocks' bytes per row."""
    if qtype == GGMLQuantizationType.F32:
        return np.ascontiguousarray(values, dtype=np.float32)
    if qtype == GGMLQuantizationType.F16:
        return np.ascontiguousarray(values, dtype=np.float16)
    return quantize(np.ascontiguousarray(values, dtype=np.float32), qtype)
