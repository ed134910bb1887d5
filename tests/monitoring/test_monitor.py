"""An alias's monitor: one drift verdict per full window of prompts (flagging a shifted window, rarely a
same-distribution one), quality from feedback, errors and latency over the last window."""

from __future__ import annotations

import numpy as np
import pytest

from lorafleet.errors import DataError
from lorafleet.monitoring.monitor import AliasMonitor

WIDTH = 6


def sample(n: int, seed: int, shift: float = 0.0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, WIDTH)) + shift


def test_a_verdict_comes_once_per_full_window_and_a_shift_is_flagged() -> None:
    monitor = AliasMonitor(sample(200, 0), window=40, permutations=200)
    verdicts = []
    for phase, shift in enumerate((0.0, 0.0, 1.0)):
        for i, row in enumerate(sample(40, 10 + phase, shift)):
            verdict = monitor.record(latency_ms=10.0, embedding=row)
            assert (verdict is not None) == (i == 39)  # only the 40th prompt completes a window
            if verdict is not None:
                verdicts.append(verdict)

    assert [v.n_recent for v in verdicts] == [40, 40, 40]
    assert verdicts[-1].drifted and verdicts[-1].mmd.p_value < 0.05
    status = monitor.status()
    assert status.windows_tested == 3 and status.drift is verdicts[-1]
    assert status.windows_drifted == sum(v.drifted for v in verdicts)


def test_same_distribution_windows_are_rarely_flagged() -> None:
    monitor = AliasMonitor(sample(300, 0), window=30, permutations=200)
    for row in sample(30 * 60, 1):
        monitor.record(latency_ms=1.0, embedding=row)

    status = monitor.status()
    assert status.windows_tested == 60
    assert status.windows_drifted / 60 <= 0.12  # level 0.05; binomial slack for 60 windows


def test_errors_latency_and_quality_over_the_last_window() -> None:
    monitor = AliasMonitor(sample(10, 0), window=10, quality_window=4)
    for latency in range(1, 21):  # 20 requests of 1..20 ms, every 5th failed
        monitor.record(latency_ms=float(latency), error=latency % 5 == 0, quality=1.0 if latency % 2 else 0.0)
    monitor.feedback(1.0)

    status = monitor.status()
    assert status.requests == 20 and status.error_rate == pytest.approx(2 / 10)
    kept = [float(x) for x in range(1, 21) if x % 5][-10:]  # the last 10 that succeeded
    assert status.latency_p50_ms == pytest.approx(np.percentile(kept, 50))
    assert status.latency_p95_ms == pytest.approx(np.percentile(kept, 95))
    assert status.quality_count == 4 and status.quality_mean == pytest.approx((0 + 1 + 0 + 1) / 4)
    assert status.windows_tested == 0 and status.drift is None  # no embeddings recorded


def test_bad_input_is_refused_naming_it() -> None:
    monitor = AliasMonitor(sample(10, 0), window=5)
    with pytest.raises(DataError) as err:
        monitor.record(latency_ms=1.0, embedding=np.zeros(WIDTH + 1))
    assert err.value.field == "embedding"
    with pytest.raises(DataError) as err:
        monitor.record(latency_ms=float("nan"))
    assert err.value.field == "latency_ms"
    with pytest.raises(DataError) as err:
        AliasMonitor(np.zeros((1, WIDTH)))
    assert err.value.field == "reference"
