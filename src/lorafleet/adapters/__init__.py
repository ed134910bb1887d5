"""Adapters as data: settings, attaching through PEFT, PEFT-format storage, merging, combining, inspecting."""

from lorafleet.adapters.attach import ParameterCount, attach, count_parameters, linear_module_names
from lorafleet.adapters.combine import combine_adapters
from lorafleet.adapters.identity import BaseIdentity, base_identity
from lorafleet.adapters.inspection import AdapterInfo, inspect_adapter
from lorafleet.adapters.merge import merge, save_merged, unmerge
from lorafleet.adapters.settings import LoraSettings
from lorafleet.adapters.storage import (
    AdapterCard,
    Lineage,
    load_adapter,
    read_adapter,
    save_adapter,
    write_adapter,
)

__all__ = [
    "AdapterCard",
    "AdapterInfo",
    "BaseIdentity",
    "Lineage",
    "LoraSettings",
    "ParameterCount",
    "attach",
    "base_identity",
    "combine_adapters",
    "count_parameters",
    "inspect_adapter",
    "linear_module_names",
    "load_adapter",
    "merge",
    "read_adapter",
    "save_adapter",
    "save_merged",
    "unmerge",
    "write_adapter",
]
