"""write_onnx: one graph with a KV cache whose logits and cache match transformers', written atomically."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from transformers import DynamicCache, PreTrainedModel

from lorafleet.errors import ExportError
from lorafleet.export import onnx_model
from lorafleet.export.onnx_model import kv_names, write_onnx
from lorafleet.models import tiny_model

ort = pytest.importorskip("onnxruntime")
TEXT = "Order AB-12345 arrived broken on 2024-03-05."


@pytest.fixture(scope="module")
def llama_onnx(llama: PreTrainedModel, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`llama` exported once for the module."""
    return write_onnx(llama, tmp_path_factory.mktemp("onnx") / "llama.onnx")


def ids_of(text: str) -> list[int]:
    _, tokenizer = tiny_model("llama")
    return tokenizer(text)["input_ids"]


def session(path: Path) -> Any:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def empty_past(model: PreTrainedModel, batch: int) -> dict[str, np.ndarray]:
    config = model.config
    head_dim = config.hidden_size // config.num_attention_heads
    shape = (batch, config.num_key_value_heads, 0, head_dim)  # (B, H_kv, P = 0, d)
    return {
        name: np.zeros(shape, np.float32) for name in kv_names("past_key_values.", config.num_hidden_layers)
    }


def test_graph_names_the_cache_and_its_dynamic_axes(llama_onnx: Path) -> None:
    graph = session(llama_onnx)
    inputs = {node.name: node.shape for node in graph.get_inputs()}
    outputs = {node.name: node.shape for node in graph.get_outputs()}

    assert list(inputs)[:3] == ["input_ids", "attention_mask", "position_ids"]
    assert list(inputs)[3:] == kv_names("past_key_values.", 2)
    assert list(outputs) == ["logits", *kv_names("present.", 2)]
    batch, _, past, _ = inputs["past_key_values.0.key"]
    assert isinstance(batch, str) and isinstance(past, str)  # symbolic: dynamic
    assert inputs["past_key_values.1.value"][1::2] == [2, 8]  # (B, H_kv = 2, P, d = 8)
    assert [type(size) for size in inputs["input_ids"]] == [str, str]
    assert [p.name for p in llama_onnx.parent.iterdir()] == ["llama.onnx"]  # self-contained, no .data


def test_prompt_logits_and_cache_match_transformers(llama: PreTrainedModel, llama_onnx: Path) -> None:
    ids = ids_of(TEXT)
    T = len(ids)
    feed = {
        "input_ids": np.asarray([ids]),
        "attention_mask": np.ones((1, T), np.int64),
        "position_ids": np.arange(T)[None],
        **empty_past(llama, 1),
    }

    logits, *present = session(llama_onnx).run(None, feed)
    with torch.no_grad():
        expected = llama(torch.tensor([ids]), cache=DynamicCache(config=llama.config), use_cache=True)

    torch.testing.assert_close(torch.from_numpy(logits), expected.logits, atol=1e-4, rtol=0)
    layer = expected.cache.layers[1]
    torch.testing.assert_close(torch.from_numpy(present[2]), layer.keys, atol=1e-5, rtol=0)  # (1, 2, T, 8)
    torch.testing.assert_close(torch.from_numpy(present[3]), layer.values, atol=1e-5, rtol=0)


def test_left_padded_batch_with_a_past_matches_transformers(llama: PreTrainedModel, llama_onnx: Path) -> None:
    """Batch 2, the second row left-padded by 3, a 4-token step after a 6-token past: mask and positions
    are honoured, not assumed."""
    torch.manual_seed(1)
    mask = torch.ones(2, 10, dtype=torch.long)  # (B, P + T)
    mask[1, :3] = 0
    positions = (mask.cumsum(-1) - 1).clamp(min=0)  # (B, P + T)
    ids = torch.randint(0, 256, (2, 10))
    with torch.no_grad():
        cache = DynamicCache(config=llama.config)
        llama(
            ids[:, :6], attention_mask=mask[:, :6], position_ids=positions[:, :6], cache=cache, use_cache=True
        )
        past = [t.numpy().copy() for layer in cache.layers for t in (layer.keys, layer.values)]
        expected = llama(
            ids[:, 6:], attention_mask=mask, position_ids=positions[:, 6:], cache=cache, use_cache=True
        ).logits  # (B, 4, V)
    feed = {
        "input_ids": ids[:, 6:].numpy(),
        "attention_mask": mask.numpy(),
        "position_ids": positions[:, 6:].numpy(),
        **dict(zip(kv_names("past_key_values.", 2), past, strict=True)),
    }

    logits = session(llama_onnx).run(["logits"], feed)[0]

    torch.testing.assert_close(torch.from_numpy(logits), expected, atol=1e-4, rtol=0)


