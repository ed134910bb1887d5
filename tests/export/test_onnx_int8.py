"""quantize_int8: int8 weights (the tied head included) whose next tokens still agree with PyTorch's."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import PreTrainedModel

from lorafleet.errors import ExportError
from lorafleet.export.onnx_int8 import Method, quantize_int8
from lorafleet.export.onnx_model import write_onnx
from lorafleet.export.onnx_runtime import OnnxRuntime
from lorafleet.export.runtime import top1_agreement, torch_logits
from lorafleet.models import tiny_model

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
PROMPT = "Hello, I ordered a lamp on 2024-03-05 and it arrived broken. Order ZX-99812, refund 41.50."
CALIBRATION = [f"Ticket {i}: order AB-{1000 + i} is late, refund {3 * i}.50 please." for i in range(8)]


@pytest.fixture(scope="module")
def llama() -> PreTrainedModel:
    """The tiny random llama: its own output head, so its next tokens depend on its weights (a tiny random
    model with a tied head mostly predicts the token it was given, whatever the weights)."""
    model, _ = tiny_model("llama", seed=0)
    return model


@pytest.fixture(scope="module")
def fp32(llama: PreTrainedModel, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_onnx(llama, tmp_path_factory.mktemp("onnx") / "fp32.onnx")


@pytest.fixture(scope="module")
def tied_fp32(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny qwen2 exported: its output head is tied to the embedding, as in the default model."""
    model, _ = tiny_model("qwen2", seed=0)
    return write_onnx(model, tmp_path_factory.mktemp("onnx") / "tied.onnx")


@pytest.fixture(scope="module")
def ids(llama: PreTrainedModel) -> list[int]:
    """The prompt followed by 64 tokens the PyTorch model generates greedily."""
    _, tokenizer = tiny_model("llama")
    prompt = tokenizer(PROMPT)["input_ids"]
    with torch.no_grad():
        generated = llama.generate(
            torch.tensor([prompt]), do_sample=False, max_new_tokens=64, min_new_tokens=64
        )
    return generated[0].tolist()


def linear_layers(path: Path) -> dict[str, int]:
    """How the graph at `path` multiplies by weights: float MatMuls of a constant or of a transposed
    constant (a tied head), and int8 ones (MatMulNBits, MatMulInteger, or MatMul of a de-quantized int8
    constant)."""
    graph = onnx.load(str(path)).graph
    constants = {tensor.name: tensor.data_type for tensor in graph.initializer}
    transposed = {n.output[0] for n in graph.node if n.op_type == "Transpose" and n.input[0] in constants}
    int8 = onnx.TensorProto.INT8
    dequantized = {
        n.output[0]
        for n in graph.node
        if n.op_type == "DequantizeLinear" and constants.get(n.input[0]) == int8
    }
    matmuls = [node for node in graph.node if node.op_type == "MatMul"]
    return {
        "float": sum(node.input[1] in constants for node in matmuls),
        "float, transposed": sum(node.input[1] in transposed for node in matmuls),
        "int8": sum(node.input[1] in dequantized for node in matmuls)
        + sum(node.op_type in ("MatMulNBits", "MatMulInteger") for node in graph.node),
    }


def calibration_rows() -> list[list[int]]:
    _, tokenizer = tiny_model("llama")
    return [tokenizer(text)["input_ids"] for text in CALIBRATION]


