"""Saving and loading adapters in PEFT's format, plus lorafleet's `lorafleet.json` sidecar.

An adapter directory holds:

    adapter_config.json          PEFT's LoraConfig
    adapter_model.safetensors    PEFT key names (…layers.0.self_attn.q_proj.lora_A.weight)
    lorafleet.json               base model identity, training config, metrics, lineage, creation time

Directories are written into a temporary sibling, fsynced and renamed into place, so a crash never
leaves a half-written adapter. Only safetensors are read: pickled weights are refused.
"""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from peft import LoraConfig, PeftModel, get_peft_model_state_dict
from pydantic import BaseModel, Field, ValidationError
from safetensors import SafetensorError
from safetensors.torch import load, save_file
from torch import nn

from lorafleet import __version__
from lorafleet.adapters.attach import ADAPTER_NAME, Quantization
from lorafleet.adapters.identity import BaseIdentity, base_identity, check_same_base, remember_identity
from lorafleet.adapters.quantize import quantize_nf4
from lorafleet.errors import AdapterError, BaseModelMismatchError, CorruptFileError
from lorafleet.files import atomic_directory, atomic_file
from lorafleet.home import lorafleet_home, validate_name

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
SIDECAR_FILE = "lorafleet.json"


class Lineage(BaseModel):
    """Where an adapter came from: the adapters it was made of and how."""

    parents: list[str] = Field(
        default_factory=list, description="Paths or ids of the adapters it was made from."
    )
    method: str | None = Field(default=None, description="How it was made: 'train', 'combine:cat', ...")
    weights: list[float] | None = Field(default=None, description="Combination weights, one per parent.")
    details: dict[str, Any] | None = Field(
        default=None, description="What the method records, e.g. federated: clients, rounds, ε, δ."
    )


class AdapterCard(BaseModel):
    """The contents of `lorafleet.json`."""

    format: int = 1
    name: str | None = None
    created_at: str = Field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))
    lorafleet_version: str = __version__
    base_model: BaseIdentity
    training: dict[str, Any] | None = None
    metrics: dict[str, Any] = Field(default_factory=dict)
    lineage: Lineage = Field(default_factory=lambda: Lineage())


def save_adapter(
    model: PeftModel,
    path: str | os.PathLike[str],
    *,
    name: str | None = None,
    training: dict[str, Any] | None = None,
    metrics: dict[str, Any] | None = None,
    lineage: Lineage | None = None,
    overwrite: bool = False,
) -> Path:
    """Write `model`'s adapter to `path` in PEFT format with a `lorafleet.json` sidecar; return the path."""
    config = model.peft_config[ADAPTER_NAME]
    # The base's embeddings are checked by fingerprint, never copied into the adapter; "auto" would ask
    # the hub whether the vocabulary was resized.
    state = get_peft_model_state_dict(model, adapter_name=ADAPTER_NAME, save_embedding_layers=False)
    card = AdapterCard(
        name=name,
        base_model=base_identity(model),
        training=training,
        metrics=metrics or {},
        lineage=lineage or Lineage(method="train"),
    )
    return write_adapter(path, config, state, card, overwrite=overwrite)  # type: ignore[arg-type]


def write_adapter(
    path: str | os.PathLike[str],
    config: LoraConfig,
    state: dict[str, torch.Tensor],
    card: AdapterCard,
    *,
    overwrite: bool = False,
) -> Path:
    """Write an adapter directory atomically from its PEFT config, PEFT-keyed state dict and card."""
    target = Path(path)
    with atomic_directory(target, overwrite=overwrite) as staging:
        config.save_pretrained(str(staging))
        tensors = {key: value.detach().to("cpu").contiguous() for key, value in state.items()}
        save_file(tensors, str(staging / WEIGHTS_FILE), metadata={"format": "pt"})
        (staging / SIDECAR_FILE).write_text(card.model_dump_json(indent=2))
    return target


def read_adapter(
    path: str | os.PathLike[str],
) -> tuple[LoraConfig, dict[str, torch.Tensor], AdapterCard | None]:
    """Read and validate an adapter directory: its config, its tensors, and its card (None for plain PEFT)."""
    folder = Path(path)
    if not folder.exists():
        raise AdapterError(f"{folder}: no such adapter directory")
    if not folder.is_dir():
        raise AdapterError(f"{folder}: an adapter is a directory holding {CONFIG_FILE} and {WEIGHTS_FILE}")
    config_path = folder / CONFIG_FILE
    if not config_path.is_file():
        raise AdapterError(f"{folder}: no {CONFIG_FILE}; is this an adapter directory?")
    weights_path = folder / WEIGHTS_FILE
    if not weights_path.is_file():
        if (folder / "adapter_model.bin").is_file():
            raise AdapterError(f"{folder}: holds pickled adapter_model.bin; only safetensors are loaded")
        raise AdapterError(f"{folder}: no {WEIGHTS_FILE}")
    try:
        config = LoraConfig.from_pretrained(str(folder))
    except (ValueError, TypeError, json.JSONDecodeError) as err:
        raise CorruptFileError(f"{config_path}: not a valid LoRA adapter config ({err})") from err
    try:
        # Read into memory rather than memory-map: tensors that own their memory survive the file
        # being rewritten or truncated later (a mapped one would crash the process with SIGBUS).
        state = load(weights_path.read_bytes())
    except (SafetensorError, OSError, ValueError) as err:
        raise CorruptFileError(
            f"{weights_path}: unreadable safetensors file, truncated or corrupted ({err})"
        ) from err
    sidecar = folder / SIDECAR_FILE
    return config, state, read_card(sidecar) if sidecar.is_file() else None


