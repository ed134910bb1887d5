"""EWC in training: hold the child's LoRA weights near the parent's where the parent's data is sensitive.

The anchor θ* is the parent's tensors. The diagonal Fisher F is the parent's `fisher.safetensors` when one
is stored beside it; otherwise it is estimated (`continual.estimate_fisher`, batches of one row, at θ*)
on the first `continual.fisher_rows` rows of the parent's training data (the first of
`continual.replay_paths` when given, else the `data.path` its card records), read with this recipe's
`data:` settings, and saved beside the parent so later children reuse
it. Locally the parent is a directory and the Fisher is written into it (the adapter's own files are left
as they were); the server's jobs store it with the registered version instead. Each optimizer step adds

    Ω(θ) = λ/2 · Σᵢ Fᵢ · (θᵢ − θ*ᵢ)²,   λ = continual.ewc_lambda

to the mean token loss of the step (`continual.ewc_penalty`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lorafleet.continual import FISHER_FILE
from lorafleet.continual.ewc import estimate_fisher, ewc_penalty, load_fisher, save_fisher
from lorafleet.continual.parameters import lora_parameters
from lorafleet.data import DataConfig, batches
from lorafleet.errors import ConfigError
from lorafleet.training.parent import ParentAdapter
from lorafleet.training.replay import read_parent_rows


@dataclass(frozen=True)
class ElasticAnchor:
    """The live LoRA parameters, the parent's values θ* and Fisher F they are held to, and λ."""

    params: dict[str, nn.Parameter]
    anchor: dict[str, torch.Tensor]
    fisher: dict[str, torch.Tensor]
    lam: float

    def penalty(self) -> torch.Tensor:
        """λ/2 Σ F(θ − θ*)², differentiable in the live parameters (a 0-d fp32 tensor)."""
        return ewc_penalty(self.params, self.anchor, self.fisher, self.lam)


def elastic_anchor(
    model: nn.Module,
    parent: ParentAdapter,
    data: DataConfig,
    *,
    lam: float,
    fisher_rows: int,
    tokenizer: Any,
    say: Callable[[str], None],
    paths: list[str] | None = None,
) -> ElasticAnchor:
    """The EWC anchor of `model` (which holds `parent`'s weights); the Fisher is read or estimated once,
    on `paths` (`continual.replay_paths`, the parent's rows) if given, else on the data its card records."""
    params = lora_parameters(model)
    device = next(iter(params.values())).device
    anchor = {key: parent.state[key].to(device) for key in params if key in parent.state}
    if (parent.path / FISHER_FILE).is_file():
        fisher = load_fisher(parent.path)
        say(f"EWC: the parent's Fisher from {parent.path / FISHER_FILE}, λ {lam:g}")
    else:
        rows = paths[0] if paths else _parent_rows(parent)
        say(f"EWC: estimating the parent's Fisher on up to {fisher_rows} rows of {rows}")
        fisher = estimate_fisher(model, _one_row_batches(rows, data, fisher_rows, tokenizer, device), params)
        try:
            say(f"EWC: Fisher saved as {save_fisher(parent.path, fisher)}, λ {lam:g}")
        except OSError as err:
            say(f"EWC: could not save the Fisher beside the parent ({err}); it will be estimated again")
    return ElasticAnchor(params=params, anchor=anchor, fisher=fisher, lam=lam)


def _parent_rows(parent: ParentAdapter) -> str:
    """The parent's training data as its card records it; `ConfigError` when that is unknown or gone."""
    training = parent.card.training if parent.card is not None else None
    path = (training or {}).get("data", {}).get("path")
    if not path:
        problem = "its card records no training data"
    elif not Path(path).exists():
        problem = f"its training data {path} is gone"
    else:
        return str(path)
    raise ConfigError(
        f"continual.strategy: ewc needs the parent's Fisher ({parent.path / FISHER_FILE}) or its training "
        f"rows to estimate one, but {problem}; choose strategy none or replay",
        field="continual.strategy",
    )


def _one_row_batches(
    path: str, data: DataConfig, rows: int, tokenizer: Any, device: torch.device
) -> Iterator[dict[str, torch.Tensor]]:
    """The first `rows` rows of `path`, tokenized as `data:` says, one row per batch, on `device`."""
    examples = read_parent_rows(path, data, tokenizer, max_rows=rows)
    for batch in batches(
        examples,
        batch_size=1,
        pad_token_id=tokenizer.pad_token_id,
        max_length=data.max_length,
        packing=False,
        shuffle=False,
        seed=0,
        epoch=0,
    ):
        yield {key: value.to(device) for key, value in batch.items()}
