"""Fixtures for the multi-LoRA layer and engine tests: a tiny llama, saved random adapters of mixed ranks,
an adapter cache over them, and PEFT references with every adapter loaded under its own name."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from peft import PeftModel
from transformers import PreTrainedModel, PreTrainedTokenizerFast

from lorafleet.adapters import LoraSettings, attach, base_identity, save_adapter
from lorafleet.models import tiny_model
from lorafleet.serving.cache import AdapterCache, DirectorySource, linear_shapes

# name → (rank, targets): the mixed ranks a batch must serve without padding them to one
RANKS = {"r4": 4, "r8": 8, "r16": 16, "r64": 64}
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj"]


def tiny() -> tuple[PreTrainedModel, PreTrainedTokenizerFast]:
    """A tiny llama whose sizes NF4 can quantize (multiples of its 64-value blocks)."""
    return tiny_model("llama", hidden_size=64, intermediate_size=128, seed=0)


def save_random_adapter(base: PreTrainedModel, path: Path, *, r: int, seed: int, **options: object) -> Path:
    """A random (B ≠ 0) adapter of a copy of `base`, saved in PEFT format."""
    torch.manual_seed(seed)
    settings = {"r": r, "alpha": 2.0 * r, "target_modules": TARGETS, "init": "random", **options}
    return save_adapter(attach(copy.deepcopy(base), LoraSettings(**settings)), path)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def base_and_tokenizer() -> tuple[PreTrainedModel, PreTrainedTokenizerFast]:
    return tiny()


@pytest.fixture(scope="module")
def adapter_dirs(
    tmp_path_factory: pytest.TempPathFactory, base_and_tokenizer: tuple[PreTrainedModel, object]
) -> dict[str, Path]:
    """Adapters of ranks 4, 8, 16 and 64 on q, k, v, o (the r8 one with rsLoRA), saved once per module."""
    base, _ = base_and_tokenizer
    folder = tmp_path_factory.mktemp("adapters")
    return {
        name: save_random_adapter(base, folder / name, r=r, seed=i, use_rslora=name == "r8")
        for i, (name, r) in enumerate(RANKS.items())
    }


def make_cache(base: PreTrainedModel, adapters: dict[str, Path], **options: object) -> AdapterCache:
    return AdapterCache(
        base_identity(base), source=DirectorySource(adapters), module_shapes=linear_shapes(base), **options
    )  # type: ignore[arg-type]


def peft_with_all(base: PreTrainedModel, adapters: dict[str, Path]) -> PeftModel:
    """One PeftModel over a copy of `base` holding every adapter under its own name."""
    names = list(adapters)
    model = PeftModel.from_pretrained(copy.deepcopy(base), str(adapters[names[0]]), adapter_name=names[0])
    for name in names[1:]:
        model.load_adapter(str(adapters[name]), adapter_name=name)
    return model.eval()


def peft_logits(model: PeftModel, name: str | None, input_ids: torch.Tensor) -> torch.Tensor:
    """Logits (B, T, V) of the PEFT reference with adapter `name` alone (None: adapters disabled)."""
    with torch.no_grad():
        if name is None:
            with model.disable_adapter():
                return model(input_ids=input_ids).logits
        model.set_adapter(name)
        return model(input_ids=input_ids).logits
