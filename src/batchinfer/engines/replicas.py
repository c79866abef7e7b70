"""The replicas of one HTTP model, and which one takes the next request (pure asyncio, no I/O).

A model's ``base_urls`` are its replicas; a ``base_url`` alone is a set of one, so the engine has
one code path. Each replica takes at most ``limit`` requests at once (the model's
``max_concurrency``), and a request goes to the replica in rotation with the fewest outstanding,
ties taken in turn, so that replicas of uneven speed each get what they can answer.

A replica leaves the rotation when it refuses a connection, or after ``max_failures`` failures in
a row (a 5xx answer, or a connection that broke during the request: one keep-alive connection the
server had just closed is no reason to drop a replica, a few in a row are); the engine then sends
the failed request elsewhere at once. After a cooldown (1 s, doubling each time it fails again, up
to 30 s) the next request goes to it as a single trial (the probe): an answer puts it back, a
failure starts a longer cooldown. Probes ride on real requests, so an idle engine runs no timers.
When every replica is out, all of them take requests as if they were in: the engine then fails and
retries as it would against one server that is down, and the first answer puts that replica back.

Waiters are served first come, first served: a request that finds every replica full queues, and
each release hands the freed slot (or another one) to the oldest waiter.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

from batchinfer.error_codes import ErrorCode

MAX_FAILURES = 3  # consecutive failures (5xx, broken connections) that take a replica out
FIRST_COOLDOWN_S = 1.0
MAX_COOLDOWN_S = 30.0

# What one request learned about its replica: it answered (any status below 500), it refused the
# connection, it failed (answered 5xx, or the connection broke), it timed out, or nothing
# (cancelled before an answer).
Health = Literal["ok", "refused", "failed", "timeout", "none"]


@dataclass(eq=False)
class Replica:
    """One server of the model and what the set knows of it."""

    url: str
    limit: int
    outstanding: int = 0
    failures: int = 0  # failures (5xx, broken connections) in a row
    out_until: float | None = None  # None: in rotation; else when it may be probed
    cooldown_s: float = FIRST_COOLDOWN_S  # how long it stays out the next time it goes out
    probing: bool = False  # a probe is in flight: no second one until it is back

    @property
    def in_rotation(self) -> bool:
        return self.out_until is None

    @property
    def full(self) -> bool:
        return self.outstanding >= self.limit


@dataclass(frozen=True, eq=False)
class Lease:
    """One request's slot on a replica; give it back with ``ReplicaSet.release``."""

    replica: Replica
    probe: bool = False


