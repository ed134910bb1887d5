"""The figures an export is judged on, against their definitions (scipy's entropy for the KL)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from scipy.special import softmax
from scipy.stats import entropy

from lorafleet.export.checks import Reference, agreement, check_prompts, kl_divergence


class _Logits:
    """A runtime that answers with fixed logits."""

    def __init__(self, logits: np.ndarray) -> None:
        self._logits = logits

    def logits(self, ids: Sequence[int]) -> np.ndarray:
        return self._logits[: len(ids)]


def test_kl_divergence_is_scipys_relative_entropy() -> None:
    rng = np.random.default_rng(0)
    ours, theirs = (rng.standard_normal((5, 50)).astype(np.float32) * 4 for _ in range(2))
    expected = [entropy(softmax(ours[t]), softmax(theirs[t])) for t in range(5)]
    np.testing.assert_allclose(kl_divergence(ours, theirs), expected, rtol=1e-6)
    shifted = ours + 3.0  # the same softmax
    np.testing.assert_allclose(kl_divergence(ours, shifted), 0.0, atol=1e-12)


def test_agreement_averages_the_kl_over_the_answer_positions_only() -> None:
    rng = np.random.default_rng(1)
    torch_logits = rng.standard_normal((6, 20)).astype(np.float32)
    export_logits = torch_logits + rng.standard_normal((6, 20)).astype(np.float32)
    reference = Reference(ids=[1, 2, 3, 4, 5, 6], start=3, logits=torch_logits)  # answers at 3..5
    figures = agreement(_Logits(export_logits), [reference])
    predicted = slice(2, 5)  # the logits at t predict t + 1
    assert figures.answer_tokens == 3
    expected = kl_divergence(torch_logits[predicted], export_logits[predicted]).mean()
    assert np.isclose(figures.mean_kl, expected)
    assert np.isclose(figures.max_abs_logit_diff, np.abs(export_logits - torch_logits).max())
    assert agreement(_Logits(torch_logits), [reference]).mean_kl == 0.0


def test_check_prompts_say_when_the_training_file_is_not_here(tmp_path: Path) -> None:
    from lorafleet.evaluation.probe import general_prompts
    from lorafleet.models import tiny_tokenizer

    said: list[str] = []
    missing = str(tmp_path / "gone.jsonl")
    prompts = check_prompts({"data": {"path": missing}}, tiny_tokenizer(), rows=3, say=said.append)
    assert len(prompts) == min(3, len(general_prompts())) and all(prompts)
    assert len(said) == 1 and missing in said[0] and "general probe" in said[0]
    check_prompts(None, tiny_tokenizer(), rows=3, say=said.append)  # no file named: nothing to say
    assert len(said) == 1
