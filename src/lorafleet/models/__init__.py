"""Base models: load one (HF directory, hub id, GGUF, the bundled default); tiny random ones for tests."""

from lorafleet.models.bundled import DEFAULT_MODEL_ID, DEFAULT_MODEL_NAME, list_local_models, pull_default
from lorafleet.models.devices import choose_device, choose_dtype
from lorafleet.models.loading import ensure_pad_token, eos_token_ids, load_base, load_skeleton, load_tokenizer
from lorafleet.models.tiny import tiny_model, tiny_tokenizer

__all__ = [
    "DEFAULT_MODEL_ID",
    "DEFAULT_MODEL_NAME",
    "choose_device",
    "choose_dtype",
    "ensure_pad_token",
    "eos_token_ids",
    "list_local_models",
    "load_base",
    "load_skeleton",
    "load_tokenizer",
    "pull_default",
    "tiny_model",
    "tiny_tokenizer",
]
