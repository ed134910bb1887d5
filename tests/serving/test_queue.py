"""FairQueue: round-robin across tenants, FIFO within one, bounded, cancellable, thread-safe."""

from __future__ import annotations

import pickle
import threading
import time

import pytest

from lorafleet.errors import ConfigError, LorafleetError
from lorafleet.serving.queue import FairQueue, QueueFullError


def drain(queue: FairQueue[str]) -> list[str]:
    items = []
    while (item := queue.get_nowait()) is not None:
        items.append(item)
    return items


def test_burst_tenant_cannot_starve_another() -> None:
    queue: FairQueue[str] = FairQueue(max_size=2000)
    for i in range(1000):
        queue.put(f"a{i}", tenant="a")
    queue.put("b0", tenant="b")
    assert "b0" in [queue.get(timeout=0), queue.get(timeout=0)]


def test_three_tenants_take_turns_in_the_order_they_arrived() -> None:
    queue: FairQueue[str] = FairQueue(max_size=10)
    for item, tenant in [("a1", "a"), ("a2", "a"), ("a3", "a"), ("b1", "b"), ("c1", "c"), ("c2", "c")]:
        queue.put(item, tenant=tenant)
    assert queue.pending_by_tenant() == {"a": 3, "b": 1, "c": 2}
    assert drain(queue) == ["a1", "b1", "c1", "a2", "c2", "a3"]


def test_fifo_within_a_tenant() -> None:
    queue: FairQueue[str] = FairQueue(max_size=100)
    for i in range(50):
        queue.put(f"x{i}", tenant="x")
        queue.put(f"y{i}", tenant="y")
    items = drain(queue)
    assert [i for i in items if i[0] == "x"] == [f"x{i}" for i in range(50)]
    assert [i for i in items if i[0] == "y"] == [f"y{i}" for i in range(50)]


def test_a_tenant_that_empties_rejoins_at_the_back() -> None:
    queue: FairQueue[str] = FairQueue(max_size=10)
    queue.put("a1", tenant="a")
    queue.put("b1", tenant="b")
    queue.put("b2", tenant="b")
    assert queue.get_nowait() == "a1"  # a leaves the rotation
    queue.put("a2", tenant="a")  # and comes back behind b
    assert queue.pending_by_tenant() == {"b": 2, "a": 1}
    assert drain(queue) == ["b1", "a2", "b2"]


def test_full_queue_raises_with_retry_after() -> None:
    queue: FairQueue[int] = FairQueue(max_size=2, retry_after=3.5)
    queue.put(1, tenant="a")
    queue.put(2, tenant="b")
    with pytest.raises(QueueFullError, match=r"full \(2 of 2 waiting\); retry after 3.5 s") as caught:
        queue.put(3, tenant="c")
    assert caught.value.retry_after == 3.5
    assert isinstance(caught.value, LorafleetError)
    assert len(queue) == 2
    assert queue.get_nowait() == 1
    queue.put(3, tenant="c")  # room again
    assert len(queue) == 2


def test_per_tenant_cap_turns_away_only_that_tenant() -> None:
    queue: FairQueue[int] = FairQueue(max_size=10, max_per_tenant=2)
    queue.put(1, tenant="greedy")
    queue.put(2, tenant="greedy")
    with pytest.raises(QueueFullError, match="tenant 'greedy' already has 2 requests waiting"):
        queue.put(3, tenant="greedy")
    queue.put(4, tenant="polite")
    assert queue.pending_by_tenant() == {"greedy": 2, "polite": 1}


def test_queue_full_error_survives_pickling() -> None:
    err = pickle.loads(pickle.dumps(QueueFullError("full", retry_after=7.0)))
    assert (str(err), err.retry_after) == ("full", 7.0)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [({"max_size": 0}, "max_size"), ({"max_size": 1, "max_per_tenant": 0}, "max_per_tenant")],
)
def test_bad_sizes_name_the_setting(kwargs: dict[str, int], field: str) -> None:
    with pytest.raises(ConfigError, match=field):
        FairQueue(**kwargs)


def test_remove_cancels_a_waiting_item() -> None:
    queue: FairQueue[str] = FairQueue(max_size=10)
    queue.put("a1", tenant="a")
    queue.put("b1", tenant="b")
    queue.put("a2", tenant="a")
    assert queue.remove("b1") is True
    assert queue.remove("b1") is False
    assert queue.remove("never") is False
    assert len(queue) == 2
    assert queue.pending_by_tenant() == {"a": 2}  # b left the rotation with its last item
    assert drain(queue) == ["a1", "a2"]


def test_get_returns_none_when_nothing_comes() -> None:
    queue: FairQueue[int] = FairQueue(max_size=1)
    assert queue.get(timeout=0) is None
    assert queue.get_nowait() is None
    start = time.monotonic()
    assert queue.get(timeout=0.05) is None
    assert time.monotonic() - start >= 0.04


def test_put_wakes_a_blocked_getter() -> None:
    queue: FairQueue[str] = FairQueue(max_size=1)
    got: list[str | None] = []
    getter = threading.Thread(target=lambda: got.append(queue.get(timeout=5)))
    getter.start()
    time.sleep(0.02)
    queue.put("hello")
    getter.join(timeout=5)
    assert got == ["hello"]


def test_close_wakes_blocked_getters_and_refuses_puts() -> None:
    queue: FairQueue[str] = FairQueue(max_size=4)
    got: list[str | None] = []
    getters = [threading.Thread(target=lambda: got.append(queue.get())) for _ in range(3)]
    for getter in getters:
        getter.start()
    time.sleep(0.02)
    queue.close()
    for getter in getters:
        getter.join(timeout=5)
        assert not getter.is_alive()
    assert got == [None, None, None]
    assert queue.closed
    with pytest.raises(LorafleetError, match="closed"):
        queue.put("late")


def test_close_still_hands_out_what_is_waiting() -> None:
    queue: FairQueue[str] = FairQueue(max_size=4)
    queue.put("a1", tenant="a")
    queue.put("b1", tenant="b")
    queue.close()
    assert [queue.get(), queue.get(), queue.get()] == ["a1", "b1", None]


def test_concurrent_producers_and_consumers_lose_and_duplicate_nothing() -> None:
    queue: FairQueue[tuple[str, int]] = FairQueue(max_size=16, retry_after=0.001)
    per_producer = 400
    received: list[tuple[str, int]] = []
    lock = threading.Lock()

    def produce(tenant: str) -> None:
        for i in range(per_producer):
            while True:
                try:
                    queue.put((tenant, i), tenant=tenant)
                    break
                except QueueFullError as err:
                    time.sleep(err.retry_after)

    def consume() -> None:
        while (item := queue.get()) is not None:
            with lock:
                received.append(item)

    producers = [threading.Thread(target=produce, args=(f"t{n}",)) for n in range(4)]
    consumers = [threading.Thread(target=consume) for _ in range(3)]
    for thread in producers + consumers:
        thread.start()
    for thread in producers:
        thread.join(timeout=30)
    queue.close()
    for thread in consumers:
        thread.join(timeout=30)

    assert len(received) == 4 * per_producer
    assert set(received) == {(f"t{n}", i) for n in range(4) for i in range(per_producer)}
    assert len(queue) == 0
