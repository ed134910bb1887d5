"""The adaptation controller's parts: a policy per served alias (`policy`), and the canary's verdict
(`canary`). The math is pure (no torch, no registry), so it is tested without a server."""

from lorafleet.rollout.canary import Verdict, Window, decide
from lorafleet.rollout.policy import (
    AdaptationPolicy,
    CanaryPlan,
    DriftTrigger,
    QualityTrigger,
    TrainPlan,
    Triggers,
)

__all__ = [
    "AdaptationPolicy",
    "CanaryPlan",
    "DriftTrigger",
    "QualityTrigger",
    "TrainPlan",
    "Triggers",
    "Verdict",
    "Window",
    "decide",
]
