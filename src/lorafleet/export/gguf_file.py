"""Writing one GGUF file with the `gguf` package, whole or not at all.

A GGUF file is a header, the metadata key/values, one info record per tensor (name, shape, GGML type,
offset) and then the tensors' data, each aligned to 32 bytes. The tensor infos come first, so every
tensor's type and shape is planned (`GgufTensor`) before any is encoded; the data is then encoded and
written one tensor at a time, so no more than one encoded tensor is held in memory.

Everything is written to a temporary file beside `path` (`files.atomic_file`), fsynced and renamed onto
`path` at the end: an error or interruption midway leaves whatever was at `path` before (or nothing)
and removes the temporary file.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from gguf import GGMLQuantizationType, GGUFValueType, GGUFWriter

from lorafleet.export.gguf_quant import encode, stored_dtype, stored_shape
from lorafleet.files import atomic_file


@dataclass(frozen=True)
class GgufTensor:
    """One tensor planned for a GGUF file; its values are computed only when it is written."""

    name: str  # llama.cpp's tensor name, e.g. blk.0.attn_q.weight
    shape: tuple[int, ...]  # numpy order: (rows, columns) for a matrix; GGUF lists it reversed
    qtype: GGMLQuantizationType  # how it is stored
    values: Callable[[], np.ndarray]  # float32 values of `shape`, already in llama.cpp's layout


def write_gguf_file(
    path: Path, *, arch: str, metadata: Callable[[GGUFWriter], None], tensors: Sequence[GgufTensor]
) -> Path:
    """Write a GGUF file for llama.cpp architecture `arch` at `path` atomically; return `path`.

    `metadata(writer)` adds the key/values (general.*, hyper-parameters, tokenizer) to the writer.
    """
    with atomic_file(path) as staging:
        writer = _Writer(staging, arch)
        try:
            metadata(writer)
            for tensor in tensors:
                shape = stored_shape(tensor.shape, tensor.qtype)
                dtype = stored_dtype(tensor.qtype)
                nbytes = int(np.prod(shape)) * dtype.itemsize
                raw = tensor.qtype if dtype == np.uint8 else None  # block types: bytes per row
                writer.add_tensor_info(tensor.name, shape, dtype, nbytes, raw_dtype=raw)
            writer.write_header_to_file()
            writer.write_kv_data_to_file()
            writer.write_ti_data_to_file()
            for tensor in tensors:
                writer.write_tensor_data(_encoded(tensor))
        finally:
            writer.close()
    return path


class _Writer(GGUFWriter):
    """`GGUFWriter` that can also write an empty array (llama.cpp needs the merges key, even empty)."""

    def _pack_val(
        self, val: Any, vtype: GGUFValueType, add_vtype: bool, sub_type: GGUFValueType | None = None
    ) -> bytes:
        if vtype != GGUFValueType.ARRAY or len(val) > 0 or sub_type is None:
            return super()._pack_val(val, vtype, add_vtype, sub_type)
        # type tag (if asked), element type, element count 0
        tag = self._pack("I", vtype) if add_vtype else b""
        return tag + self._pack("I", sub_type) + self._pack("Q", 0)


def _encoded(tensor: GgufTensor) -> np.ndarray:
    values = tensor.values()
    if tuple(values.shape) != tensor.shape:
        raise ValueError(f"{tensor.name}: planned shape {tensor.shape}, computed {tuple(values.shape)}")
    return encode(values, tensor.qtype)
