"""Inference: text generation with a base model and optional adapter."""

from lorafleet.serving.generate import SamplingSettings, stream_generate

__all__ = ["SamplingSettings", "stream_generate"]
