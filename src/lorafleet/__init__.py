"""lorafleet: fine-tune, version, serve and keep improving fleets of LoRA adapters on one shared base LLM."""

__version__ = "0.1.0"
