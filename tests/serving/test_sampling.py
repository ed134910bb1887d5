"""Sampling math that stays finite for every valid setting, and per-row failures instead of a raised batch."""

from __future__ import annotations

import pytest
import torch

from lorafleet.serving.generate import SamplingSettings
from lorafleet.serving.sampling import (
    SamplingError,
    TokenChooser,
    apply_repetition_penalty,
    choose_tokens,
    scale_by_temperature,
)

NAN, INF = float("nan"), float("inf")


def logits(rows: int = 1, vocab: int = 50, seed: int = 0) -> torch.Tensor:
    return 5 * torch.randn(rows, vocab, generator=torch.Generator().manual_seed(seed))  # (B, V)


@pytest.mark.parametrize("temperature", [0.05, 0.7, 1.0, 2.0, 10.0])
def test_temperature_gives_softmax_of_logits_over_t(temperature: float) -> None:
    z = logits()[0]
    torch.testing.assert_close(
        scale_by_temperature(z, temperature).softmax(-1), (z / temperature).softmax(-1)
    )


@pytest.mark.parametrize("temperature", [1e-45, 1e-300, 5e-324])
def test_a_tiny_temperature_is_greedy_not_nan(temperature: float) -> None:
    z = logits()[0]

    probs = scale_by_temperature(z, temperature).softmax(-1)

    expected = torch.zeros_like(z)
    expected[z.argmax()] = 1.0
    torch.testing.assert_close(probs, expected)
    chooser = TokenChooser(SamplingSettings(temperature=temperature, seed=0), [1, 2])
    assert chooser.choose(z) == int(z.argmax())


@pytest.mark.parametrize("penalty", [1e-300, 0.01, 10.0, 1e300])
def test_no_repetition_penalty_makes_a_logit_infinite(penalty: float) -> None:
    z = torch.tensor([3e38, -3e38, 2.0, -2.0, 0.5])
    seen = torch.tensor([0, 1, 2, 3])

    penalised = apply_repetition_penalty(z, seen, penalty)

    assert bool(torch.isfinite(penalised).all()), penalised
    assert penalised[4] == 0.5  # tokens not seen are left alone


def test_non_finite_settings_are_refused_when_the_chooser_is_made() -> None:
    settings = SamplingSettings.model_construct(**{**SamplingSettings().model_dump(), "temperature": NAN})

    with pytest.raises(SamplingError, match="temperature must be a finite number"):
        TokenChooser(settings, [1])


def test_non_finite_probabilities_are_a_sampling_error_not_a_torch_error() -> None:
    chooser = TokenChooser(SamplingSettings(temperature=1.0, seed=0), [1])
    chooser.settings = SamplingSettings.model_construct(
        **{**chooser.settings.model_dump(), "temperature": NAN}
    )

    with pytest.raises(SamplingError, match="probabilities are not finite"):
        chooser.choose(logits()[0])


def test_choose_tokens_fails_only_the_rows_it_cannot_serve() -> None:
    z = logits(rows=6)  # (6, V)
    z[1, 7] = NAN
    z[2, 3] = INF
    z[3] = -INF  # no token is possible
    z[4, :10] = -INF  # some tokens banned: still fine
    greedy = SamplingSettings(temperature=0.0)
    choosers = [TokenChooser(greedy, [1]) for _ in range(5)]
    broken = TokenChooser(SamplingSettings(temperature=1.0, seed=0), [1])
    broken.choose = lambda _logits: 1 // 0  # type: ignore[method-assign]

    choices = choose_tokens(z, [*choosers, broken])

    assert [choices[0], choices[4]] == [int(z[0].argmax()), int(z[4].argmax())]
    assert all(isinstance(c, SamplingError) and "non-finite logits" in str(c) for c in choices[1:4])
    assert isinstance(choices[5], SamplingError) and "ZeroDivisionError" in str(choices[5])
