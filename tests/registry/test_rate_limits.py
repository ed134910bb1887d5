"""Per-key rate limits in the database: a token bucket per key, shared by every Registry (every replica)
on the database, refilled with time, and never giving the last token twice to takers racing for it."""

from __future__ import annotations

import threading
from collections.abc import Callable

import pytest

from lorafleet.errors import QuotaExceededError
from lorafleet.registry import Registry
from lorafleet.registry.rate_limits import RateLimits
from lorafleet.registry.tables import Tenant


class Clock:
    """Wall-clock seconds that move only when the test says so."""

    def __init__(self, start: float = 1_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def key_id(registry: Registry, tenant: Tenant) -> str:
    key, _ = registry.tenants.create_key(tenant.id)
    return key.id


def outcomes(limits: RateLimits, key_id: str, per_minute: int, times: int) -> list[float | None]:
    """None for each request let through, the retry-after seconds for each refused."""
    results: list[float | None] = []
    for _ in range(times):
        try:
            limits.take(key_id, per_minute)
            results.append(None)
        except QuotaExceededError as err:
            results.append(err.retry_after)
    return results


def test_two_replicas_draw_from_one_bucket_that_refills_with_time(
    registry: Registry, open_registry: Callable[[], Registry], key_id: str
) -> None:
    clock = Clock()
    replica_a = RateLimits(registry.db, clock=clock)
    replica_b = RateLimits(open_registry().db, clock=clock)
    assert outcomes(replica_a, key_id, 3, 2) == [None, None]
    assert outcomes(replica_b, key_id, 3, 2) == [None, pytest.approx(20.0)]  # one left, then 60/3 s
    clock.now += 10.0  # half a token back
    assert outcomes(replica_a, key_id, 3, 1) == [pytest.approx(10.0)]
    clock.now += 10.0
    assert outcomes(replica_b, key_id, 3, 2) == [None, pytest.approx(20.0)]
    clock.now += 3600.0  # a full bucket holds at most `per_minute`
    assert outcomes(replica_a, key_id, 3, 4) == [None, None, None, pytest.approx(20.0)]


def test_a_clock_behind_the_last_count_refills_nothing(registry: Registry, key_id: str) -> None:
    clock = Clock()
    limits = RateLimits(registry.db, clock=clock)
    assert outcomes(limits, key_id, 1, 1) == [None]
    clock.now -= 30.0  # another replica's clock, half a minute behind
    assert outcomes(limits, key_id, 1, 1) == [pytest.approx(60.0)]


def test_keys_have_buckets_of_their_own(registry: Registry, tenant: Tenant, key_id: str) -> None:
    other, _ = registry.tenants.create_key(tenant.id, name="second")
    limits = RateLimits(registry.db, clock=Clock())
    assert outcomes(limits, key_id, 1, 2) == [None, pytest.approx(60.0)]
    assert outcomes(limits, other.id, 1, 1) == [None]


def test_racing_replicas_never_take_more_than_the_bucket_holds(
    registry: Registry, open_registry: Callable[[], Registry], key_id: str
) -> None:
    """Eight takers on four Registries, all at once, on a bucket of five (the clock stands still): five
    get through, whichever they are. The first take of all also races to create the bucket's row."""
    clock = Clock()
    replicas = [RateLimits(open_registry().db, clock=clock) for _ in range(4)]
    start = threading.Barrier(8)
    results: list[float | None] = []
    lock = threading.Lock()

    def take_three(limits: RateLimits) -> None:
        start.wait()
        mine = outcomes(limits, key_id, 5, 3)
        with lock:
            results.extend(mine)

    threads = [threading.Thread(target=take_three, args=(replicas[i % 4],)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert len(results) == 24
    assert results.count(None) == 5
