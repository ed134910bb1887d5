"""Input drift of a served alias: two-sample tests between the version's training prompts and recent prompts.

Each prompt is one row: the base model's mean-pooled last hidden state (an embedding of width d). The
*reference* sample X (n × d) comes from the version's training rows, the *recent* sample Y (m × d) from
the prompts it served lately. Two tests ask whether X and Y come from the same distribution.

**MMD** (Gretton et al. 2012) with the Gaussian RBF kernel k(a, b) = exp(−‖a − b‖² / (2σ²)). The
unbiased estimate of the squared maximum mean discrepancy is

    MMD²ᵤ = 1/(n(n−1)) Σᵢ≠ⱼ k(xᵢ, xⱼ) + 1/(m(m−1)) Σᵢ≠ⱼ k(yᵢ, yⱼ) − 2/(nm) Σᵢ,ⱼ k(xᵢ, yⱼ)

(about 0 when X and Y share a distribution, and it can then be slightly negative). The bandwidth σ is the
*median heuristic*: the median Euclidean distance ‖zᵢ − zⱼ‖ over all pairs i < j of the pooled sample
Z = X ∪ Y (when that median is 0, half the pairs or more coinciding, the median of the non-zero distances;
1 if every row is the same), so the kernel neither saturates at 0 nor at 1 on the data at hand.

The p-value is a permutation test: with the pooled kernel matrix K = k(Z, Z) computed once, permutation
k (k = 1 … P) is the k-th `rng.permutation(n + m)` of `numpy.random.default_rng(seed)`, whose first n
indices play X and the rest Y, and

    p-value = (1 + #{k : MMD²ᵤ(permutation k) ≥ MMD²ᵤ(X, Y)}) / (1 + P)

which is a valid level-α test for any P (the observed split counts as one of the permutations). With
a ∈ {0, 1}ⁿ⁺ᵐ the indicator of the X half, every permuted statistic needs only aᵀKa and aᵀK1:

    Σ_XX = aᵀKa,   Σ_XY = aᵀK1 − aᵀKa,   Σ_YY = 1ᵀK1 − 2aᵀK1 + aᵀKa   (diagonal terms subtracted after),

so P permutations cost one (P × N) @ (N × N) product, N = n + m.

**Classifier AUC** (a classifier two-sample test, Lopez-Paz & Oquab 2017): a stratified random split holds
out a fraction of each sample; standardised logistic regression learns on the rest to tell recent rows
(label 1) from reference rows (label 0) and scores the held-out rows with its decision function. With
U the Mann–Whitney count of held-out (recent, reference) pairs whose recent score is higher (ties ½),

    AUC = U / (m_test · n_test),   p-value = P(U' ≥ U) under H0, one-sided (scipy's `mannwhitneyu`)

(exact for small samples without ties, else the tie-corrected normal approximation). The model never saw
the held-out rows, so when X and Y share a distribution their held-out scores are exchangeable and U has
exactly the Mann–Whitney null distribution: the p-value is valid. Pooling K cross-validation folds would
score every row but is not: the folds' models share training rows, so their U's are positively correlated
and a normal approximation that treats them as independent rejected about 12 % of simulated null pairs
(Gaussian, 30 × 8, 5 folds) at α = 0.05; this held-out split rejected 5 %.
Only an AUC above ½ is evidence of drift, hence one-sided.

The drift verdict is the MMD test's (p < α); the AUC is reported beside it, as an effect size a reader can
interpret (0.5: indistinguishable, 1: separable).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray

from lorafleet.errors import ConfigError, DataError

Matrix = NDArray[np.float64]

_PERMUTATION_CHUNK = 128  # permutations per (chunk × N) @ (N × N) product: bounds memory for large N


@dataclass(frozen=True)
class MMDResult:
    """The MMD permutation test of a reference sample against a recent one."""

    statistic: float  # unbiased MMD² estimate of the observed split
    p_value: float  # (1 + #{permuted ≥ observed}) / (1 + permutations), in (0, 1]
    bandwidth: float  # σ of the Gaussian kernel (the median heuristic unless given)
    permutations: int  # number of random permutations drawn


@dataclass(frozen=True)
class ClassifierResult:
    """The classifier two-sample test: held-out AUC of recent-vs-reference and its one-sided p-value."""

    auc: float  # held-out AUC of recent (1) vs reference (0), in [0, 1]; 0.5 when indistinguishable
    p_value: float  # one-sided Mann–Whitney p-value of the held-out scores, small when AUC ≫ 0.5
    n_test: int  # held-out rows the AUC was measured on (both samples)


@dataclass(frozen=True)
class DriftReport:
    """Both tests on one reference/recent pair; `drifted` is the MMD verdict at level `alpha`."""

    drifted: bool  # MMD p-value < alpha
    alpha: float
    mmd: MMDResult
    classifier: ClassifierResult
    n_reference: int
    n_recent: int


def mmd2(x: ArrayLike, y: ArrayLike, *, bandwidth: float | None = None) -> float:
    """The unbiased squared MMD of samples `x` (n × d) and `y` (m × d) under a Gaussian RBF kernel.

    `bandwidth` is the kernel's σ; None takes the median heuristic over the pooled sample (module docstring).
    """
    xs, ys = _samples(x, y)
    kernel, _ = _pooled_kernel(xs, ys, bandwidth)  # (N, N), N = n + m
    return float(_split_statistics(kernel, _observed_half(len(xs), len(ys)), len(xs))[0])


def mmd_test(
    x: ArrayLike,
    y: ArrayLike,
    *,
    permutations: int = 500,
    seed: int = 0,
    bandwidth: float | None = None,
) -> MMDResult:
    """MMD² of `x` against `y` with its permutation p-value (module docstring), seeded by `seed`."""
    if isinstance(permutations, bool) or not isinstance(permutations, int) or permutations < 1:
        raise ConfigError(f"permutations must be an integer ≥ 1 (got {permutations!r})", field="permutations")
    xs, ys = _samples(x, y)
    n, total = len(xs), len(xs) + len(ys)
    kernel, sigma = _pooled_kernel(xs, ys, bandwidth)  # (N, N), N = n + m
    observed = _split_statistics(kernel, _observed_half(n, len(ys)), n)[0]

    rng = np.random.default_rng(seed)
    exceed = 0
    for start in range(0, permutations, _PERMUTATION_CHUNK):
        count = min(_PERMUTATION_CHUNK, permutations - start)
        orders = np.stack([rng.permutation(total) for _ in range(count)])  # (count, N)
        halves = np.zeros((count, total))  # row p: indicator of permutation p's X half
        np.put_along_axis(halves, orders[:, :n], 1.0, axis=1)
        exceed += int(np.count_nonzero(_split_statistics(kernel, halves, n) >= observed))
    return MMDResult(
        statistic=float(observed),
        p_value=(1 + exceed) / (1 + permutations),
        bandwidth=sigma,
        permutations=permutations,
    )


def classifier_auc_test(
    x: ArrayLike, y: ArrayLike, *, test_fraction: float = 0.5, seed: int = 0
) -> ClassifierResult:
    """Held-out AUC of logistic regression telling `y` (recent) from `x` (reference), with its p-value.

    A stratified random split (seeded by `seed`) holds out `test_fraction` of each sample; the model is
    `StandardScaler` + L2 `LogisticRegression` (C = 1) fitted on the rest and scored by its decision
    function on the held-out rows (module docstring).
    """
    from scipy.stats import mannwhitneyu
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if isinstance(test_fraction, bool) or not 0.0 < test_fraction < 1.0:
        raise ConfigError(f"test_fraction must lie in (0, 1) (got {test_fraction!r})", field="test_fraction")
    xs, ys = _samples(x, y)
    rng = np.random.default_rng(seed)
    train_x, test_x = _split(xs, test_fraction, rng)
    train_y, test_y = _split(ys, test_fraction, rng)
    features = np.concatenate([train_x, train_y])  # (n_train + m_train, d)
    labels = np.concatenate([np.zeros(len(train_x), dtype=int), np.ones(len(train_y), dtype=int)])

    model = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=1000))
    model.fit(features, labels)
    recent_scores = model.decision_function(test_y)  # (m_test,) logit of "recent"
    reference_scores = model.decision_function(test_x)  # (n_test,)
    test = mannwhitneyu(recent_scores, reference_scores, alternative="greater")
    auc = float(test.statistic) / (len(test_y) * len(test_x))  # U / (m_test · n_test)
    return ClassifierResult(auc=auc, p_value=float(test.pvalue), n_test=len(test_x) + len(test_y))


def detect_drift(
    reference: ArrayLike,
    recent: ArrayLike,
    *,
    alpha: float = 0.05,
    permutations: int = 500,
    test_fraction: float = 0.5,
    seed: int = 0,
    bandwidth: float | None = None,
) -> DriftReport:
    """Run the MMD and classifier tests of `recent` against `reference`; drifted when the MMD p < `alpha`."""
    if not 0.0 < alpha < 1.0:
        raise ConfigError(f"alpha must lie in (0, 1) (got {alpha!r})", field="alpha")
    xs, ys = _samples(reference, recent, names=("reference", "recent"))
    mmd = mmd_test(xs, ys, permutations=permutations, seed=seed, bandwidth=bandwidth)
    classifier = classifier_auc_test(xs, ys, test_fraction=test_fraction, seed=seed)
    return DriftReport(
        drifted=mmd.p_value < alpha,
        alpha=alpha,
        mmd=mmd,
        classifier=classifier,
        n_reference=len(xs),
        n_recent=len(ys),
    )


def _split(sample: Matrix, test_fraction: float, rng: np.random.Generator) -> tuple[Matrix, Matrix]:
    """(train, test) rows of `sample`: a random `test_fraction` held out, at least one row in each part."""
    held = min(len(sample) - 1, max(1, round(test_fraction * len(sample))))
    order = rng.permutation(len(sample))
    return sample[order[held:]], sample[order[:held]]


def _split_statistics(kernel: Matrix, halves: Matrix, n: int) -> Matrix:
    """MMD²ᵤ of every split of the pooled sample: `halves` (P × N) rows are indicators of the X half."""
    total = kernel.shape[0]
    m = total - n
    diagonal = np.diag(kernel)  # (N,) k(zᵢ, zᵢ) = 1, kept general
    row_sums = kernel.sum(axis=1)  # (N,) K1
    grand = row_sums.sum()  # 1ᵀK1
    quad = np.einsum("pn,pn->p", halves @ kernel, halves)  # (P,) aᵀKa
    linear = halves @ row_sums  # (P,) aᵀK1
    diag_x = halves @ diagonal  # (P,) Σ_{i∈X} k(zᵢ, zᵢ)
    within_x = quad - diag_x
    within_y = grand - 2 * linear + quad - (diagonal.sum() - diag_x)
    between = linear - quad
    return within_x / (n * (n - 1)) + within_y / (m * (m - 1)) - 2 * between / (n * m)


def _pooled_kernel(xs: Matrix, ys: Matrix, bandwidth: float | None) -> tuple[Matrix, float]:
    """K = k(Z, Z) (N × N) over the pooled rows Z = [xs; ys], and the kernel's σ."""
    squared = _squared_distances(np.concatenate([xs, ys]))  # (N, N) ‖zᵢ − zⱼ‖²
    sigma = _bandwidth(squared, bandwidth)
    return np.exp(-squared / (2 * sigma**2)), sigma


