"""A bounded request queue that serves tenants in turn, so one tenant's burst cannot starve another.

Each tenant has its own FIFO line; the queue keeps a rotation of the tenants that have something
waiting, in the order they became non-empty. `get` takes the head of the first tenant's line and, if
that tenant still has items, sends it to the back of the rotation:

    puts:  a1 a2 a3 … a1000 (tenant a), b1 (tenant b), c1 c2 (tenant c)
    gets:  a1 b1 c1 a2 c2 a3 a4 …

A tenant that empties leaves the rotation and rejoins at the back when it puts again. The bound is on
the total number of waiting items (and, optionally, on each tenant's share); a full queue raises
`QueueFullError`, which carries a suggested `retry_after` the API sends as HTTP 429 + Retry-After.
All methods are thread-safe (one `threading.Condition`).
"""

from __future__ import annotations

import threading
from collections import deque
from typing import Generic, TypeVar

from lorafleet.errors import ConfigError, LorafleetError, QueueFullError

__all__ = ["FairQueue", "QueueFullError"]

T = TypeVar("T")


class FairQueue(Generic[T]):
    """A bounded, thread-safe queue served round-robin across tenants and FIFO within a tenant."""

    def __init__(self, max_size: int, *, retry_after: float = 1.0, max_per_tenant: int | None = None) -> None:
        """`max_size` items may wait in all; `max_per_tenant` (if set) bounds each tenant's share.

        `retry_after` is the number of seconds suggested to clients turned away by a full queue.
        """
        if max_size < 1:
            raise ConfigError(f"queue max_size must be ≥ 1 (got {max_size})")
        if max_per_tenant is not None and max_per_tenant < 1:
            raise ConfigError(f"queue max_per_tenant must be ≥ 1 or None (got {max_per_tenant})")
        if retry_after < 0:
            raise ConfigError(f"queue retry_after must be ≥ 0 seconds (got {retry_after})")
        self.max_size = max_size
        self.max_per_tenant = max_per_tenant
        self.retry_after = retry_after
        self._lines: dict[str, deque[T]] = {}  # tenant → its waiting items, oldest first
        self._turns: deque[str] = deque()  # tenants with items waiting, next to be served first
        self._size = 0
        self._closed = False
        self._cond = threading.Condition()

    def put(self, item: T, *, tenant: str = "default") -> None:
        """Queue `item` at the back of `tenant`'s line; raise `QueueFullError` if there is no room."""
        with self._cond:
            if self._closed:
                raise LorafleetError("the request queue is closed (the server is shutting down)")
            if self._size >= self.max_size:
                raise QueueFullError(
                    f"the request queue is full ({self._size} of {self.max_size} waiting); "
                    f"retry after {self.retry_after:g} s",
                    retry_after=self.retry_after,
                )
            line = self._lines.get(tenant)
            if self.max_per_tenant is not None and line is not None and len(line) >= self.max_per_tenant:
                raise QueueFullError(
                    f"tenant {tenant!r} already has {len(line)} requests waiting, its limit; "
                    f"retry after {self.retry_after:g} s",
                    retry_after=self.retry_after,
                )
            if line is None:
                line = self._lines[tenant] = deque()
                self._turns.append(tenant)
            line.append(item)
            self._size += 1
            self._cond.notify()

    def get(self, timeout: float | None = None) -> T | None:
        """The next item in round-robin order, or None if none came in time.

        `timeout=None` blocks until an item arrives or the queue is closed; `0` never blocks; a
        positive number blocks at most that many seconds. After `close`, waiting items are still
        handed out, and None once the queue is empty.
        """
        with self._cond:
            self._cond.wait_for(lambda: self._size > 0 or self._closed, timeout)
            return self._pop()

    def get_nowait(self) -> T | None:
        """The next item in round-robin order, or None if the queue is empty; never blocks."""
        with self._cond:
            return self._pop()

    def remove(self, item: T) -> bool:
        """Take a waiting `item` out (its client went away); False if it is not waiting any more.

        Items are matched as `list.remove` does: the same object, or an equal one.
        """
        with self._cond:
            for tenant, line in self._lines.items():
                try:
                    line.remove(item)
                except ValueError:
                    continue
                self._size -= 1
                if not line:
                    del self._lines[tenant]
                    self._turns.remove(tenant)
                return True
            return False

    def close(self) -> None:
        """Refuse further puts and wake every blocked `get` (they return what is left, then None)."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    @property
    def closed(self) -> bool:
        """Whether `close` has been called."""
        return self._closed

    def __len__(self) -> int:
        with self._cond:
            return self._size

    def pending_by_tenant(self) -> dict[str, int]:
        """How many items each tenant has waiting, in the order the tenants will next be served."""
        with self._cond:
            return {tenant: len(self._lines[tenant]) for tenant in self._turns}

    def _pop(self) -> T | None:
        """Take the head of the next tenant's line (the caller holds the lock)."""
        if not self._turns:
            return None
        tenant = self._turns.popleft()
        line = self._lines[tenant]
        item = line.popleft()
        if line:
            self._turns.append(tenant)
        else:
            del self._lines[tenant]
        self._size -= 1
        return item
