"""The support-ticket task split across N federated clients, non-IID: what `lorafleet data example DIR
--federated N` writes.

Like real sites, the clients differ: each sees only `types_per_client` of the six ticket types and writes
every date in its own style (one of the four styles of the task). The union of their rows covers every
type and style, and the common held-out `test.jsonl` is the plain task (all types, all styles), so a model
that learned from only one client misses what the others saw. Which types and style a client gets is
drawn from the seed; `clients.json` records it. Same seed, same files; no prompt repeats across files.

    DIR/client-00/train.jsonl … DIR/client-{N-1}/train.jsonl    each client's rows
    DIR/test.jsonl                                               common held-out rows
    DIR/clients.json                                             each client's types and date style
"""

from __future__ import annotations

import datetime
import json
import random
from functools import partial
from pathlib import Path

from lorafleet.data.example_text import TICKET_DATE_STYLES
from lorafleet.data.support_tickets import TASK, TICKET_TYPES, build_ticket
from lorafleet.data.task_generation import ExampleTask
from lorafleet.errors import ConfigError

CLIENT_PATTERN = "client-{client:02d}/train.jsonl"  # data.path of a federated recipe: DIR/ + this
_STYLE_EXAMPLE = datetime.date(2025, 3, 5)


def write_federated_split(
    directory: Path,
    *,
    clients: int,
    train_rows: int = 1000,
    test_rows: int = 200,
    seed: int = 0,
    types_per_client: int = 2,
) -> list[Path]:
    """Write each client's `train.jsonl` (train_rows / clients rows each), `test.jsonl` and `clients.json`;
    return the client files."""
    if not 1 <= clients <= 1000:
        raise ConfigError(f"--federated {clients}: give between 1 and 1000 clients")
    if train_rows < clients:
        raise ConfigError(f"--train-rows {train_rows}: fewer rows than --federated {clients} clients")
    rng = random.Random(seed)
    types = list(TICKET_TYPES)
    rng.shuffle(types)
    styles = list(range(len(TICKET_DATE_STYLES)))
    rng.shuffle(styles)
    seen: set[str] = set()
    directory.mkdir(parents=True, exist_ok=True)
    paths, described = [], []
    for client in range(clients):
        kinds = [types[(client * types_per_client + j) % len(types)] for j in range(types_per_client)]
        style = TICKET_DATE_STYLES[styles[client % len(styles)]]
        task = ExampleTask(
            name=f"{TASK.name}_client_{client}",
            description=TASK.description,
            instruction=TASK.instruction,
            fields=TASK.fields,
            generate=partial(build_ticket, types=kinds, date_styles=(style,)),
        )
        count = train_rows // clients + (1 if client < train_rows % clients else 0)
        path = directory / CLIENT_PATTERN.format(client=client)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(json.dumps(row) + "\n" for row in task.rows(count, rng, seen)))
        paths.append(path)
        described.append(
            {"client": client, "rows": count, "types": kinds, "date_style": style(_STYLE_EXAMPLE)}
        )
    test = TASK.rows(test_rows, rng, seen)
    (directory / "test.jsonl").write_text("".join(json.dumps(row) + "\n" for row in test))
    (directory / "clients.json").write_text(json.dumps(described, indent=2) + "\n")
    return paths