def read_card(sidecar: Path) -> AdapterCard:
    """An adapter's `lorafleet.json`; `CorruptFileError` naming the file when it is not a valid card."""
    try:
        return AdapterCard.model_validate_json(sidecar.read_text())
    except ValidationError as err:
        raise CorruptFileError(
            f"{sidecar}: not a valid lorafleet sidecar ({err.errors()[0]['msg']})"
        ) from err


def add_card_metrics(path: str | os.PathLike[str], metrics: dict[str, Any]) -> AdapterCard:
    """Merge `metrics` into a saved adapter's card, rewritten whole and atomically: for facts the training
    loop does not hold (the scrubbing report of the rows it read). Returns the new card."""
    sidecar = Path(path) / SIDECAR_FILE
    if not sidecar.is_file():
        raise AdapterError(f"{path}: no {SIDECAR_FILE} to record metrics in; is this a lorafleet adapter?")
    card = read_card(sidecar)
    card.metrics = {**card.metrics, **metrics}
    with atomic_file(sidecar) as written:
        written.write_text(card.model_dump_json(indent=2))
    return card


def load_adapter(
    model: nn.Module,
    path: str | os.PathLike[str],
    *,
    adapter_name: str = ADAPTER_NAME,
    quantization: Quantization = None,
    is_trainable: bool = False,
) -> PeftModel:
    """Load the adapter at `path` onto `model` (a plain base, or a PEFT model gaining another adapter).

    Fails with `BaseModelMismatchError` naming the first mismatching module when the adapter was
    saved for another base, and with `CorruptFileError` for truncated or corrupted files.
    """
    _, state, card = read_adapter(path)
    identity = base_identity(model)
    if card is not None:
        check_same_base(card.base_model, identity, adapter=str(path))
    check_shapes(model, state, adapter=str(path))
    if quantization is not None:
        quantize_nf4(model, compute_dtype=next(model.parameters()).dtype)
    if isinstance(model, PeftModel):
        model.load_adapter(str(path), adapter_name=adapter_name, is_trainable=is_trainable)
        return model
    peft_model = PeftModel.from_pretrained(
        model, str(path), adapter_name=adapter_name, is_trainable=is_trainable
    )
    remember_identity(peft_model, identity)
    return peft_model


def check_shapes(model: nn.Module, state: dict[str, torch.Tensor], *, adapter: str) -> None:
    """Raise `BaseModelMismatchError` naming the first module whose shape does not fit the adapter."""
    base = model.get_base_model() if isinstance(model, PeftModel) else model
    modules = {name.replace(".base_layer", ""): module for name, module in base.named_modules()}
    for key, tensor in sorted(state.items()):  # sorted: report the same module whatever the file order
        if ".lora_A." not in key and ".lora_B." not in key:
            continue
        module_name = key.removeprefix("base_model.model.").split(".lora_")[0]
        module = modules.get(module_name)
        if module is None:
            raise BaseModelMismatchError(
                f"{adapter}: adapts module {module_name}, which this base model lacks"
            )
        weight = getattr(module, "base_layer", module)
        in_features = getattr(weight, "in_features", None)
        out_features = getattr(weight, "out_features", None)
        if in_features is None:  # transformers Conv1D (GPT-2) stores (in, out)
            in_features, out_features = weight.weight.shape
        expected = in_features if ".lora_A." in key else out_features
        actual = tensor.shape[1] if ".lora_A." in key else tensor.shape[0]
        if expected != actual:
            raise BaseModelMismatchError(
                f"{adapter}: module {module_name} has {'in' if '.lora_A.' in key else 'out'} features "
                f"{expected} in this base, the adapter expects {actual}"
            )


def adapters_dir() -> Path:
    """Where named adapters live: `$LORAFLEET_HOME/adapters/`."""
    return lorafleet_home() / "adapters"


def adapter_path(ref: str | os.PathLike[str]) -> Path:
    """The directory of an adapter given by name (in `$LORAFLEET_HOME/adapters/`) or by path.

    A plain name means the named adapter when one exists, else a directory of that name here.
    """
    text = str(ref)
    if os.sep in text or "/" in text:
        return Path(text).expanduser()
    if not Path(text).exists():
        return adapters_dir() / validate_name(text, what="adapter name")
    named = adapters_dir() / text
    return named if named.is_dir() else Path(text)
