"""The API's sampling ranges lie within `SamplingSettings`': every value the API accepts can be served."""

from __future__ import annotations

import pytest

from lorafleet.api.openai_shapes import (
    MAX_REPETITION_PENALTY,
    MAX_STOP,
    MAX_TOKENS,
    MAX_TOP_K,
    MIN_REPETITION_PENALTY,
    CompletionRequest,
)

EXTREMES: list[dict[str, object]] = [
    {"temperature": 0.0, "top_p": 1e-9, "top_k": 0, "repetition_penalty": MIN_REPETITION_PENALTY},
    {"temperature": 2.0, "top_p": 1.0, "top_k": MAX_TOP_K, "repetition_penalty": MAX_REPETITION_PENALTY},
    {"temperature": 1e-45, "seed": -(2**63), "max_tokens": 1, "presence_penalty": 0, "frequency_penalty": 0},
    {"seed": 2**64 - 1, "max_tokens": MAX_TOKENS, "stop": ["x" * 256] * MAX_STOP},
]


@pytest.mark.parametrize("fields", EXTREMES)
def test_the_apis_extreme_values_are_valid_sampling_settings(fields: dict[str, object]) -> None:
    body = CompletionRequest.model_validate({"model": "m", "prompt": "hi", **fields})

    settings = body.sampling(max_tokens=body.max_tokens or 16, chat=False)

    for name, value in fields.items():
        if hasattr(settings, name):
            assert getattr(settings, name) == value, name
