"""Progress bars for training (loss, learning rate, tokens/s, ETA) and for scoring held-out rows."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from types import TracebackType
from typing import Any

from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)


class TrainingProgress:
    """A bar over optimizer steps showing the latest loss, learning rate and throughput."""

    def __init__(self, total_steps: int, *, start: int = 0, enabled: bool = True) -> None:
        self._bar = Progress(
            TextColumn("training"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]}  lr {task.fields[lr]}  {task.fields[speed]} tok/s"),
            TimeElapsedColumn(),
            TextColumn("eta"),
            TimeRemainingColumn(),
            disable=not enabled,
        )
        self._task = self._bar.add_task(
            "train", total=total_steps, completed=start, loss="-", lr="-", speed="-"
        )

    def __enter__(self) -> TrainingProgress:
        self._bar.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self._bar.stop()

    def update(self, record: dict[str, Any]) -> None:
        self._bar.update(
            self._task,
            completed=record["step"],
            loss=f"{record['loss']:.4f}",
            lr=f"{record['learning_rate']:.2e}",
            speed=f"{record['tokens_per_second']:.0f}",
        )

    @staticmethod
    @contextlib.contextmanager
    def counter(label: str, total: int, *, enabled: bool = True) -> Iterator[Callable[[int], None]]:
        """A bar over `total` items; the yielded function advances it by n."""
        bar = Progress(
            TextColumn(label), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), disable=not enabled
        )
        task = bar.add_task(label, total=total)
        with bar:
            yield lambda n: bar.advance(task, n)