def test_qwen2_exports_too(tmp_path: Path) -> None:
    model, tokenizer = tiny_model("qwen2", seed=0)  # biases on q, k, v; tied output head
    ids = tokenizer(TEXT)["input_ids"]
    path = write_onnx(model, tmp_path / "qwen2.onnx")
    feed = {
        "input_ids": np.asarray([ids]),
        "attention_mask": np.ones((1, len(ids)), np.int64),
        "position_ids": np.arange(len(ids))[None],
        **empty_past(model, 1),
    }

    logits = session(path).run(["logits"], feed)[0]

    with torch.no_grad():
        expected = model(torch.tensor([ids])).logits
    torch.testing.assert_close(torch.from_numpy(logits), expected, atol=1e-4, rtol=0)


class InterruptedProgram:
    """Stands in for the exported program: its `save` writes part of the file, then fails with `error`."""

    def __init__(self, error: BaseException) -> None:
        self.error = error

    def save(self, destination: Path, **_: object) -> None:
        Path(destination).write_bytes(b"\x08\x09half an onnx file")
        raise self.error


def test_a_failed_write_leaves_nothing_at_the_target(
    llama: PreTrainedModel, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    disk_full = OSError(28, "No space left on device")
    monkeypatch.setattr(torch.onnx, "export", lambda *args, **kwargs: InterruptedProgram(disk_full))

    with pytest.raises(OSError, match="No space left"):
        write_onnx(llama, tmp_path / "out" / "model.onnx")

    assert list((tmp_path / "out").iterdir()) == []  # no target, no temporary file beside it


def test_an_interrupted_write_keeps_the_previous_file(
    llama: PreTrainedModel, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "model.onnx"
    target.write_bytes(b"the previous export")
    monkeypatch.setattr(torch.onnx, "export", lambda *args, **kwargs: InterruptedProgram(KeyboardInterrupt()))

    with pytest.raises(KeyboardInterrupt):
        write_onnx(llama, target)

    assert target.read_bytes() == b"the previous export"
    assert [p.name for p in tmp_path.iterdir()] == ["model.onnx"]


def test_an_exporter_failure_is_an_export_error(
    llama: PreTrainedModel, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def cannot_trace(*args: object, **kwargs: object) -> None:
        raise RuntimeError("data-dependent control flow")

    monkeypatch.setattr(torch.onnx, "export", cannot_trace)

    with pytest.raises(ExportError, match=r"llama model to .*model\.onnx: data-dependent control flow"):
        write_onnx(llama, tmp_path / "model.onnx")
    assert list(tmp_path.iterdir()) == []


def test_refuses_an_unmerged_adapter(llama: PreTrainedModel, tmp_path: Path) -> None:
    from peft import LoraConfig, get_peft_model

    peft_model = get_peft_model(tiny_model("llama")[0], LoraConfig(r=2, target_modules=["q_proj"]))

    with pytest.raises(ExportError, match="merge"):
        write_onnx(peft_model, tmp_path / "model.onnx")  # type: ignore[arg-type]
    assert not (tmp_path / "model.onnx").exists()


def test_refuses_a_model_too_large_for_one_file(
    llama: PreTrainedModel, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(onnx_model, "SINGLE_FILE_LIMIT", 1024)  # the tiny model's weights: ~100 kB

    with pytest.raises(ExportError, match=r"GiB; a self-contained \.onnx file holds under 2 GiB"):
        write_onnx(llama, tmp_path / "model.onnx")


def test_refuses_half_precision_and_other_architectures(tmp_path: Path) -> None:
    half, _ = tiny_model("llama", dtype=torch.bfloat16)
    gpt2, _ = tiny_model("gpt2")

    with pytest.raises(ExportError, match=r"torch\.bfloat16.*dtype=torch\.float32"):
        write_onnx(half, tmp_path / "model.onnx")
    with pytest.raises(ExportError, match="'gpt2'"):
        write_onnx(gpt2, tmp_path / "model.onnx")
