"""The GGUF LoRA file: tensor names and shapes, alpha (rsLoRA, patterns), and the adapters it refuses."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from gguf import GGUFReader
from safetensors.torch import load_file

from lorafleet.errors import ExportError
from lorafleet.export.gguf_layout import to_llama_cpp_rope_order
from lorafleet.export.gguf_lora import write_gguf_lora
from lorafleet.models import tiny_model
from tests.helpers import save_random_adapter


@pytest.fixture
def base() -> torch.nn.Module:
    model, _ = tiny_model("llama", num_heads=4)  # 4 query heads of 8, 2 KV heads
    return model


def _read(path: Path) -> tuple[dict[str, object], dict[str, np.ndarray]]:
    reader = GGUFReader(path)
    fields = {key: field.contents() for key, field in reader.fields.items()}
    tensors = {t.name: np.array(t.data, dtype=np.float32) for t in reader.tensors}
    return fields, tensors


def test_tensors_and_metadata(base: torch.nn.Module, tmp_path: Path) -> None:
    adapter = save_random_adapter(base, tmp_path / "adapter", target_modules="all-linear", r=4, alpha=8.0)
    path = write_gguf_lora(adapter, tmp_path / "lora.gguf", base_config=base.config)
    fields, tensors = _read(path)
    assert fields["general.type"] == "adapter"
    assert fields["general.architecture"] == "llama"
    assert fields["adapter.type"] == "lora"
    assert fields["adapter.lora.alpha"] == 8.0
    state = load_file(adapter / "adapter_model.safetensors")
    assert len(tensors) == len(state) == 2 * 7 * 2  # A and B, 7 linear layers, 2 blocks
    a = state["base_model.model.model.layers.1.self_attn.k_proj.lora_A.weight"]
    b = state["base_model.model.model.layers.1.self_attn.k_proj.lora_B.weight"]
    np.testing.assert_array_equal(tensors["blk.1.attn_k.weight.lora_a"], a.numpy())  # (r, in)
    np.testing.assert_array_equal(
        tensors["blk.1.attn_k.weight.lora_b"], to_llama_cpp_rope_order(b, 2).numpy()
    )
    v = state["base_model.model.model.layers.1.self_attn.v_proj.lora_B.weight"]
    np.testing.assert_array_equal(tensors["blk.1.attn_v.weight.lora_b"], v.numpy())  # no rope: as it was


def test_rslora_alpha_gives_llama_cpp_the_scale_alpha_over_sqrt_r(
    base: torch.nn.Module, tmp_path: Path
) -> None:
    adapter = save_random_adapter(base, tmp_path / "adapter", r=4, alpha=8.0, use_rslora=True)
    fields, _ = _read(write_gguf_lora(adapter, tmp_path / "lora.gguf", base_config=base.config))
    alpha = fields["adapter.lora.alpha"]
    assert alpha / 4 == pytest.approx(8.0 / math.sqrt(4))  # type: ignore[operator]  # llama.cpp: alpha/r


def test_alpha_pattern_is_folded_into_b(base: torch.nn.Module, tmp_path: Path) -> None:
    adapter = save_random_adapter(base, tmp_path / "adapter", r=4, alpha=8.0)
    config = json.loads((adapter / "adapter_config.json").read_text())
    config["alpha_pattern"] = {"v_proj": 2.0}  # v's scale 2/4 instead of 8/4: a quarter
    (adapter / "adapter_config.json").write_text(json.dumps(config))
    _, tensors = _read(write_gguf_lora(adapter, tmp_path / "lora.gguf", base_config=base.config))
    state = load_file(adapter / "adapter_model.safetensors")
    v = state["base_model.model.model.layers.0.self_attn.v_proj.lora_B.weight"]
    np.testing.assert_allclose(tensors["blk.0.attn_v.weight.lora_b"], v.numpy() / 4, rtol=1e-6)


@pytest.mark.parametrize(
    ("settings", "cause"),
    [
        ({"use_dora": True}, "DoRA"),
        ({"modules_to_save": ["lm_head"]}, "modules_to_save"),
        ({"bias": "lora_only"}, "trained biases"),
        ({"target_modules": ["q_proj", "lm_head"]}, "no LoRA tensor for module lm_head"),
    ],
)
def test_refused_adapters_name_the_cause_and_offer_the_merged_export(
    base: torch.nn.Module, tmp_path: Path, settings: dict[str, object], cause: str
) -> None:
    adapter = save_random_adapter(base, tmp_path / "adapter", **settings)
    with pytest.raises(ExportError, match=cause) as refused:
        write_gguf_lora(adapter, tmp_path / "lora.gguf", base_config=base.config)
    assert "--format gguf" in str(refused.value)
    assert not (tmp_path / "lora.gguf").exists()


def test_an_adapter_of_another_base_is_refused(base: torch.nn.Module, tmp_path: Path) -> None:
    adapter = save_random_adapter(base, tmp_path / "adapter")
    other, _ = tiny_model("llama", hidden_size=64, num_heads=4)
    with pytest.raises(ExportError, match="another base"):
        write_gguf_lora(adapter, tmp_path / "lora.gguf", base_config=other.config)
