"""The pace of one HTTP model (engines/pacing.py): in virtual time, the adaptive in-flight limit
against a simulated server with a capacity, the per-minute pacer, and what the server's headers say;
then the engine over real HTTP."""

from __future__ import annotations

import asyncio
import heapq
import itertools
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

from batchinfer.engines.base import InferenceOutcome
from batchinfer.engines.configs import OpenAIEngineConfig
from batchinfer.engines.openai_compat import OpenAIEngine
from batchinfer.engines.pacing import AdaptiveLimit, RatePacer, parse_openai_duration, request_tokens
from batchinfer.testing.capacity import slowdown
from batchinfer.testing.engines import ask, completion
from batchinfer.testing.fake_openai import FakeOpenAIServer


@dataclass
class Clock:
    now: float = 0.0

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.now += seconds


def thrashing(capacity: int, latency_s: float = 0.05) -> Callable[[int], float]:
    """A server's latency for a request that finds ``n`` in flight: the fake server's, flat up to its
    capacity, then rising as (n / capacity)^2 (``testing.capacity.slowdown``)."""
    return lambda n: latency_s * slowdown(n, capacity)


def linear(latency_s: float, per_request_s: float) -> Callable[[int], float]:
    return lambda n: latency_s + per_request_s * n


@dataclass
class Simulation:
    """A client that keeps ``limit.current`` requests in flight against a server whose latency
    depends on how many are in flight when a request arrives; virtual time, no sleeping."""

    server: Callable[[int], float]
    limit: AdaptiveLimit
    clock: Clock
    answers: list[float] = field(default_factory=list)  # when each answer came
    limits: list[int] = field(default_factory=list)  # the limit after each answer

    def run(self, answers: int) -> None:
        in_flight: list[tuple[float, float]] = []  # (answered at, sent at)
        while len(self.answers) < answers:
            while len(in_flight) < self.limit.current:
                sent = self.clock.now
                heapq.heappush(in_flight, (sent + self.server(len(in_flight) + 1), sent))
            done, sent = heapq.heappop(in_flight)
            self.clock.now = done
            self.limit.answered(done - sent, sent)
            self.answers.append(done)
            self.limits.append(self.limit.current)

    def throughput(self, last: int) -> float:
        """Answers a second over the last ``last`` answers."""
        window = self.answers[-last:]
        return (len(window) - 1) / (window[-1] - window[0])


def simulate(server: Callable[[int], float], answers: int = 20_000, **limit: object) -> Simulation:
    clock = Clock()
    sim = Simulation(server, AdaptiveLimit(clock=clock, **limit), clock)  # type: ignore[arg-type]
    sim.run(answers)
    return sim


def best_fixed(server: Callable[[int], float]) -> float:
    return max(n / server(n) for n in range(1, 257))


# At a small capacity one request more is a large step past it (5 in flight on a server that
# takes 4 answer 1.56 times slower), so the limit's wobble costs more there.
@pytest.mark.parametrize(("capacity", "share"), [(4, 0.85), (16, 0.9), (48, 0.9)])
def test_auto_settles_near_the_servers_capacity_and_gets_nine_tenths_of_the_best_fixed_throughput(
    capacity: int, share: float
) -> None:
    server = thrashing(capacity)
    sim = simulate(server, ceiling=256)
    assert sim.throughput(5_000) >= share * best_fixed(server)
    assert sim.throughput(5_000) >= 1.5 * (64 / server(64)) or capacity >= 48  # a fixed 64 thrashes
    assert capacity * 0.8 <= sum(sim.limits[-5_000:]) / 5_000 <= capacity * 1.2


def test_auto_follows_a_server_whose_capacity_changes() -> None:
    clock = Clock()
    sim = Simulation(thrashing(32), AdaptiveLimit(clock=clock, ceiling=256), clock)
    sim.run(10_000)
    high = sum(sim.limits[-2_000:]) / 2_000
    sim.server = thrashing(8)  # another tenant took most of the server
    sim.run(20_000)
    low = sum(sim.limits[-2_000:]) / 2_000
    assert 26 <= high <= 38 and 6 <= low <= 10, (high, low)


def test_auto_never_passes_its_ceiling_on_a_server_that_never_slows() -> None:
    sim = simulate(lambda n: 0.05, answers=5_000, ceiling=40)
    assert max(sim.limits) == 40 and sim.limits[-1] == 40
    assert sim.limit.reason == "growing"


def test_auto_on_a_server_answering_in_a_millisecond_takes_its_wavering_for_noise_not_a_queue() -> None:
    # Anywhere from 1 to 4 ms, whatever is in flight (a busy core, a garbage collection): as ratios,
    # windows up to twice as slow as the quietest; as time, 3 ms, less than any queue worth easing.
    def settled(**limit: float) -> float:
        wavering = random.Random(7)
        sim = simulate(lambda n: wavering.uniform(0.001, 0.004), answers=5_000, ceiling=64, **limit)
        return sum(sim.limits[-1_000:]) / 1_000

    assert settled() >= 56
    assert settled(queue_slack_s=0.0) <= 8  # ratios alone: the wavering drives the limit down


