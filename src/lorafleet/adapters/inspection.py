"""`inspect_adapter(path)`: what an adapter directory holds, without loading a model."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from lorafleet.adapters.factors import lora_factors
from lorafleet.adapters.storage import read_adapter


@dataclass(frozen=True)
class AdapterInfo:
    """A summary of one adapter directory."""

    path: str
    name: str | None
    rank: int
    alpha: float
    use_rslora: bool
    use_dora: bool
    targets: list[str]
    modules: int
    parameters: int
    size_bytes: int
    base_model: str
    base_fingerprint: str | None
    created_at: str | None
    lineage: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def inspect_adapter(path: str | os.PathLike[str]) -> AdapterInfo:
    """Rank, alpha, targets, parameters, size on disk, base model and lineage of the adapter at `path`."""
    config, state, card = read_adapter(path)
    folder = Path(path)
    targets = config.target_modules
    return AdapterInfo(
        path=str(folder),
        name=card.name if card else None,
        rank=config.r,
        alpha=config.lora_alpha,
        use_rslora=config.use_rslora,
        use_dora=config.use_dora,
        targets=sorted(targets) if isinstance(targets, set | list) else [str(targets)],
        modules=len(lora_factors(state)),
        parameters=sum(t.numel() for t in state.values()),
        size_bytes=sum(f.stat().st_size for f in folder.iterdir() if f.is_file()),
        base_model=card.base_model.id if card else str(config.base_model_name_or_path),
        base_fingerprint=card.base_model.fingerprint if card else None,
        created_at=card.created_at if card else None,
        lineage=card.lineage.model_dump() if card else {},
        metrics=card.metrics if card else {},
    )
