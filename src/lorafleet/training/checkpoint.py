"""Resumable checkpoints: the adapter so far plus the optimizer, schedule, RNG and data position.

A checkpoint is a directory `checkpoints/step-000120/` holding the adapter in PEFT format (loadable
on its own) and `trainer_state.pt` (tensors and plain values only, read back with
`weights_only=True`). It is written into a temporary sibling and renamed, so a kill at any moment
leaves either the previous checkpoint or the new one, never half of one.
"""

from __future__ import annotations

import random
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from peft import PeftModel, set_peft_model_state_dict

from lorafleet.adapters.storage import read_adapter, save_adapter
from lorafleet.errors import CorruptFileError
from lorafleet.files import atomic_directory

STATE_FILE = "trainer_state.pt"
ADAPTER_DIR = "adapter"


@dataclass
class Progress:
    """Where training stands: optimizer steps done, and where the next micro-batch comes from."""

    step: int = 0
    epoch: int = 0
    batch: int = 0  # index of the next micro-batch within the epoch
    tokens: int = 0  # training tokens seen (padding excluded)
    best_eval_loss: float | None = None
    evals_without_improvement: int = 0


def save_checkpoint(
    run_dir: Path,
    model: PeftModel,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    progress: Progress,
    *,
    keep: int,
) -> Path:
    """Write a checkpoint for `progress.step` atomically and drop all but the `keep` newest."""
    target = run_dir / "checkpoints" / f"step-{progress.step:06d}"
    with atomic_directory(target, overwrite=True) as staging:
        save_adapter(model, staging / ADAPTER_DIR, name=f"checkpoint-{progress.step}")
        state = {
            "progress": asdict(progress),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "rng": rng_state(),
        }
        torch.save(state, staging / STATE_FILE)
    for old in checkpoints(run_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return target


def checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoints of a run, oldest first."""
    folder = run_dir / "checkpoints"
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.glob("step-*") if (p / STATE_FILE).is_file())


def load_checkpoint(
    path: Path, model: PeftModel, optimizer: torch.optim.Optimizer, scheduler: Any
) -> Progress:
    """Restore adapter weights, optimizer, schedule and RNG from `path`; return the saved progress."""
    _, adapter_state, _ = read_adapter(path / ADAPTER_DIR)
    try:
        state = torch.load(path / STATE_FILE, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several types for truncated or foreign files
        raise CorruptFileError(f"{path / STATE_FILE}: unreadable checkpoint state ({err})") from err
    device = next(model.parameters()).device
    set_peft_model_state_dict(model, {key: value.to(device) for key, value in adapter_state.items()})
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    set_rng_state(state["rng"])
    return Progress(**state["progress"])


def rng_state() -> dict[str, Any]:
    """Every RNG training draws from (dropout: torch's CPU and CUDA generators; Python's `random`)."""
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "python": random.getstate(),
    }


def set_rng_state(state: dict[str, Any]) -> None:
    """Put back what `rng_state` returned."""
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    random.setstate(state["python"])
