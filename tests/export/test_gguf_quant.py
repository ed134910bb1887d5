"""The GGML type of each tensor at each quantization, and the encodings' accuracy."""

from __future__ import annotations

import numpy as np
import pytest
from gguf import GGMLQuantizationType as T
from gguf.quants import dequantize

from lorafleet.errors import ExportError
from lorafleet.export.gguf_quant import check_quant, encode, stored_shape, tensor_type


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


@pytest.mark.parametrize(("qtype", "bound"), [(T.F16, 1e-3), (T.Q8_0, 1 / 127), (T.Q4_0, 1 / 7)])
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
