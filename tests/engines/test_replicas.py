"""The replica set of an HTTP model: which replica takes each request, each replica's cap, and how
a replica goes out of rotation and comes back. Pure asyncio with a hand-driven clock: no server."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import pytest

from batchinfer.engines.replicas import Lease, ReplicaSet

T = TypeVar("T")
URLS = ["http://a/v1", "http://b/v1", "http://c/v1"]


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def run(body: Callable[[], Coroutine[Any, Any, T]]) -> T:
    return asyncio.run(body())


def replica_set(limit: int = 4, urls: list[str] | None = None, clock: Clock | None = None) -> ReplicaSet:
    return ReplicaSet(urls or URLS, limit, clock=clock or Clock())


async def take(replicas: ReplicaSet, count: int) -> list[Lease]:
    return [await replicas.acquire() for _ in range(count)]


def urls_of(leases: list[Lease]) -> list[str]:
    return [lease.replica.url for lease in leases]


def test_requests_go_to_the_replica_with_the_fewest_outstanding_taking_turns_on_ties() -> None:
    async def body() -> None:
        replicas = replica_set()
        first = await take(replicas, 3)
        assert urls_of(first) == URLS  # a tie each time: one each, in turn
        b = first[1]
        replicas.release(b, "ok")  # b now has the fewest outstanding
        assert (await replicas.acquire()).replica is b.replica
        replicas.release(first[0], "ok")
        replicas.release(first[2], "ok")
        assert sorted(urls_of(await take(replicas, 2))) == [URLS[0], URLS[2]]

    run(body)


def test_a_replica_never_takes_more_than_its_limit_and_the_next_request_waits_for_a_slot() -> None:
    async def body() -> None:
        replicas = replica_set(limit=2, urls=URLS[:2])
        held = await take(replicas, 4)
        assert sorted(urls_of(held)) == [URLS[0], URLS[0], URLS[1], URLS[1]]
        waiting = asyncio.ensure_future(replicas.acquire())
        await asyncio.sleep(0)
        assert not waiting.done()
        replicas.release(held[1], "ok")
        lease = await asyncio.wait_for(waiting, 1)
        assert lease.replica is held[1].replica
        assert max(r.outstanding for r in replicas.replicas) == 2

    run(body)


def test_waiters_are_served_first_come_first_served() -> None:
    async def body() -> None:
        replicas = replica_set(limit=1, urls=URLS[:1])
        [held] = await take(replicas, 1)
        waiters = [asyncio.ensure_future(replicas.acquire()) for _ in range(3)]
        await asyncio.sleep(0)
        replicas.release(held, "ok")
        await asyncio.sleep(0)
        assert [w.done() for w in waiters] == [True, False, False]

    run(body)


def test_a_cancelled_waiter_leaves_no_slot_taken() -> None:
    async def body() -> None:
        replicas = replica_set(limit=1, urls=URLS[:1])
        [held] = await take(replicas, 1)
        waiting = asyncio.ensure_future(replicas.acquire())
        await asyncio.sleep(0)
        waiting.cancel()
        replicas.release(held, "ok")  # hands the slot to the waiter in the moment it is cancelled
        with pytest.raises(asyncio.CancelledError):
            await waiting
        assert replicas.replicas[0].outstanding == 0
        assert (await asyncio.wait_for(replicas.acquire(), 1)).replica.url == URLS[0]

    run(body)


def test_a_refused_connection_takes_a_replica_out_of_rotation_at_once() -> None:
    async def body() -> None:
        replicas = replica_set()
        a, _, _ = await take(replicas, 3)
        replicas.release(a, "refused")
        assert not a.replica.in_rotation
        assert replicas.can_reroute(a.replica)  # the request goes elsewhere, at no retry's cost
        assert URLS[0] not in urls_of(await take(replicas, 6))

    run(body)


def test_three_failures_in_a_row_take_a_replica_out_and_an_answer_between_them_starts_again() -> None:
    async def body() -> None:
        replicas = replica_set(urls=URLS[:1] + URLS[1:2])
        a = replicas.replicas[0]
        for health in ("failed", "failed", "ok", "failed", "failed"):
            lease = await replicas.acquire(avoid=replicas.replicas[1])
            replicas.release(lease, health)  # type: ignore[arg-type]
            assert a.in_rotation
        lease = await replicas.acquire(avoid=replicas.replicas[1])
        replicas.release(lease, "failed")
        assert not a.in_rotation

    run(body)


def test_a_request_that_failed_on_a_replica_waits_for_another_rather_than_go_back_to_it() -> None:
    async def body() -> None:
        replicas = replica_set(limit=1, urls=URLS[:2])
        a, b = await take(replicas, 2)
        replicas.release(a, "failed")  # a has room again, b is full
        rerouted = asyncio.ensure_future(replicas.acquire(avoid=a.replica))
        await asyncio.sleep(0)
        assert not rerouted.done()  # not back on the replica it just failed on
        replicas.release(b, "ok")
        assert (await rerouted).replica is b.replica

    run(body)


def test_a_broken_connection_is_rerouted_at_once_but_a_5xx_from_a_replica_in_rotation_is_not() -> None:
    async def body() -> None:
        replicas = replica_set()
        a = await replicas.acquire()
        replicas.release(a, "failed")
        assert a.replica.in_rotation
        assert replicas.can_reroute(a.replica, connection_failed=True)
        assert not replicas.can_reroute(a.replica)  # a 5xx: retried with backoff, as on one server
        lone = replica_set(urls=URLS[:1])
        assert not lone.can_reroute(lone.replicas[0], connection_failed=True)  # nowhere else to go

    run(body)


def test_a_timeout_or_a_4xx_keeps_a_replica_in_rotation() -> None:
    async def body() -> None:
        replicas = replica_set()
        for lease in await take(replicas, 3):
            replicas.release(lease, "timeout")
        for lease in await take(replicas, 3):
            replicas.release(lease, "ok")  # a 4xx or a 429 is an answer
        assert len(replicas.in_rotation()) == 3

    run(body)


def test_an_out_replica_is_probed_by_one_request_after_its_cooldown_and_comes_back_when_it_answers() -> None:
    async def body() -> None:
        clock = Clock()
        replicas = replica_set(clock=clock)
        a = replicas.replicas[0]
        replicas.release(await replicas.acquire(), "refused")
        clock.now += 0.9  # within the first cooldown (1 s): not tried
        early = await take(replicas, 4)
        assert a not in [lease.replica for lease in early]
        clock.now += 0.2
        probe = await replicas.acquire()
        assert probe.replica is a and probe.probe
        assert a not in [lease.replica for lease in await take(replicas, 4)]  # one probe at a time
        replicas.release(probe, "ok")
        assert a.in_rotation and a.cooldown_s == 1.0

    run(body)


def test_a_failed_probe_keeps_the_replica_out_twice_as_long_each_time_up_to_30_s() -> None:
    async def body() -> None:
        clock = Clock()
        replicas = replica_set(clock=clock)
        a = replicas.replicas[0]
        replicas.release(await replicas.acquire(), "refused")
        waits = []
        for _ in range(7):
            assert a.out_until is not None
            waits.append(round(a.out_until - clock.now, 3))
            clock.now = a.out_until
            probe = await replicas.acquire()
            assert probe.replica is a and probe.probe
            replicas.release(probe, "timeout")  # a probe that does not answer failed
        assert waits == [1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0]

    run(body)


def test_requests_sent_before_a_replica_went_out_do_not_lengthen_its_cooldown() -> None:
    async def body() -> None:
        clock = Clock()
        replicas = replica_set(urls=URLS[:1] + URLS[1:2], clock=clock)
        first, second = await replicas.acquire(), await replicas.acquire(avoid=replicas.replicas[1])
        a = first.replica
        assert second.replica is a
        replicas.release(first, "refused")
        until = a.out_until
        replicas.release(second, "refused")
        assert a.out_until == until

    run(body)


def test_with_every_replica_out_requests_still_go_to_them_as_to_one_server_that_is_down() -> None:
    async def body() -> None:
        replicas = replica_set()
        for lease in await take(replicas, 3):
            replicas.release(lease, "refused")
        assert replicas.in_rotation() == []
        lease = await asyncio.wait_for(replicas.acquire(), 1)
        assert not replicas.can_reroute(lease.replica)  # the request's retries count, as today
        replicas.release(lease, "ok")
        assert replicas.in_rotation() == [lease.replica]  # its first answer puts it back

    run(body)


def test_a_replica_set_needs_at_least_one_url() -> None:
    with pytest.raises(ValueError, match="at least one"):
        ReplicaSet([], 4)