def test_a_refusal_halves_the_limit_at_once() -> None:
    clock = Clock()
    limit = AdaptiveLimit(ceiling=64, initial=40, clock=clock)
    clock.now = 5.0
    limit.refused(sent_at=1.0)
    assert (limit.current, limit.reason) == (20, "overloaded")
    limit.refused(sent_at=1.0)  # sent before the halving: no second one for it
    assert limit.current == 20
    for _ in range(10):
        clock.now += 1
        limit.refused(sent_at=clock.now)
    assert limit.current == 1  # never below the floor


def test_a_latency_target_holds_the_servers_latency_there_instead_of_at_its_capacity() -> None:
    # A server that slows a little with each request in flight: 20 ms + 2 ms each.
    server = linear(0.020, 0.002)
    sim = simulate(server, ceiling=256, latency_target_s=0.050)
    settled = sum(sim.limits[-2_000:]) / 2_000
    assert 13 <= settled <= 16  # 20 + 2 * 15 = 50 ms
    assert sim.limit.reason in ("latency target", "growing")


def test_background_priority_derives_its_target_from_the_quiet_latency_it_measures_first() -> None:
    sim = simulate(linear(0.020, 0.002), answers=5_000, ceiling=256, background=True)
    assert sim.limit.latency_target_s == pytest.approx(0.020 * 1.2, rel=0.15)
    assert sum(sim.limits[-1_000:]) / 1_000 <= 6  # 20 + 2 n <= 24 ms: a few in flight


def pace(clock: Clock, **limits: int) -> RatePacer:
    return RatePacer(clock=clock, sleep=clock.sleep, **limits)  # type: ignore[arg-type]


def test_requests_a_minute_go_evenly_not_in_a_burst_of_the_minutes_allowance() -> None:
    clock = Clock()
    pacer = pace(clock, requests_per_minute=600)  # 10 a second

    async def send(count: int) -> list[float]:
        times = []
        for _ in range(count):
            await pacer.take(0)
            times.append(clock.now)
        return times

    times = asyncio.run(send(100))
    assert sum(t == 0 for t in times) <= 4  # a quarter second's slack, not a minute's allowance
    assert times[-1] == pytest.approx(99 / 10 - 0.25, abs=0.11)  # then one every 0.1 s
    gaps = [b - a for a, b in itertools.pairwise(times[10:])]
    assert all(gap == pytest.approx(0.1) for gap in gaps)


def test_tokens_a_minute_weigh_each_request_by_its_estimated_tokens() -> None:
    clock = Clock()
    pacer = pace(clock, tokens_per_minute=60_000)  # 1,000 a second

    async def send() -> float:
        for _ in range(21):
            await pacer.take(500)  # two a second
        return clock.now

    assert asyncio.run(send()) == pytest.approx(10 - 0.25, abs=0.01)


@pytest.mark.parametrize(
    ("status", "headers", "retry_after", "paused_s"),
    [
        (429, {}, 2.0, 2.0),
        (429, {"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "6s"}, 1.0, 6.0),
        (200, {"x-ratelimit-remaining-tokens": "0", "x-ratelimit-reset-tokens": "1m30s"}, None, 90.0),
        (200, {"x-ratelimit-remaining-requests": "7", "x-ratelimit-reset-requests": "6s"}, None, 0.0),
        (500, {}, 3.0, 0.0),
    ],
    ids=["429 retry-after", "remaining requests 0", "remaining tokens 0", "remaining 7", "500"],
)
def test_what_the_server_says_pauses_every_request_not_only_the_one_it_answered(
    status: int, headers: dict[str, str], retry_after: float | None, paused_s: float
) -> None:
    clock = Clock(100.0)
    pacer = pace(clock)
    pacer.heard(status, retry_after, headers)

    async def next_request() -> float:
        await pacer.take(0)
        return clock.now

    assert asyncio.run(next_request()) == pytest.approx(100.0 + paused_s)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("1s", 1.0),
        ("250ms", 0.25),
        ("6m0s", 360.0),
        ("1h2m3.5s", 3723.5),
        ("0s", 0.0),
        ("soon", None),
        ("", None),
    ],
)
def test_openai_durations_read_as_seconds(text: str, seconds: float | None) -> None:
    assert parse_openai_duration(text) == seconds


