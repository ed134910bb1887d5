"""Adapters as data: settings, attaching through PEFT, PEFT-format storage, merging, combining, inspecting."""

from lorafleet.adapters.attach import ParameterCount, attach, count_parameters, linear_module_names
from lorafleet.adapters.identity import BaseIdentity, base_identity
from lorafleet.adapters.settings import LoraSettings
from lorafleet.adapters.storage import AdapterCard, Lineage, load_adapter, read_adapter, save_adapter

__all__ = [
    "AdapterCard",
    "BaseIdentity",
    "Lineage",
    "LoraSettings",
    "ParameterCount",
    "attach",
    "base_identity",
    "count_parameters",
    "linear_module_names",
    "load_adapter",
    "read_adapter",
    "save_adapter",
]
