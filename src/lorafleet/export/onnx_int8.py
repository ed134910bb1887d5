"""int8 ONNX exports with ONNX Runtime's quantizers: every linear layer's weight (the output head included)
stored as int8, three ways of treating the activations.

Weights are quantized symmetrically, each group G of weights (a block, or an output channel) with its own
scale:

    s_G = max_{i∈G} |W_i| / q,   Wq_i = round(W_i / s_G) ∈ [-q, q],   W ≈ s_G · Wq

with q = 127 (8 bits) blockwise and q = 64 (7 bits, see below) for dynamic and static.

- "blockwise" (the default): G = 32 consecutive weights along the input axis (MatMulNBits, 8 bits). At run
  time each block of 32 activations gets its own scale too (accuracy level 4: int8 × int8 products, fp32
  sums), so a few large activations only coarsen their own block.
- "dynamic" (`quantize_dynamic`): G = one output channel; each activation tensor gets one scale and zero
  point per call, from its min and max (x ≈ s_x·(xq − z_x), xq ∈ [0, 255]).
- "static" (`quantize_static`, QDQ): G = one output channel; each activation's s_x, z_x fixed in advance
  from its min and max over calibration rows (token id sequences like the ones the model will see).

Dynamic and static keep their weights to 7 bits (ONNX Runtime's `reduce_range`). They multiply uint8
activations by int8 weights, and on x86 CPUs without VNNI (AVX2, and AVX-512 before VNNI) ONNX Runtime
sums those products in pairs in int16, which saturates with full 8-bit weights. On a 2-core AMD EPYC
with AVX2 only, SmolLM2's top-1 agreement (measured as below, 2026-12-08) was 0.0% (dynamic) and 0.8%
(static) with 8-bit weights, and 86.7% and 78.1% with 7-bit ones. An export runs on whatever CPU its
device has, so it never counts on VNNI. Blockwise multiplies int8 by int8 and keeps all 8 bits (98.8%
on that CPU).

Why blockwise is the default, measured on SmolLM2-135M-Instruct (top-1 agreement with PyTorch over 256
greedy tokens; greedy tokens/s in ONNX Runtime on 2 shared CPU threads; AVX-512 with VNNI, 8-bit weights
throughout): blockwise 96.5% at 14 tokens/s, dynamic 78.9% at 17, static 69.5% at 17 (32 calibration
rows), fp32 100% at 6. Dynamic is a little faster, but only blockwise keeps the model's answers: the
input of the MLP's down projection holds a few values up to 600 standard deviations out, so with one
scale per tensor (dynamic, static) a step of 256 levels is several standard deviations wide and most of
the tensor rounds to zero; quantizing only down_proj that way already drops agreement to 80%.

The exporter leaves a tied output head as `MatMul(h, Transpose(E))` with E the embedding table, which
the quantizers skip (its weight is not a constant); the transpose is folded into a constant of its own
first, so the head, the largest matrix of a small model, is quantized too. The embedding table itself
(a Gather) stays float32.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Literal, get_args

import numpy as np

from lorafleet.errors import ExportError
from lorafleet.export.onnx_deps import require
from lorafleet.export.onnx_model import PAST_PREFIX
from lorafleet.files import atomic_file

Method = Literal["blockwise", "dynamic", "static"]
BLOCK = 32  # weights (and activations) per scale, blockwise
INT8_COMPUTE = 4  # MatMulNBits accuracy level 4: activations quantized to int8 per block


def quantize_int8(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    *,
    calibration: Sequence[Sequence[int]] | None = None,
    method: Method = "blockwise",
) -> Path:
    """Write an int8 copy of the fp32 export `src` at `dst` (atomically, like `write_onnx`).

    `calibration` (token id sequences) is what `method="static"` fixes the activation ranges from, and it
    needs them; the other methods take none. See the module docstring for how the methods compare.
    """
    source, target = Path(src), Path(dst)
    if method not in get_args(Method):
        raise ExportError(f"int8 method {method!r} is not one of {', '.join(get_args(Method))}")
    if not source.is_file():
        raise ExportError(f"no ONNX model at {source} to quantize; export one with write_onnx")
    if method == "static" and not calibration:
        raise ExportError("static int8 quantization needs calibration rows (token id sequences)")
    if method != "static" and calibration:
        raise ExportError(f"calibration rows are for method='static'; {method!r} quantization takes none")
    onnx = require("onnx")
    with atomic_file(target) as staging:
        folded = staging.with_name("folded.onnx")
        model = onnx.load(str(source))
        _fold_weight_transposes(model)
        weights = _weight_matmuls(model)
        onnx.save(model, str(folded))
        del model
        if method == "blockwise":
            _blockwise(folded, staging, weights)
        elif method == "dynamic":
            _dynamic(folded, staging, weights)
        else:
            _static(folded, staging, weights, calibration or [])
    return target


def _blockwise(src: Path, dst: Path, weights: list[str]) -> None:
    nbits = require("onnxruntime.quantization.matmul_nbits_quantizer")
    quantizer = nbits.MatMulNBitsQuantizer(
        str(src),
        bits=8,
        block_size=BLOCK,
        is_symmetric=True,
        accuracy_level=INT8_COMPUTE,
        nodes_to_include=weights,
    )
    quantizer.process()
    quantizer.model.save_model_to_file(str(dst), use_external_data_format=False)


def _dynamic(src: Path, dst: Path, weights: list[str]) -> None:
    quantization = require("onnxruntime.quantization")
    quantization.quantize_dynamic(
        src,
        dst,
        op_types_to_quantize=["MatMul"],
        nodes_to_quantize=weights,
        per_channel=True,
        reduce_range=True,  # 7-bit weights: no u8×s8 saturation on CPUs without VNNI (module docstring)
        weight_type=quantization.QuantType.QInt8,
    )


def _static(src: Path, dst: Path, weights: list[str], calibration: Sequence[Sequence[int]]) -> None:
    quantization = require("onnxruntime.quantization")
    quantization.quantize_static(
        src,
        dst,
        _CalibrationRows(calibration, _past_shapes(src)),
        quant_format=quantization.QuantFormat.QDQ,
        op_types_to_quantize=["MatMul"],
        nodes_to_quantize=weights,
        per_channel=True,
        reduce_range=True,  # as in _dynamic
        activation_type=quantization.QuantType.QUInt8,
        weight_type=quantization.QuantType.QInt8,
    )


def _fold_weight_transposes(model: Any) -> int:
    """Replace each `Transpose` of a constant by the transposed constant, in place; returns how many."""
    numpy_helper = require("onnx.numpy_helper")
    graph = model.graph
    constants = {tensor.name: tensor for tensor in graph.initializer}
    folded = []
    for node in graph.node:
        if node.op_type != "Transpose" or node.input[0] not in constants:
            continue
        perm = next((list(a.ints) for a in node.attribute if a.name == "perm"), None)
        weight = numpy_helper.to_array(constants[node.input[0]])
        graph.initializer.append(numpy_helper.from_array(np.transpose(weight, perm), node.output[0]))
        folded.append(node)
    for node in folded:
        graph.node.remove(node)
    used = {name for node in graph.node for name in node.input}
    for tensor in [t for t in graph.initializer if t.name not in used]:
        graph.initializer.remove(tensor)  # a constant only the transpose read
    return len(folded)


def _weight_matmuls(model: Any) -> list[str]:
    """The names of the MatMuls whose second input is a constant: the linear layers, not attention's
    q·kᵀ and p·v (two activations, which int8 would only make less exact). Unnamed nodes get a name."""
    constants = {tensor.name for tensor in model.graph.initializer}
    names = []
    for index, node in enumerate(model.graph.node):
        if node.op_type == "MatMul" and node.input[1] in constants:
            node.name = node.name or f"MatMul_{index}"
            names.append(node.name)
    return names


def _past_shapes(path: Path) -> dict[str, tuple[int, int]]:
    """Each past input's fixed (H_kv, d) axes, read from the graph at `path`."""
    onnx = require("onnx")
    model = onnx.load(str(path), load_external_data=False)
    shapes = {}
    for value in model.graph.input:
        if value.name.startswith(PAST_PREFIX):
            dims = value.type.tensor_type.shape.dim
            shapes[value.name] = (dims[1].dim_value, dims[3].dim_value)
    return shapes


class _CalibrationRows:
    """ONNX Runtime's `CalibrationDataReader`: each row run as a prompt (empty past), one row per call."""

    def __init__(self, rows: Sequence[Sequence[int]], past: dict[str, tuple[int, int]]) -> None:
        self._feeds: Iterator[dict[str, np.ndarray]] = (self._feed(row, past) for row in rows if row)

    def get_next(self) -> dict[str, np.ndarray] | None:
        """The next row's inputs, or None after the last."""
        return next(self._feeds, None)

    @staticmethod
    def _feed(row: Sequence[int], past: dict[str, tuple[int, int]]) -> dict[str, np.ndarray]:
        length = len(row)
        return {
            "input_ids": np.asarray([row], dtype=np.int64),  # (1, T)
            "attention_mask": np.ones((1, length), dtype=np.int64),  # (1, T)
            "position_ids": np.arange(length, dtype=np.int64)[None],  # (1, T)
            **{name: np.zeros((1, heads, 0, dim), np.float32) for name, (heads, dim) in past.items()},
        }
