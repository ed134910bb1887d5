"""Inference: many adapters on one base model — multi-LoRA layer, adapter cache, engine, router.

Names are imported on first use, so `lorafleet.serving.router` and `lorafleet.serving.queue` (pure
Python) can be used by the API layer without importing torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "SamplingSettings": "generate",
    "stream_generate": "generate",
    "AdapterCache": "cache",
    "DirectorySource": "cache",
    "LoadedAdapter": "cache",
    "Engine": "engine",
    "Request": "requests",
    "RequestHandle": "requests",
    "Completion": "requests",
    "MultiLoraLinear": "multilora",
    "wrap_linears": "multilora",
    "FairQueue": "queue",
    "QueueFullError": "queue",
    "Router": "router",
    "Route": "router",
    "AdapterHandle": "router",
    "RouterSettings": "router",
    "StaticCatalog": "router",
    "DirectoryCatalog": "router",
    "parse_reference": "router",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'lorafleet.serving' has no attribute {name!r}")
    return getattr(importlib.import_module(f"lorafleet.serving.{_EXPORTS[name]}"), name)
