"""The server's side of talking to clients over Flower's `Grid`.

send_and_receive  push messages and collect the replies until all are in or the timeout passes,
                  polling every `POLL_SECONDS` (Flower's own deployment grid sleeps 3 s between polls,
                  which every exchange of a round, four under SecAgg+, would pay)
roll_call         ask new clients their names (`apps.introduce`): the ledger lists clients by name, and
                  the sampler draws from them in name order, so a run with the same seed samples the
                  same clients whatever node ids Flower handed out this time
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

POLL_SECONDS = 0.1
NAME_RECORD = "client"  # the config record of a roll-call answer: {"name": ...}


def send_and_receive(grid: Any, messages: Iterable[Any], *, timeout: float | None) -> list[Any]:
    """Push `messages` over `grid`; the replies that arrived within `timeout` seconds (None: all of them)."""
    waiting = set(grid.push_messages(messages))
    deadline, replies = time.monotonic() + (timeout if timeout is not None else float("inf")), []
    while waiting:
        arrived = list(grid.pull_messages(waiting))
        replies += arrived
        waiting -= {reply.metadata.reply_to_message_id for reply in arrived}
        if waiting and time.monotonic() < deadline:
            time.sleep(POLL_SECONDS)
        else:
            break
    return replies


def roll_call(grid: Any, nodes: Iterable[int], names: dict[int, str], *, timeout: float) -> None:
    """Ask each of `nodes` not yet in `names` for its name and add it (`add_names`)."""
    from flwr.app import Message, MessageType, RecordDict

    new = [node for node in nodes if node not in names]
    if not new:
        return
    messages = [Message(RecordDict(), dst_node_id=node, message_type=MessageType.QUERY) for node in new]
    answered: dict[int, str] = {}
    for reply in send_and_receive(grid, messages, timeout=timeout):
        record = None if reply.has_error() else reply.content.config_records.get(NAME_RECORD)
        if record is not None:
            answered[reply.metadata.src_node_id] = str(record.get("name", ""))
    add_names(new, answered, names)


def add_names(new: list[int], answered: dict[int, str], names: dict[int, str]) -> None:
    """Name each of the `new` nodes in `names`: the name it `answered` with, else (no answer, an empty name,
    or a name another client goes by) its node id."""
    taken = set(names.values())
    for node in sorted(new, key=lambda node: (answered.get(node, ""), node)):
        name = answered.get(node, "")
        names[node] = name if name and name not in taken else str(node)
        taken.add(names[node])