@pytest.mark.parametrize(
    ("method", "min_agreement", "max_error"),  # max_error: max |Δlogit| over the logits' standard deviation
    [
        ("blockwise", 0.95, 0.1),
        ("dynamic", 0.95, 0.1),
        ("static", 0.9, 1.0),  # activation ranges fixed from 8 short rows: coarser, as on real models
    ],
)
def test_int8_agrees_with_pytorch(
    method: Method,
    min_agreement: float,
    max_error: float,
    fp32: Path,
    llama: PreTrainedModel,
    ids: list[int],
    tmp_path: Path,
) -> None:
    rows = calibration_rows() if method == "static" else None
    int8 = OnnxRuntime(
        quantize_int8(fp32, tmp_path / "int8.onnx", method=method, calibration=rows), threads=1
    )
    other, _ = tiny_model("llama", seed=1)  # another random model: what a broken quantization looks like
    start = len(ids) - 64

    agreement = top1_agreement(int8, llama, ids, start=start)
    baseline = top1_agreement(int8, other, ids, start=start)
    error = np.abs(int8.logits(ids) - torch_logits(llama, ids))  # (T, V)

    assert agreement >= min_agreement, agreement
    assert baseline <= 0.2, baseline  # the check can fail: a wrong model scores near chance
    assert 0 < error.max() < max_error * torch_logits(llama, ids).std()  # quantized, and close


@pytest.mark.parametrize("method", ["blockwise", "dynamic", "static"])
def test_every_linear_layer_is_int8_the_tied_head_included(
    method: Method, tied_fp32: Path, tmp_path: Path
) -> None:
    rows = calibration_rows() if method == "static" else None

    path = quantize_int8(tied_fp32, tmp_path / "int8.onnx", method=method, calibration=rows)

    before, after = linear_layers(tied_fp32), linear_layers(path)
    assert before["float, transposed"] == 1  # the head: the embedding table, transposed
    assert after == {"float": 0, "float, transposed": 0, "int8": before["float"] + 1}
    assert path.stat().st_size < tied_fp32.stat().st_size
    assert [p.name for p in tmp_path.iterdir()] == ["int8.onnx"]  # no folded copy left beside it


@pytest.mark.parametrize("method", ["dynamic", "static"])
def test_uint8_by_int8_methods_keep_weights_to_7_bits(method: Method, fp32: Path, tmp_path: Path) -> None:
    """uint8 activations × int8 weights saturate on x86 CPUs without VNNI unless |Wq| ≤ 64 (reduce_range);
    on such a CPU the tiny llama's max |Δlogit| grows about 18× (dynamic) without it."""
    rows = calibration_rows() if method == "static" else None
    path = quantize_int8(fp32, tmp_path / "int8.onnx", method=method, calibration=rows)

    graph = onnx.load(str(path)).graph
    weights = [w for w in graph.initializer if w.data_type == onnx.TensorProto.INT8 and len(w.dims) == 2]
    largest = [int(np.abs(onnx.numpy_helper.to_array(w).astype(np.int32)).max()) for w in weights]
    assert len(weights) == linear_layers(fp32)["float"]  # one per linear layer (zero points are 1-D)
    assert max(largest) == 64  # 7 bits, and used to the full


def test_static_fixes_activation_scales_in_the_graph(fp32: Path, tmp_path: Path) -> None:
    path = quantize_int8(fp32, tmp_path / "static.onnx", calibration=calibration_rows(), method="static")

    ops = {node.op_type for node in onnx.load(str(path)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    assert "DynamicQuantizeLinear" not in ops


def test_static_needs_calibration_and_the_others_take_none(fp32: Path, tmp_path: Path) -> None:
    with pytest.raises(ExportError, match="static int8 quantization needs calibration rows"):
        quantize_int8(fp32, tmp_path / "static.onnx", method="static")
    with pytest.raises(ExportError, match="'blockwise' quantization takes none"):
        quantize_int8(fp32, tmp_path / "int8.onnx", calibration=[[1, 2, 3]])
    assert list(tmp_path.iterdir()) == []


def test_missing_source_names_it(tmp_path: Path) -> None:
    with pytest.raises(ExportError, match=r"no ONNX model at .*fp32\.onnx"):
        quantize_int8(tmp_path / "fp32.onnx", tmp_path / "int8.onnx")


def test_unknown_method_is_an_error(fp32: Path, tmp_path: Path) -> None:
    with pytest.raises(ExportError, match=r"'int4'.*blockwise, dynamic, static"):
        quantize_int8(fp32, tmp_path / "int8.onnx", method="int4")  # type: ignore[arg-type]
