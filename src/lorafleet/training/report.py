"""What a run leaves behind besides the adapter: metrics JSONL, a loss-curve PNG and a summary JSON."""

from __future__ import annotations

import json
import os
import resource
import sys
from pathlib import Path
from typing import Any

import torch

from lorafleet.data.config import DataConfig

METRICS_FILE = "metrics.jsonl"
CURVE_FILE = "loss.png"
SUMMARY_FILE = "summary.json"


class MetricsLog:
    """Appends one JSON object per line (`{"step": ..., "loss": ...}`), flushed as it goes."""

    def __init__(self, path: Path, *, truncate_after_step: int | None = None) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        if truncate_after_step is not None and path.is_file():  # resuming: drop lines past the checkpoint
            kept = [line for line in read_metrics(path) if line.get("step", 0) <= truncate_after_step]
            path.write_text("".join(json.dumps(line) + "\n" for line in kept))
        elif truncate_after_step is None:
            path.write_text("")

    def write(self, record: dict[str, Any]) -> None:
        with self.path.open("a") as file:
            file.write(json.dumps(record) + "\n")


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """The records of a metrics JSONL file."""
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def plot_losses(metrics: list[dict[str, Any]], path: Path, *, title: str) -> Path:
    """Training loss per step (and validation loss where measured) as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [(m["step"], m["loss"]) for m in metrics if "loss" in m]
    evals = [(m["step"], m["eval_loss"]) for m in metrics if "eval_loss" in m]
    figure, axes = plt.subplots(figsize=(7, 4), dpi=100)
    if train:
        axes.plot(*zip(*train, strict=True), label="training loss", linewidth=1)
    if evals:
        axes.plot(*zip(*evals, strict=True), "o-", label="validation loss")
    axes.set_xlabel("optimizer step")
    axes.set_ylabel("cross-entropy per token")
    axes.set_title(title)
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
    return path


def peak_memory_mb(device: torch.device) -> float:
    """Peak memory of this run: CUDA's max allocated on GPU, else the process's peak resident set."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


def write_summary(path: Path, summary: dict[str, Any]) -> Path:
    """Write the run summary JSON atomically (temp file + rename)."""
    staging = path.with_name(f".{path.name}.tmp")
    staging.write_text(json.dumps(summary, indent=2) + "\n")
    os.replace(staging, path)
    return path


def record_data_scrub(adapter_dir: Path, data: DataConfig) -> dict[str, Any] | None:
    """For a `data.scrub: true` run, write the scrubbing report's summary of the rows it trained on into
    the adapter's card (metrics `data_scrub`: file, rows, kinds found, the audit chain's head; the
    validation file's under `validation`) and return it; None when the run did not scrub."""
    from lorafleet.adapters.storage import add_card_metrics
    from lorafleet.data.dataset import scrub_reports
    from lorafleet.privacy.audit import scrub_record

    reports = scrub_reports(data)
    if "path" not in reports:
        return None
    record = scrub_record(reports["path"], file=str(data.path))
    if "validation_path" in reports:
        record["validation"] = scrub_record(reports["validation_path"], file=str(data.validation_path))
    add_card_metrics(adapter_dir, {"data_scrub": record})
    return record
