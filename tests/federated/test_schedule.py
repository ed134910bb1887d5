"""A federated client's learning rate follows the recipe's schedule over the run's rounds × local steps."""

from __future__ import annotations

import pytest
import torch

from lorafleet.training import load_config
from lorafleet.training.loop import learning_rate_schedule


def _rates(
    scheduler: torch.optim.lr_scheduler.LRScheduler, optimizer: torch.optim.Optimizer, steps: int
) -> list[float]:
    rates = []
    for _ in range(steps):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return rates


@pytest.mark.parametrize("scheduler", ["cosine", "linear", "constant"])
def test_each_round_continues_the_schedule_where_the_rounds_before_left_off(scheduler: str) -> None:
    config = load_config(
        None,
        [
            "data.path=unused.jsonl",
            "training.learning_rate=0.002",
            f"training.lr_scheduler={scheduler}",
            "training.warmup_ratio=0.1",
        ],
    )
    rounds, local_steps = 6, 2

    def optimizer() -> torch.optim.Optimizer:
        return torch.optim.AdamW([torch.nn.Parameter(torch.zeros(2))], lr=0.002)

    whole = optimizer()
    expected = _rates(
        learning_rate_schedule(config, whole, rounds * local_steps), whole, rounds * local_steps
    )
    seen = []
    for round_number in range(1, rounds + 1):
        fresh = optimizer()  # a client's optimizer starts fresh every round
        schedule = learning_rate_schedule(
            config, fresh, rounds * local_steps, first_step=(round_number - 1) * local_steps
        )
        seen += _rates(schedule, fresh, local_steps)
    assert seen == pytest.approx(expected, rel=1e-12, abs=0)
    if scheduler != "constant":
        assert seen[-1] < 0.5 * max(seen)  # it decays towards the end of the run