@pytest.mark.parametrize(
    ("payload", "tokens"),
    [
        ({}, 100 + 16),  # no max_tokens: the default's worth
        ({"max_tokens": 1000}, 100 + 1000),
        ({"max_tokens": 10, "max_completion_tokens": 50}, 100 + 10),
        ({"max_completion_tokens": 50, "n": 3}, 100 + 150),
        ({"max_output_tokens": 7, "n": None}, 100 + 7),
    ],
)
def test_a_requests_tokens_are_a_quarter_of_its_bytes_plus_max_tokens_for_each_choice(
    payload: dict[str, object], tokens: int
) -> None:
    # One count for the engine's pacing and the fake server's limits, as hosted APIs document it.
    assert request_tokens(403, payload) == tokens


# -- the engine, over real HTTP ----------------------------------------------------------------


def infer_paced(
    server: FakeOpenAIServer, lines: int, **options: Any
) -> tuple[list[InferenceOutcome], dict[str, Any] | None]:
    """``lines`` prompts through an engine of ``options`` against ``server``; the outcomes, and the
    pace the engine settled on."""
    config = {"id": "paced", "base_url": server.base_url, "model": "fake-model", "timeout_s": 10, **options}
    engine = OpenAIEngine(OpenAIEngineConfig(**config))
    try:
        return engine.infer([ask(i + 1, f"p{i}") for i in range(lines)]), engine.pace()
    finally:
        engine.close()


@pytest.mark.slow
def test_auto_on_a_server_that_never_slows_grows_to_its_ceiling_and_says_so() -> None:
    with FakeOpenAIServer(latency_ms=25) as server:
        outcomes, pace = infer_paced(server, 1_500, max_concurrency="auto", concurrency_ceiling=16)
    assert [completion(o).generations[0].text for o in outcomes] == [f"echo: p{i}" for i in range(1_500)]
    assert server.max_in_flight == 16  # the ceiling, reached (from a start of 8) and never passed
    # Where it ends is not asserted here: on a busy machine (the suite runs on two workers) the
    # in-process server's latency wavers, and each window that reads as slower steps the limit back
    # for the reason "latency" (a CI run ended at 11). Staying at the ceiling of a server that never
    # slows is the virtual-time test's to prove (test_auto_never_passes_its_ceiling_...).
    assert pace is not None and pace["concurrency"] <= 16 and pace["reason"] in ("growing", "latency")
    assert pace["requests_per_minute"] > 0


@pytest.mark.slow
def test_auto_against_a_server_past_its_capacity_settles_near_it_over_real_http() -> None:
    # The fake server slows as (n / 8)^2 past 8 in flight (testing/capacity.py).
    with FakeOpenAIServer(latency_ms=40, capacity=8) as server:
        outcomes, pace = infer_paced(server, 1_500, max_concurrency="auto", concurrency_ceiling=64)
    assert all(completion(o) for o in outcomes)
    assert pace is not None and 4 <= pace["concurrency"] <= 16, pace  # not the 64 it could take
    print(f"settled at {pace['concurrency']} in flight ({pace['reason']}) against a capacity of 8")


def test_a_model_that_sets_no_max_concurrency_is_auto_up_to_the_old_fixed_default_of_64() -> None:
    config = OpenAIEngineConfig(id="plain", base_url="http://127.0.0.1:1/v1", model="m")
    assert config.max_concurrency == "auto" and config.adaptive
    assert config.replica_concurrency == 64 and config.default_chunk_size == 512  # sized as before
    with FakeOpenAIServer() as server:
        outcomes, pace = infer_paced(server, 300)
    assert all(completion(o) for o in outcomes)
    assert pace is not None and pace["concurrency"] <= 64 and server.max_in_flight <= 64


def test_a_fixed_max_concurrency_has_no_pace_to_report() -> None:
    with FakeOpenAIServer() as server:
        assert infer_paced(server, 1, max_concurrency=4)[1] is None


def test_a_requests_a_minute_limit_paces_the_engine_evenly_over_real_http() -> None:
    with FakeOpenAIServer() as server:
        started = time.monotonic()
        _, pace = infer_paced(server, 30, max_requests_per_minute=1_200)  # 20 a second
        took = time.monotonic() - started
    # 6 within the first quarter second's slack, then one every 50 ms.
    assert took >= (30 - 6) / 20
    assert pace is not None and pace["max_requests_per_minute"] == 1_200


@pytest.mark.slow
@pytest.mark.parametrize(
    ("limit", "field"), [("rpm_limit", "max_requests_per_minute"), ("tpm_limit", "max_tokens_per_minute")]
)
def test_a_job_paced_to_a_servers_per_minute_limit_is_never_refused_by_it(limit: str, field: str) -> None:
    # 600 requests or 30,000 tokens a minute over 1 s slices; a request here counts ~40 tokens.
    per_minute = {"rpm_limit": 600, "tpm_limit": 30_000}[limit]
    with FakeOpenAIServer(**{limit: per_minute}) as server:
        outcomes, _ = infer_paced(server, 40, **{field: per_minute})
    assert all(completion(o) for o in outcomes)
    assert server.rate_limited == 0 and server.requests_total == 40
