"""The bundled example tasks by name: what `lorafleet data example --task NAME` writes.

Generated extraction tasks with different instructions and JSON keys, all scored by the `json_fields`
metric: three general ones (a sequence for continual learning, offline) and one per domain recipe
(`configs/healthcare.yaml`, `legal.yaml`, `finance.yaml` train and score theirs).
"""

from __future__ import annotations

from lorafleet.data import finance, healthcare, invoices, legal, meeting_notes, support_tickets
from lorafleet.data.task_generation import ExampleTask
from lorafleet.errors import ConfigError

TASKS: dict[str, ExampleTask] = {
    task.name: task
    for task in (
        support_tickets.TASK,
        invoices.TASK,
        meeting_notes.TASK,
        healthcare.TASK,
        legal.TASK,
        finance.TASK,
    )
}
DEFAULT_TASK = "support_tickets"


def example_task(name: str) -> ExampleTask:
    """The bundled task called `name`, or a `ConfigError` listing the tasks there are."""
    if name not in TASKS:
        raise ConfigError(f"--task {name!r}: no such example task; choose one of {', '.join(TASKS)}")
    return TASKS[name]
