"""The GGML type of each tensor at each quantization, and the encodings' accuracy."""

from __future__ import annotations

import numpy as np
import pytest
from gguf import GGMLQuantizationType as T
from gguf.quants import dequantize

from lorafleet.errors import ExportError
from lorafleet.export.gguf_quant import (
    base_grid_saving,
    check_quant,
    encode,
    stored_shape,
    tensor_bytes,
    tensor_type,
)


@pytest.mark.parametrize(
    ("shape", "quant", "output_head", "expected"),
    [
        ((64,), "q4_0", False, T.F32),  # norms and biases stay F32
        ((64, 64), "f32", True, T.F32),
        ((64, 64), "f16", False, T.F16),
        ((64, 64), "q8_0", False, T.Q8_0),
        ((64, 64), "q4_0", False, T.Q4_0),
        ((64, 64), "q4_0", True, T.Q8_0),  # the output head keeps more bits
        ((64, 48), "q8_0", False, T.F16),  # rows of 48: not whole blocks of 32
        ((64, 48), "q4_0", True, T.F16),
    ],
)
def test_tensor_type(shape: tuple[int, ...], quant: str, output_head: bool, expected: T) -> None:
    assert tensor_type(shape, quant, output_head=output_head) == expected  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("shape", "output_head", "adapted", "expected"),
    [
        ((64, 64), False, True, T.Q5_0),  # changed by the adapter: off the base's Q4_1 grid
        ((64, 64), False, False, T.Q4_1),  # left alone: the base's own grid
        ((64, 64), True, False, T.Q8_0),  # the output head, changed or not
        ((64,), False, True, T.F32),
        ((64, 48), False, False, T.F16),
    ],
)
def test_q4_mix_stores_what_the_adapter_changed_apart(
    shape: tuple[int, ...], output_head: bool, adapted: bool, expected: T
) -> None:
    assert tensor_type(shape, "q4_mix", output_head=output_head, adapted=adapted) == expected


def test_only_q4_mix_tells_adapted_matrices_apart() -> None:
    for quant in ("f32", "f16", "q8_0", "q4_0"):
        both = {tensor_type((64, 64), quant, output_head=False, adapted=a) for a in (True, False)}  # type: ignore[arg-type]
        assert len(both) == 1, quant


@pytest.mark.parametrize(
    ("qtype", "bound"),
    [(T.F16, 1e-3), (T.Q8_0, 1 / 127), (T.Q4_0, 1 / 7), (T.Q5_0, 1 / 15), (T.Q4_1, 1 / 14)],
)
def test_encode_round_trips_within_the_format_error(qtype: T, bound: float) -> None:
    values = np.random.default_rng(0).standard_normal((4, 64)).astype(np.float32)
    encoded = encode(values, qtype)
    assert encoded.shape == stored_shape(values.shape, qtype)
    back = encoded.astype(np.float32) if qtype == T.F16 else dequantize(encoded, qtype)
    blocks = np.abs(values).reshape(4, 2, 32).max(-1, keepdims=True)  # per-block max |x|
    error = np.abs(back - values).reshape(4, 2, 32)
    assert (error <= bound * blocks + 1e-6).all()


def test_unknown_quant_is_refused_with_the_choices() -> None:
    with pytest.raises(ExportError, match=r"q5_k.*f32, f16, q8_0, q4_0"):
        check_quant("q5_k")


def test_tensor_bytes_is_what_the_encoder_writes() -> None:
    values = np.random.default_rng(0).standard_normal((6, 64)).astype(np.float32)
    for qtype in (T.F32, T.F16, T.Q8_0, T.Q5_0, T.Q4_1, T.Q4_0):
        assert tensor_bytes(values.shape, qtype) == encode(values, qtype).nbytes, qtype.name


def test_the_base_grid_saves_half_a_bit_per_weight_of_a_block_aligned_matrix() -> None:
    assert base_grid_saving((64, 576)) == 64 * 576 // 16  # Q5_0 22 bytes, Q4_1 20 per 32 values
    assert base_grid_saving((64, 40)) == 0  # rows not a multiple of 32: F16 either way
