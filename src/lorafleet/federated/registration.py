"""Registering a federated run's adapter as a registry version, its lineage `federated` kept in its metrics.

The version shows up in the API and CLI like any other; `metrics.lineage` holds how it was made (method
`federated`, clients, rounds, ε, δ, σ, strategy) and `metrics.federated` what the run measured (bytes
communicated, final validation loss, why it stopped early if it did). The adapter's own `lorafleet.json`
carries the same lineage.
"""

from __future__ import annotations

from typing import Any

from lorafleet.federated.server import FederatedResult
from lorafleet.training.config import FinetuneConfig


def register_federated(registry: Any, tenant_id: str, config: FinetuneConfig, result: FederatedResult) -> Any:
    """Store `result`'s adapter as the next version of `config.output.name` for `tenant_id`; the version."""
    summary = result.summary
    metrics: dict[str, Any] = {
        "lineage": {"method": "federated", **summary["federated"]},
        "federated": {
            "bytes_communicated": summary["bytes_communicated"],
            "final_validation_loss": summary["final_validation_loss"],
            "stopped": summary["stopped"],
            "wall_seconds": summary["wall_seconds"],
        },
    }
    if summary.get("evaluation"):
        metrics["evaluation"] = {"adapter": summary["evaluation"]}
    return registry.adapters.register(
        tenant_id, config.output.name, result.adapter_dir, base_model=config.model.name, metrics=metrics
    )
