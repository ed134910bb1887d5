"""One served alias's monitor: input drift per window of prompts, answer quality, errors and latency.

Requests arrive one at a time (`record`). Their prompt embeddings (`monitoring.embed`) fill
non-overlapping windows of `window` prompts; each full window is tested against the reference sample
(the version's training prompts, embedded the same way) with `monitoring.drift.detect_drift`, and the
window starts afresh. One verdict per window is what a false-positive rate is counted over: under no
drift about `alpha` of the windows are flagged. Quality scores (feedback, or a task validator's 1/0 for
each answer) go into a `RollingScore`; the error rate is over the last `window` requests, the latency
percentiles over the last `window` that succeeded.

No torch, no registry: the server feeds it, a policy reads `status()`.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike

from lorafleet.errors import ConfigError, DataError
from lorafleet.monitoring.drift import DriftReport, detect_drift
from lorafleet.monitoring.quality import RollingScore


@dataclass(frozen=True)
class MonitorStatus:
    """What the monitor knows now; `drift` is the verdict of the last full window (None before one)."""

    requests: int  # recorded since the monitor started
    windows_tested: int
    windows_drifted: int
    drift: DriftReport | None
    quality_mean: float | None  # of the last `quality_window` feedback scores
    quality_count: int
    valid_rate: float | None  # share of the last `quality_window` answers the task validator accepted
    valid_count: int
    error_rate: float  # over the last `window` requests (0 before any)
    latency_p50_ms: float | None  # over the last `window` successful requests
    latency_p95_ms: float | None


class AliasMonitor:
    """Drift, quality, errors and latency of one served alias (module docstring)."""

    def __init__(
        self,
        reference: ArrayLike | None,
        *,
        window: int = 100,
        quality_window: int = 100,
        alpha: float = 0.05,
        permutations: int = 500,
        seed: int = 0,
    ) -> None:
        """`reference`: the training prompts' embeddings (rows × width); None: no drift test."""
        if isinstance(window, bool) or not isinstance(window, int) or window < 2:
            raise ConfigError(f"window must be an integer ≥ 2 (got {window!r})", field="window")
        self.reference = None if reference is None else np.asarray(reference, dtype=np.float64)
        if self.reference is not None and (self.reference.ndim != 2 or len(self.reference) < 2):
            raise DataError(
                f"reference must be at least 2 embeddings (rows × width); got shape {self.reference.shape}",
                field="reference",
            )
        self.window, self.alpha, self.permutations, self.seed = window, alpha, permutations, seed
        self.quality = RollingScore(quality_window)
        self.valid = RollingScore(quality_window)
        self._prompts: list[np.ndarray] = []
        self._errors: deque[bool] = deque(maxlen=window)
        self._latencies: deque[float] = deque(maxlen=window)
        self._requests = self._tested = self._drifted = 0
        self._last: DriftReport | None = None

    def record(
        self,
        *,
        latency_ms: float,
        error: bool = False,
        embedding: ArrayLike | None = None,
        quality: float | None = None,
        valid: bool | None = None,
    ) -> DriftReport | None:
        """Count one request; returns the drift verdict when its embedding completed a window."""
        if not math.isfinite(latency_ms) or latency_ms < 0:
            raise DataError(
                f"latency_ms must be a finite number ≥ 0 (got {latency_ms!r})", field="latency_ms"
            )
        self._requests += 1
        self._errors.append(error)
        if not error:
            self._latencies.append(latency_ms)
        if quality is not None:
            self.quality.add(quality)
        if valid is not None:
            self.valid.add(valid)
        if embedding is None:
            return None
        if self.reference is None:
            raise DataError(
                "this monitor tests no drift (it has no reference); record no embedding", field="embedding"
            )
        row = np.asarray(embedding, dtype=np.float64).reshape(-1)
        if row.shape[0] != self.reference.shape[1]:
            raise DataError(
                f"embedding has width {row.shape[0]}, the reference {self.reference.shape[1]}",
                field="embedding",
            )
        self._prompts.append(row)
        if len(self._prompts) < self.window:
            return None
        recent, self._prompts = np.stack(self._prompts), []
        report = detect_drift(
            self.reference,
            recent,
            alpha=self.alpha,
            permutations=self.permutations,
            seed=self.seed + self._tested,
        )
        self._tested += 1
        self._drifted += report.drifted
        self._last = report
        return report

    def feedback(self, score: float) -> None:
        """A quality score for an earlier request (feedback arrives after the request is counted)."""
        self.quality.add(score)

    def status(self) -> MonitorStatus:
        latencies = np.array(self._latencies)
        return MonitorStatus(
            requests=self._requests,
            windows_tested=self._tested,
            windows_drifted=self._drifted,
            drift=self._last,
            quality_mean=self.quality.mean,
            quality_count=self.quality.count,
            valid_rate=self.valid.mean,
            valid_count=self.valid.count,
            error_rate=sum(self._errors) / len(self._errors) if self._errors else 0.0,
            latency_p50_ms=float(np.percentile(latencies, 50)) if latencies.size else None,
            latency_p95_ms=float(np.percentile(latencies, 95)) if latencies.size else None,
        )
