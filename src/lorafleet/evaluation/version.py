"""Score a freshly trained adapter version: its ancestors' suites and the general probe, in one record.

The record is what a version keeps under `metrics["evaluation"]` (beside the training run's own
`base`/`adapter` evaluation):

    {"suites":  {suite_id: {"adapter", "metric", "score", "details"}},   see `evaluation.suites`
     "general": {"perplexity", "base_perplexity", "drift"}}              see `evaluation.probe`

The adapter is loaded from its saved files onto a freshly loaded base, as a server would load it, so
what is scored is what was stored. It stays unmerged: the probe disables it to measure the base.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from lorafleet.adapters import load_adapter
from lorafleet.evaluation.probe import general_drift
from lorafleet.evaluation.suites import Suite, score_suites
from lorafleet.models import load_base
from lorafleet.training.config import FinetuneConfig


def score_version(
    config: FinetuneConfig,
    adapter_dir: Path,
    suites: Sequence[Suite],
    *,
    probe: bool = True,
    on_batch: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """The evaluation record (above) of the adapter at `adapter_dir`, trained by `config`.

    Suites are scored with the run's system prompt, generation length, batch size, row limit
    (`eval.generation_rows`) and `data.max_length`; the probe is left out when `probe` is false.
    `on_batch` is called after each generated batch (the runner's cancel check).
    """
    model, tokenizer = load_base(config.model.name, device=config.model.device, dtype=config.model.dtype)
    adapted = load_adapter(
        model, adapter_dir, quantization="nf4" if config.quantization.method == "nf4" else None
    )
    evaluation: dict[str, Any] = {
        "suites": score_suites(
            adapted,
            tokenizer,
            suites,
            system_prompt=config.data.system_prompt,
            max_new_tokens=config.eval.max_new_tokens,
            batch_size=config.eval.batch_size,
            max_rows=config.eval.generation_rows,
            max_length=config.data.max_length,
            on_batch=on_batch,
        )
    }
    if probe:
        evaluation["general"] = general_drift(
            adapted, tokenizer, batch_size=config.eval.batch_size, on_batch=on_batch
        )
    return evaluation