def _observed_half(n: int, m: int) -> Matrix:
    """(1 × (n + m)) indicator of the observed X half: the first n pooled rows."""
    half = np.zeros((1, n + m))
    half[0, :n] = 1.0
    return half


def _squared_distances(pooled: Matrix) -> Matrix:
    """‖zᵢ − zⱼ‖² (N × N), computed on centred rows to limit cancellation; exactly 0 on the diagonal."""
    centred = pooled - pooled.mean(axis=0)  # (N, d)
    norms = np.einsum("nd,nd->n", centred, centred)  # (N,)
    squared = norms[:, None] + norms[None, :] - 2 * centred @ centred.T  # (N, N)
    np.maximum(squared, 0.0, out=squared)
    np.fill_diagonal(squared, 0.0)
    return squared


def _bandwidth(squared: Matrix, bandwidth: float | None) -> float:
    """σ as given (checked), or the median pairwise distance of the pooled sample from its squared distances
    (module docstring)."""
    if bandwidth is not None:
        usable = isinstance(bandwidth, int | float) and not isinstance(bandwidth, bool)
        if not usable or not math.isfinite(bandwidth) or bandwidth <= 0:
            raise ConfigError(
                f"bandwidth must be a finite number > 0, or None for the median heuristic "
                f"(got {bandwidth!r})",
                field="bandwidth",
            )
        return float(bandwidth)
    upper = np.triu_indices(len(squared), k=1)
    distances = np.sqrt(squared[upper])  # (N(N−1)/2,) every pair i < j
    median = float(np.median(distances))
    if median > 0:
        return median
    positive = distances[distances > 0]
    return float(np.median(positive)) if positive.size else 1.0


