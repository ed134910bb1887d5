"""The drift monitor's tests against direct re-computations, their level and power, and input checks."""

from __future__ import annotations

import itertools
import math
import subprocess
import sys
from collections.abc import Callable

import numpy as np
import pytest

from lorafleet.errors import ConfigError, DataError
from lorafleet.monitoring.drift import classifier_auc_test, detect_drift, mmd2, mmd_test


def samples(seed: int, n: int = 30, m: int = 30, d: int = 8, shift: float = 0.0) -> tuple[np.ndarray, ...]:
    """Two standard normal samples (n × d), (m × d); `shift` added to the first 3 dims of the second."""
    rng = np.random.default_rng(seed)
    x, y = rng.normal(size=(n, d)), rng.normal(size=(m, d))
    y[:, :3] += shift
    return x, y


def naive_median_bandwidth(x: np.ndarray, y: np.ndarray) -> float:
    z = np.concatenate([x, y])
    return float(np.median([np.linalg.norm(a - b) for a, b in itertools.combinations(z, 2)]))


def naive_mmd2(x: np.ndarray, y: np.ndarray, sigma: float) -> float:
    """The unbiased estimator written out as double loops over the definition."""

    def k(a: np.ndarray, b: np.ndarray) -> float:
        return math.exp(-float(np.sum((a - b) ** 2)) / (2 * sigma**2))

    n, m = len(x), len(y)
    xx = sum(k(x[i], x[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    yy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    xy = sum(k(x[i], y[j]) for i in range(n) for j in range(m)) / (n * m)
    return xx + yy - 2 * xy


@pytest.mark.parametrize(("shift", "seed"), [(0.0, 1), (0.7, 2), (3.0, 3)])
def test_mmd2_matches_the_double_loop_definition(shift: float, seed: int) -> None:
    x, y = samples(seed, n=9, m=13, d=5, shift=shift)
    x += 40.0  # large norms, small differences: the centred distances keep their precision
    y += 40.0
    sigma = naive_median_bandwidth(x, y)
    assert mmd2(x, y) == pytest.approx(naive_mmd2(x, y, sigma), abs=1e-10)
    assert mmd2(x, y, bandwidth=0.5) == pytest.approx(naive_mmd2(x, y, 0.5), abs=1e-10)
    assert mmd_test(x, y, permutations=1).bandwidth == pytest.approx(sigma, rel=1e-12)


def test_mmd2_is_symmetric_and_grows_with_the_shift() -> None:
    x, y = samples(4, n=20, m=25)
    assert mmd2(x, y) == pytest.approx(mmd2(y, x), abs=1e-12)
    values = [mmd2(*samples(4, n=20, m=25, shift=s), bandwidth=3.0) for s in (0.0, 0.5, 1.0, 2.0)]
    assert values == sorted(values)


def test_mmd2_is_unbiased_under_no_drift() -> None:
    values = np.array([mmd2(*samples(seed, n=15, m=15, d=4)) for seed in range(200)])
    standard_error = values.std(ddof=1) / math.sqrt(len(values))
    assert abs(values.mean()) < 3 * standard_error
    assert (values < 0).any()  # unbiased, not clipped: the biased V-statistic would be > 0 every time


def test_bandwidth_falls_back_when_most_rows_coincide() -> None:
    x = np.zeros((6, 3))
    y = np.zeros((6, 3))
    y[0] = [3.0, 4.0, 0.0]  # one distinct row: 11 of 66 pairs at distance 5, the rest 0
    assert mmd_test(x, y, permutations=1).bandwidth == pytest.approx(5.0)
    same = mmd_test(np.ones((4, 2)), np.ones((3, 2)), permutations=10)
    assert (same.bandwidth, same.statistic, same.p_value) == (1.0, 0.0, 1.0)


@pytest.mark.parametrize(("shift", "seed"), [(0.0, 11), (0.6, 12)])
def test_permutation_p_value_matches_a_naive_loop(shift: float, seed: int) -> None:
    x, y = samples(seed, n=9, m=13, d=4, shift=shift)
    permutations = 300  # crosses the 128-permutation chunks twice
    result = mmd_test(x, y, permutations=permutations, seed=7)

    z = np.concatenate([x, y])
    rng = np.random.default_rng(7)
    observed = mmd2(x, y, bandwidth=result.bandwidth)
    exceed = 0
    for _ in range(permutations):
        order = rng.permutation(len(z))
        exceed += mmd2(z[order[:9]], z[order[9:]], bandwidth=result.bandwidth) >= observed
    assert result.statistic == pytest.approx(observed, abs=1e-12)
    assert result.p_value == (1 + exceed) / (1 + permutations)
    assert result.permutations == permutations
    assert 0 < exceed < permutations or shift > 0  # the test means something: not all or none exceed


def test_p_value_is_seeded_and_bounded() -> None:
    x, y = samples(20, shift=2.0)
    first, again = mmd_test(x, y, permutations=99, seed=3), mmd_test(x, y, permutations=99, seed=3)
    assert first == again
    assert first.p_value == pytest.approx(1 / 100)  # nothing beats a 2-std shift: the smallest p-value
    x, y = samples(21)
    p_values = {mmd_test(x, y, permutations=99, seed=s).p_value for s in range(3)}
    assert len(p_values) > 1 and all(0 < p <= 1 for p in p_values)


def test_mmd_level_under_no_drift() -> None:
    rejected = [mmd_test(*samples(1000 + s), permutations=200, seed=s).p_value < 0.05 for s in range(200)]
    assert np.mean(rejected) <= 0.09  # binomial(200, 0.05): P(rate > 0.09) ≈ 0.7 %


def test_mmd_power_under_a_one_std_shift() -> None:
    rejected = [
        mmd_test(*samples(5000 + s, shift=1.0), permutations=200, seed=s).p_value < 0.05 for s in range(100)
    ]
    assert np.mean(rejected) >= 0.9


def test_classifier_auc_is_a_half_and_holds_its_level_under_no_drift() -> None:
    results = [classifier_auc_test(*samples(2000 + s), seed=s) for s in range(200)]
    aucs = np.array([r.auc for r in results])
    assert abs(aucs.mean() - 0.5) < 0.02
    assert np.mean([r.p_value < 0.05 for r in results]) <= 0.09
    assert all(0 <= r.auc <= 1 and 0 <= r.p_value <= 1 and r.n_test == 30 for r in results)


def test_classifier_auc_is_high_under_a_shift() -> None:
    results = [classifier_auc_test(*samples(6000 + s, n=60, m=60, shift=1.0), seed=s) for s in range(50)]
    assert np.mean([r.auc for r in results]) > 0.8
    assert np.mean([r.p_value < 0.05 for r in results]) >= 0.9


def test_classifier_separates_a_far_sample_perfectly() -> None:
    x, y = samples(30, n=20, m=31, shift=-50.0)  # direction does not matter: the model learns it
    result = classifier_auc_test(x, y, test_fraction=0.4, seed=1)
    assert result.auc == 1.0
    assert result.p_value < 1e-4
    assert result.n_test == 8 + 12  # round(0.4 · 20) + round(0.4 · 31)


def test_detect_drift_reports_both_tests() -> None:
    same = detect_drift(*samples(40, n=40, m=40), permutations=200)
    assert not same.drifted and same.mmd.p_value >= 0.05
    assert (same.n_reference, same.n_recent, same.alpha, same.mmd.permutations) == (40, 40, 0.05, 200)
    shifted = detect_drift(*samples(41, n=40, m=25, shift=1.0), alpha=0.01, permutations=200)
    assert shifted.drifted and shifted.mmd.p_value < 0.01
    assert shifted.classifier.auc > 0.7
    assert (shifted.n_reference, shifted.n_recent) == (40, 25)


def test_bad_samples_name_the_argument() -> None:
    x, y = samples(50, n=5, m=5, d=3)
    with pytest.raises(DataError, match=r"same embedding width; got x 3 and y 4") as caught:
        mmd2(x, np.ones((5, 4)))
    assert caught.value.field == "y"
    bad = x.copy()
    bad[3, 1] = np.nan
    with pytest.raises(DataError, match=r"x row 3 holds a NaN or infinite value") as caught:
        mmd_test(bad, y)
    assert caught.value.field == "x"
    with pytest.raises(DataError, match=r"y has 1 rows; .* at least 2") as caught:
        classifier_auc_test(x, y[:1])
    assert caught.value.field == "y"
    with pytest.raises(DataError, match=r"x must be a 2-D array .* got shape \(5,\)"):
        mmd2(x[:, 0], y)
    with pytest.raises(DataError, match=r"y is not a numeric array"):
        mmd2(x, [["a", "b", "c"], ["d", "e", "f"]])
    with pytest.raises(DataError, match=r"recent row 0 holds a NaN or infinite value") as caught:
        detect_drift(x, np.full((5, 3), np.inf))
    assert caught.value.field == "recent"
    with pytest.raises(DataError, match=r"reference and recent must have the same embedding width"):
        detect_drift(x, np.ones((5, 2)))


@pytest.mark.parametrize(
    ("call", "field"),
    [
        (lambda x, y: mmd_test(x, y, permutations=0), "permutations"),
        (lambda x, y: mmd_test(x, y, permutations=True), "permutations"),
        (lambda x, y: mmd2(x, y, bandwidth=0.0), "bandwidth"),
        (lambda x, y: mmd2(x, y, bandwidth=math.nan), "bandwidth"),
        (lambda x, y: classifier_auc_test(x, y, test_fraction=1.0), "test_fraction"),
        (lambda x, y: detect_drift(x, y, alpha=0.0), "alpha"),
        (lambda x, y: detect_drift(x, y, alpha=math.nan), "alpha"),
    ],
)
def test_bad_settings_name_the_field(call: Callable[[np.ndarray, np.ndarray], object], field: str) -> None:
    with pytest.raises(ConfigError, match=field) as caught:
        call(*samples(51, n=6, m=6, d=2))
    assert caught.value.field == field


def test_the_monitors_import_no_torch_and_defer_scikit_learn() -> None:
    code = (
        "import sys, lorafleet.monitoring\n"
        "loaded = [m for m in ('torch', 'sklearn', 'scipy') if m in sys.modules]\n"
        "assert not loaded, loaded"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
