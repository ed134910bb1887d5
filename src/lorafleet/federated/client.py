"""A federated client's local training: load the round's global LoRA, take a few optimizer steps on the
client's own rows with lorafleet's training step, and hand back only the LoRA tensors.

The base model with its LoRA is loaded once per process and shared by every client the process plays
(a simulation runs several in one process): each round starts by loading the global tensors into it, so
nothing of one client's training reaches another. Each client keeps its own tokenized rows and its place
in them, so consecutive rounds see new rows. The optimizer (AdamW) starts fresh every round, as in
FedAvg; its learning rate follows the recipe's schedule over the whole run's rounds × local steps.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from lorafleet.federated.updates import State
from lorafleet.training.config import FinetuneConfig


@dataclass(frozen=True)
class LocalUpdate:
    """What a client sends back: its LoRA state after training, its row count and its mean local loss."""

    state: State
    examples: int
    loss: float


@dataclass
class LocalModel:
    """The base model with a trainable LoRA (the recipe's settings), on one `accelerate` device."""

    config: FinetuneConfig
    model: Any  # PeftModel
    tokenizer: Any
    accelerator: Any
    trainable: list[torch.nn.Parameter]

    @classmethod
    def load(cls, config: FinetuneConfig, *, trains: bool = False) -> LocalModel:
        """The recipe's base with its LoRA. A client's (`trains`) steps run in the recipe's precision as
        `lorafleet train` would (`training.mixed_precision`; on a bf16 CPU the frozen base is held in
        bf16); the server's copy only scores, in the base's own dtype."""
        from lorafleet.adapters import attach
        from lorafleet.models import load_base
        from lorafleet.models.devices import choose_device
        from lorafleet.training.precision import (
            accelerator_for,
            bf16_frozen_weights,
            mixed_precision,
            trains_base_in_bf16,
            use_attention,
        )

        device = choose_device(config.model.device)
        precision = mixed_precision(config, device)
        accelerator = accelerator_for(device, precision)
        torch.manual_seed(config.training.seed)  # every process draws the same initial A (it is overwritten)
        base, tokenizer = load_base(
            config.model.name, device=str(accelerator.device), dtype=config.model.dtype
        )
        if trains:
            use_attention(base, config, device)
        if trains and trains_base_in_bf16(config, device, precision):
            bf16_frozen_weights(base)
        model = attach(base, config.lora, gradient_checkpointing=config.training.gradient_checkpointing)
        trainable = [p for p in model.parameters() if p.requires_grad]
        return cls(config, model, tokenizer, accelerator, trainable)

    def state(self) -> State:
        """The LoRA tensors (PEFT key names), fp32 on the CPU."""
        from peft import get_peft_model_state_dict

        from lorafleet.adapters.attach import ADAPTER_NAME

        tensors = get_peft_model_state_dict(
            self.model, adapter_name=ADAPTER_NAME, save_embedding_layers=False
        )
        return {key: value.detach().float().cpu().clone() for key, value in tensors.items()}

    def load_state(self, state: State) -> None:
        """Put `state` (PEFT key names) into the LoRA weights."""
        from peft import set_peft_model_state_dict

        from lorafleet.adapters.attach import ADAPTER_NAME

        set_peft_model_state_dict(self.model, state, adapter_name=ADAPTER_NAME)


@dataclass
class ClientRows:
    """One client's tokenized rows and where its next step's micro-batches start."""

    config: FinetuneConfig  # the recipe with data.path pointing at this client's rows
    rows: list[Any]  # TokenizedExample
    epoch: int = 0
    position: int = 0
    _epoch_batches: list[dict[str, torch.Tensor]] = field(default_factory=list)

    @classmethod
    def read(cls, config: FinetuneConfig, path: str, tokenizer: Any) -> ClientRows:
        from lorafleet.data import prepare_data

        data = config.data.model_copy(
            update={"path": path, "validation_path": None, "validation_fraction": 0.0}
        )
        prepared = prepare_data(data, tokenizer)
        return cls(config.model_copy(update={"data": data}), prepared.train)

    def window(self, pad_token_id: int) -> list[dict[str, torch.Tensor]]:
        """The micro-batches of the next optimizer step (gradient_accumulation_steps of them)."""
        from lorafleet.data import batches

        training, data = self.config.training, self.config.data
        window: list[dict[str, torch.Tensor]] = []
        while len(window) < training.gradient_accumulation_steps:
            if self.position >= len(self._epoch_batches):
                if self._epoch_batches:
                    self.epoch += 1
                self._epoch_batches = batches(
                    self.rows,
                    batch_size=training.batch_size,
                    pad_token_id=pad_token_id,
                    max_length=data.max_length,
                    packing=data.packing,
                    shuffle=True,
                    seed=data.seed + training.seed,
                    epoch=self.epoch,
                )
                self.position = 0
            window.append(self._epoch_batches[self.position])
            self.position += 1
        return window


def train_locally(
    local: LocalModel,
    rows: ClientRows,
    global_state: State,
    *,
    steps: int,
    learning_rate: float,
    first_step: int = 0,
    total_steps: int | None = None,
    proximal_mu: float = 0.0,
    seed: int = 0,
) -> LocalUpdate:
    """`steps` optimizer steps from `global_state` on `rows` (FedProx when μ > 0); the LoRA state after.

    The learning rate follows the recipe's `training.lr_scheduler` over the run's `total_steps`
    sequential steps (rounds × local steps; default: these `steps` alone) from `first_step`, where the
    rounds before this one left off: a federation warms up and decays as `lorafleet train` would."""
    from lorafleet.federated.proximal import proximal_penalty
    from lorafleet.training.loop import learning_rate_schedule, optimizer_step

    local.load_state(global_state)
    torch.manual_seed(seed)  # dropout draws of this client's round
    optimizer = torch.optim.AdamW(
        local.trainable, lr=learning_rate, weight_decay=local.config.training.weight_decay
    )
    scheduler = learning_rate_schedule(local.config, optimizer, total_steps or steps, first_step=first_step)
    penalty = proximal_penalty(local.trainable, proximal_mu) if proximal_mu > 0 else None
    losses = []
    for _ in range(steps):
        window = rows.window(local.tokenizer.pad_token_id)
        loss, _, _ = optimizer_step(
            rows.config,
            local.accelerator,
            local.model,
            optimizer,
            scheduler,
            local.trainable,
            window,
            penalty=penalty,
        )
        losses.append(loss)
    return LocalUpdate(local.state(), len(rows.rows), sum(losses) / len(losses))
