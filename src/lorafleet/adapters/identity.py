"""Which base model an adapter belongs to: a fingerprint of the base's config and weights, module by module.

Each module with parameters gets a digest of its parameter names, shapes and 1,024 evenly spaced values
rounded to bf16, so the same base loaded in fp32 or bf16 gets the same digests, and any fine-tune of it
gets others. The fingerprint hashes the shape-defining config keys and every digest. An adapter
records the digests, so loading it onto another base names the first module that differs.
"""

from __future__ import annotations

import hashlib
import json
from weakref import WeakKeyDictionary

import torch
from peft import PeftModel
from pydantic import BaseModel, Field
from torch import nn

from lorafleet.errors import BaseModelMismatchError

SAMPLES_PER_TENSOR = 1024
_CONFIG_KEYS = (
    "model_type",
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "head_dim",
    "n_embd",
    "n_layer",
    "n_head",
    "n_inner",
    "tie_word_embeddings",
)
# Identities taken before a model was quantized or wrapped, which its weights can no longer tell.
_REMEMBERED: WeakKeyDictionary[nn.Module, BaseIdentity] = WeakKeyDictionary()
# Parts of a PEFT-wrapped model that are the adapter, not the base.
_ADAPTER_PARTS = ("lora_", "modules_to_save", "lora_magnitude_vector")


class BaseIdentity(BaseModel):
    """The identity of a base model as recorded with an adapter."""

    id: str = Field(description="The base model's name or path, for people; not used for matching.")
    fingerprint: str = Field(description="sha256 over the shape-defining config and every module digest.")
    modules: dict[str, str] = Field(description="Module name → digest of its parameters, in model order.")


def base_identity(model: nn.Module) -> BaseIdentity:
    """The identity of `model`'s base (a plain model, or a PEFT model whose adapter parts are skipped).

    A model prepared by `attach` or `load_adapter` carries the identity computed before it was quantized.
    """
    if model in _REMEMBERED:
        return _REMEMBERED[model]
    base = model.get_base_model() if isinstance(model, PeftModel) else model
    config = getattr(base, "config", None)
    modules = _module_digests(base)
    shape = {key: getattr(config, key) for key in _CONFIG_KEYS if config is not None and hasattr(config, key)}
    digest = hashlib.sha256(json.dumps(shape, sort_keys=True, default=str).encode())
    for name, module_digest in modules.items():
        digest.update(f"{name}={module_digest};".encode())
    model_id = getattr(config, "name_or_path", "") or type(base).__name__
    return BaseIdentity(id=str(model_id), fingerprint=digest.hexdigest(), modules=modules)


def remember_identity(model: nn.Module, identity: BaseIdentity) -> None:
    """Record `identity` as `model`'s base identity (for a model whose base was quantized after measuring)."""
    _REMEMBERED[model] = identity


def check_same_base(expected: BaseIdentity, actual: BaseIdentity, *, adapter: str) -> None:
    """Raise `BaseModelMismatchError` naming the first module where `actual` differs from `expected`."""
    if expected.fingerprint == actual.fingerprint:
        return
    for name, module_digest in expected.modules.items():
        if name not in actual.modules:
            problem = f"module {name} is missing from this base"
        elif actual.modules[name] != module_digest:
            problem = f"module {name} differs (other weights or shape)"
        else:
            continue
        raise BaseModelMismatchError(
            f"{adapter} was trained on base {expected.id} (fingerprint {expected.fingerprint[:12]}), not on "
            f"{actual.id} (fingerprint {actual.fingerprint[:12]}): {problem}"
        )
    raise BaseModelMismatchError(
        f"{adapter} was trained on base {expected.id}, not {actual.id}: their configs differ "
        f"(fingerprint {expected.fingerprint[:12]} vs {actual.fingerprint[:12]})"
    )


def _module_digests(model: nn.Module) -> dict[str, str]:
    digests: dict[str, str] = {}
    for name, module in model.named_modules():
        if any(part in name for part in _ADAPTER_PARTS):
            continue
        params = list(module.named_parameters(recurse=False))
        if not params:
            continue
        digest = hashlib.sha256()
        for param_name, param in params:
            digest.update(f"{param_name}:{tuple(param.shape)}:".encode())
            digest.update(_sample(param))
        clean = name.replace(".base_layer", "").replace(".original_module", "")
        digests[clean] = digest.hexdigest()[:16]
    return digests


def _sample(param: torch.Tensor) -> bytes:
    flat = param.detach().reshape(-1)
    count = min(SAMPLES_PER_TENSOR, flat.numel())
    step = (flat.numel() - 1) // max(count - 1, 1)  # integer steps: float linspace overshoots large tensors
    index = torch.arange(count, device=flat.device) * step
    values = flat[index].float().to(torch.bfloat16).view(torch.int16)
    return values.cpu().numpy().tobytes()