def _samples(x: ArrayLike, y: ArrayLike, names: tuple[str, str] = ("x", "y")) -> tuple[Matrix, Matrix]:
    """`x` and `y` as float64 (n × d) and (m × d) arrays, or `DataError` naming the argument at fault."""
    arrays = []
    for name, value in zip(names, (x, y), strict=True):
        try:
            array = np.asarray(value, dtype=np.float64)
        except (TypeError, ValueError) as err:
            raise DataError(f"{name} is not a numeric array of embeddings: {err}", field=name) from err
        if array.ndim != 2:
            raise DataError(
                f"{name} must be a 2-D array (rows × embedding width); got shape {array.shape}", field=name
            )
        if array.shape[0] < 2:
            raise DataError(
                f"{name} has {array.shape[0]} rows; the unbiased MMD and the held-out classifier "
                "need at least 2",
                field=name,
            )
        if array.shape[1] < 1:
            raise DataError(f"{name} has embeddings of width 0; got shape {array.shape}", field=name)
        bad = np.flatnonzero(~np.isfinite(array).all(axis=1))
        if bad.size:
            raise DataError(
                f"{name} row {int(bad[0])} holds a NaN or infinite value ({bad.size} such rows)", field=name
            )
        arrays.append(array)
    xs, ys = arrays
    if xs.shape[1] != ys.shape[1]:
        first, second = names
        raise DataError(
            f"{first} and {second} must have the same embedding width; got {first} {xs.shape[1]} and "
            f"{second} {ys.shape[1]} (were both embedded by the same base model?)",
            field=second,
        )
    return xs, ys
