"""Monitors per served alias: input drift of recent prompts (MMD and classifier two-sample tests on the base
model's embeddings), answer quality (rolling feedback score, task validators), errors and latency
(`AliasMonitor`), all pure math on numpy arrays and plain values; the request log's writer and the
corrections it turns into training rows (`monitoring.requests`); prompt embeddings (`monitoring.embed`,
torch, imported on its own).
"""

from __future__ import annotations

from lorafleet.monitoring.drift import (
    ClassifierResult,
    DriftReport,
    MMDResult,
    classifier_auc_test,
    detect_drift,
    mmd2,
    mmd_test,
)
from lorafleet.monitoring.monitor import AliasMonitor, MonitorStatus
from lorafleet.monitoring.quality import RollingScore, json_schema_validator

__all__ = [
    "AliasMonitor",
    "ClassifierResult",
    "DriftReport",
    "MMDResult",
    "MonitorStatus",
    "RollingScore",
    "classifier_auc_test",
    "detect_drift",
    "json_schema_validator",
    "mmd2",
    "mmd_test",
]