class ReplicaSet:
    """Picks a replica for each request and keeps the rotation. Use it on one event loop."""

    def __init__(
        self,
        urls: Sequence[str],
        limit: int,
        *,
        max_failures: int = MAX_FAILURES,
        first_cooldown_s: float = FIRST_COOLDOWN_S,
        max_cooldown_s: float = MAX_COOLDOWN_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not urls:
            raise ValueError("a replica set needs at least one URL")
        self.replicas = [Replica(url, limit, cooldown_s=first_cooldown_s) for url in urls]
        self._max_failures = max_failures
        self._first_cooldown_s = first_cooldown_s
        self._max_cooldown_s = max_cooldown_s
        self._clock = clock
        self._turn = 0  # where the next tie-break starts, so that equal replicas take turns
        self._waiters: deque[tuple[asyncio.Future[Lease], Replica | None]] = deque()

    @property
    def urls(self) -> list[str]:
        return [replica.url for replica in self.replicas]

    def in_rotation(self) -> list[Replica]:
        return [replica for replica in self.replicas if replica.in_rotation]

    async def acquire(self, avoid: Replica | None = None) -> Lease:
        """A slot on the best replica, waiting in line for one if all are full. ``avoid``: a
        replica the request just failed on, taken only if no other one takes requests."""
        if not self._waiters and (lease := self._pick(avoid)) is not None:
            return lease  # nobody in line before us and a slot free: no need to queue
        waiter: asyncio.Future[Lease] = asyncio.get_running_loop().create_future()
        self._waiters.append((waiter, avoid))
        self._dispatch()
        try:
            return await waiter
        except asyncio.CancelledError:
            # Handed a slot in the same moment as cancelled: give it back, or it leaks.
            if waiter.done() and not waiter.cancelled():
                self.release(waiter.result(), "none")
            raise

    def release(self, lease: Lease, health: Health) -> None:
        """Give back ``lease``'s slot, with what the request learned of its replica."""
        replica = lease.replica
        replica.outstanding -= 1
        if lease.probe:
            replica.probing = False
        if health == "ok":
            self._back_in(replica)
        elif health == "refused":
            self._failed(replica, lease.probe)
        elif health == "failed":
            replica.failures += 1
            if replica.failures >= self._max_failures:
                self._failed(replica, lease.probe)
        elif health == ErrorCode.timeout and lease.probe:  # a probe must answer; a busy replica may be slow
            self._failed(replica, probe=True)
        self._dispatch()

    def set_limit(self, limit: int) -> None:
        """Each replica now takes at most ``limit`` at once (``max_concurrency: auto`` moved it);
        a replica over a lowered limit takes nothing new until enough of its requests are back."""
        for replica in self.replicas:
            replica.limit = limit
        self._dispatch()

    def can_reroute(self, replica: Replica, connection_failed: bool = False) -> bool:
        """True when a request that just failed on ``replica`` may go to another one without
        counting as a retry: that one is in rotation, and ``replica`` is out or its connection
        failed (that replica's trouble, not the model's; a 5xx from a replica in rotation may be
        the request's own and is retried with backoff, as on one server)."""
        others = any(other.in_rotation for other in self.replicas if other is not replica)
        return others and (connection_failed or not replica.in_rotation)

    # -- inside -----------------------------------------------------------------------------

    def _dispatch(self) -> None:
        """Hand free slots to the waiters, oldest first."""
        while self._waiters:
            waiter, avoid = self._waiters[0]
            if waiter.done():  # cancelled while it waited
                self._waiters.popleft()
                continue
            lease = self._pick(avoid)
            if lease is None:
                return
            self._waiters.popleft()
            waiter.set_result(lease)

    def _pick(self, avoid: Replica | None) -> Lease | None:
        now = self._clock()
        for replica in self.replicas:
            due = replica.out_until is not None and now >= replica.out_until
            if due and replica is not avoid and not replica.probing and not replica.full:
                replica.probing = True
                replica.outstanding += 1
                return Lease(replica, probe=True)
        # With every replica out, all take requests: they fail (and retry) as one server down would.
        candidates = self.in_rotation() or self.replicas
        # A request that just failed on ``avoid`` waits for another replica rather than go back to
        # it because the others are full: back there, it could fail on it again and again.
        candidates = [replica for replica in candidates if replica is not avoid] or candidates
        count = len(self.replicas)
        best: Replica | None = None
        for step in range(count):
            replica = self.replicas[(self._turn + step) % count]
            if replica.full or replica not in candidates:
                continue
            if best is None or replica.outstanding < best.outstanding:
                best = replica
        if best is None:
            return None
        self._turn = (self.replicas.index(best) + 1) % count
        best.outstanding += 1
        return Lease(best)

    def _back_in(self, replica: Replica) -> None:
        replica.failures = 0
        if not replica.in_rotation:
            replica.out_until = None
            replica.cooldown_s = self._first_cooldown_s

    def _failed(self, replica: Replica, probe: bool) -> None:
        """Out of rotation for its cooldown, unless it is out already (its requests sent before it
        went out fail too, and only its probe decides how long it stays out)."""
        if replica.in_rotation or probe:
            replica.out_until = self._clock() + replica.cooldown_s
            replica.cooldown_s = min(replica.cooldown_s * 2, self._max_cooldown_s)
            replica.failures = 0
