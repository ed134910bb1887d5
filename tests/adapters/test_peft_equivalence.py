"""lorafleet's adapters are PEFT's: same files, same keys, same logits, same parameter counts."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors.torch import load_file

from lorafleet.adapters import LoraSettings, attach, count_parameters, load_adapter, save_adapter
from lorafleet.models import tiny_model

SETTINGS = [
    {"r": 4, "target_modules": ["q_proj", "v_proj"]},
    {"r": 8, "alpha": 4, "target_modules": "all-linear", "use_rslora": True},
    {"r": 2, "target_modules": r".*\.mlp\.(gate|up)_proj", "bias": "lora_only"},
    {"r": 4, "target_modules": ["k_proj", "o_proj"], "use_dora": True},
    {"r": 4, "target_modules": ["q_proj"], "modules_to_save": ["lm_head"]},
]


@pytest.mark.parametrize("options", SETTINGS, ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()))
def test_lorafleet_adapter_loads_in_peft(
    tmp_path: Path, options: dict[str, object], tokens: torch.Tensor
) -> None:
    base, _ = tiny_model("llama")
    ours = attach(copy.deepcopy(base), LoraSettings(init="random", **options))  # type: ignore[arg-type]
    save_adapter(ours, tmp_path / "a")

    assert json.loads((tmp_path / "a" / "adapter_config.json").read_text())["peft_type"] == "LORA"
    reference = PeftModel.from_pretrained(copy.deepcopy(base), str(tmp_path / "a")).eval()
    torch.testing.assert_close(reference(tokens).logits, ours.eval()(tokens).logits, atol=1e-5, rtol=0)


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gpt2"])
def test_peft_adapter_loads_in_lorafleet(tmp_path: Path, arch: str, tokens: torch.Tensor) -> None:
    base, _ = tiny_model(arch)  # type: ignore[arg-type]
    targets = ["c_attn"] if arch == "gpt2" else ["q_proj", "v_proj"]
    config = LoraConfig(
        r=4, lora_alpha=8, target_modules=targets, init_lora_weights=False, task_type="CAUSAL_LM"
    )
    reference = get_peft_model(copy.deepcopy(base), config).eval()
    reference.save_pretrained(str(tmp_path / "peft"))

    ours = load_adapter(copy.deepcopy(base), tmp_path / "peft")
    torch.testing.assert_close(ours(tokens).logits, reference(tokens).logits, atol=1e-5, rtol=0)
    assert not (tmp_path / "peft" / "lorafleet.json").exists()  # a plain PEFT adapter, no sidecar needed


def test_saved_keys_are_peft_keys(tmp_path: Path) -> None:
    base, _ = tiny_model("llama")
    config = LoraConfig(r=4, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
    get_peft_model(copy.deepcopy(base), config).save_pretrained(str(tmp_path / "peft"))
    ours = attach(copy.deepcopy(base), LoraSettings.from_peft(config))
    save_adapter(ours, tmp_path / "ours")

    peft_keys = load_file(str(tmp_path / "peft" / "adapter_model.safetensors")).keys()
    our_keys = load_file(str(tmp_path / "ours" / "adapter_model.safetensors")).keys()
    assert sorted(our_keys) == sorted(peft_keys)
    assert "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight" in our_keys


@pytest.mark.parametrize("options", SETTINGS, ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()))
def test_parameter_counts_equal_peft(options: dict[str, object]) -> None:
    base, _ = tiny_model("llama")
    settings = LoraSettings(**options)  # type: ignore[arg-type]
    reference = get_peft_model(copy.deepcopy(base), settings.to_peft())
    ours = count_parameters(attach(copy.deepcopy(base), settings))
    assert (ours.trainable, ours.total) == reference.get_nb_trainable_parameters()
    assert ours.trainable > 0


def test_qlora_parameter_counts_equal_peft() -> None:
    base, _ = tiny_model("llama", hidden_size=64, intermediate_size=128)
    settings = LoraSettings(r=4, target_modules=["q_proj", "v_proj"])
    ours = attach(base, settings, quantization="nf4")
    assert (
        count_parameters(ours).trainable,
        count_parameters(ours).total,
    ) == ours.get_nb_trainable_parameters()
    full = get_peft_model(tiny_model("llama", hidden_size=64, intermediate_size=128)[0], settings.to_peft())
    assert count_parameters(ours).total == full.get_nb_trainable_parameters()[1]
