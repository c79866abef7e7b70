"""The fake OpenAI server's capacity model: its latency past a capacity, its queue limit, and its
per-minute limits held over slices as OpenAI holds them, with their headers."""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections.abc import Callable
from dataclasses import dataclass

import httpx
import pytest

from batchinfer.testing.capacity import (
    RateLimits,
    TokenBucket,
    openai_duration,
    slowdown,
)
from batchinfer.testing.fake_openai import FakeOpenAIServer, from_argv


@dataclass
class FakeClock:
    """Time that moves only when a test moves it (read from the server's thread too)."""

    now: float = 0.0

    def __call__(self) -> float:
        return self.now


def chat_body(text: str, **extra: object) -> bytes:
    """A chat request's body as the bytes that go on the wire, so a test knows their length."""
    return json.dumps({"model": "m", "messages": [{"role": "user", "content": text}], **extra}).encode()


def post(server: FakeOpenAIServer, body: bytes) -> httpx.Response:
    headers = {"Content-Type": "application/json"}
    return httpx.post(f"{server.base_url}/chat/completions", content=body, headers=headers, timeout=10)


def all_at_once(server: FakeOpenAIServer, bodies: list[bytes]) -> list[httpx.Response]:
    async def burst() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=server.base_url, timeout=10) as client:
            sends = (client.post("/chat/completions", content=body) for body in bodies)
            return list(await asyncio.gather(*sends))

    return asyncio.run(burst())


async def until(condition: Callable[[], bool]) -> None:
    """Wait for the server to reach a state (polled: no fixed sleep to hope it got there)."""
    deadline = time.monotonic() + 10
    while not condition():
        assert time.monotonic() < deadline, "the server never got there"
        await asyncio.sleep(0.01)


@pytest.mark.parametrize(
    ("in_flight", "capacity", "exponent", "factor"),
    [
        (1, 4, 2.0, 1.0),
        (4, 4, 2.0, 1.0),  # flat up to the capacity, itself included
        (5, 4, 2.0, 1.5625),
        (8, 4, 2.0, 4.0),  # twice the capacity: four times the latency
        (8, 4, 3.0, 8.0),
        (500, None, 2.0, 1.0),  # no capacity: no slowdown
    ],
)
def test_latency_is_flat_up_to_the_capacity_and_rises_faster_than_linearly_past_it(
    in_flight: int, capacity: int | None, exponent: float, factor: float
) -> None:
    assert slowdown(in_flight, capacity, exponent) == factor


def test_throughput_is_highest_at_the_capacity_and_falls_past_it() -> None:
    throughput = [n / slowdown(n, 16) for n in range(1, 65)]
    assert max(throughput) == throughput[15] == 16
    assert all(later < earlier for earlier, later in itertools.pairwise(throughput[15:]))


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "0s"),
        (-2, "0s"),
        (0.0004, "0s"),
        (0.25, "250ms"),
        (0.9996, "1s"),
        (1, "1s"),
        (1.5, "1.5s"),
        (17.28, "17.28s"),
        (90, "1m30s"),
        (360, "6m0s"),
        (3600, "1h0m0s"),
        (3723.5, "1h2m3.5s"),
    ],
)
def test_durations_are_written_as_openai_writes_its_reset_headers(seconds: float, text: str) -> None:
    assert openai_duration(seconds) == text


def test_a_bucket_holds_burst_s_of_the_minute_and_refills_continuously() -> None:
    clock = FakeClock()
    bucket = TokenBucket(600, burst_s=2.0, clock=clock)  # 10 a second, 20 at most
    assert bucket.capacity == 20
    bucket.take(20)
    assert bucket.wait_s(1) == pytest.approx(0.1)
    clock.now = 0.05
    assert bucket.wait_s(1) == pytest.approx(0.05)
    clock.now = 100.0
    bucket.take(20)  # never more than it holds, however long it waited
    assert bucket.wait_s(1) == pytest.approx(0.1)


@pytest.mark.parametrize(
    ("rpm", "admitted", "millis", "seconds"),
    [
        (300, 5, "200", "0.2"),  # 5 a second: the sixth waits a fifth of a second
        (480, 8, "125", "0.125"),
        (60, 1, "1000", "1"),
        (40, 1, "1500", "1.5"),  # two thirds of a request a second: a full bucket still lets one go
    ],
)
def test_a_burst_past_the_slice_is_refused_with_how_long_to_wait(
    rpm: int, admitted: int, millis: str, seconds: str
) -> None:
    clock = FakeClock()
    limits = RateLimits(rpm=rpm, clock=clock)
    assert [limits.admit(tokens=10) for _ in range(admitted)] == [None] * admitted
    refusal = limits.admit(tokens=10)
    assert refusal is not None and refusal.kind == "requests"
    assert refusal.headers == {"retry-after-ms": millis, "retry-after": seconds}
    assert refusal.message.startswith(f"Rate limit reached for requests per min (RPM): Limit {rpm}")
    clock.now = int(millis) / 1000  # waiting what it said is enough: the refusal took nothing
    assert limits.admit(tokens=10) is None


def test_a_refusal_for_tokens_takes_nothing_from_the_requests_bucket_either() -> None:
    limits = RateLimits(rpm=600, tpm=6000, clock=FakeClock())  # 10 requests, 100 tokens
    assert limits.admit(tokens=60) is None
    refusal = limits.admit(tokens=50)
    assert refusal is not None and refusal.kind == "tokens"
    assert refusal.headers["retry-after-ms"] == "100"  # 10 tokens short, at 100 a second
    assert limits.headers()["x-ratelimit-remaining-requests"] == "540"  # 9 left of 10, a minute's worth


def test_a_full_bucket_lets_a_request_larger_than_its_slice_go_but_not_one_over_the_minute() -> None:
    limits = RateLimits(tpm=6000, clock=FakeClock())  # 100 tokens a slice
    assert limits.admit(tokens=500) is None  # into debt: the next waits for it to be paid back
    waiting = limits.admit(tokens=1)
    assert waiting is not None and waiting.headers["retry-after-ms"] == "4010"
    too_large = limits.admit(tokens=6001)
    assert too_large is not None and too_large.headers == {}  # no wait would let it through
    assert too_large.message.startswith("Request too large for tokens per min (TPM): Limit 6000")


@pytest.mark.parametrize(
    ("burst_s", "taken", "remaining", "reset"),
    [
        (1.0, 0, "300", "0s"),
        (1.0, 2, "180", "400ms"),
        (1.0, 5, "0", "1s"),
        (2.0, 1, "270", "200ms"),  # 9 of 10 left: 90% of the minute's 300
        (60.0, 60, "240", "12s"),
    ],
)
def test_the_headers_give_the_minutes_limit_what_is_left_of_it_and_when_it_is_full_again(
    burst_s: float, taken: int, remaining: str, reset: str
) -> None:
    limits = RateLimits(rpm=300, burst_s=burst_s, clock=FakeClock())
    for _ in range(taken):
        assert limits.admit(tokens=1) is None
    assert limits.headers() == {
        "x-ratelimit-limit-requests": "300",
        "x-ratelimit-remaining-requests": remaining,
        "x-ratelimit-reset-requests": reset,
    }


@pytest.mark.slow
def test_past_the_queue_limit_the_extra_requests_get_429_without_retry_after_and_the_rest_200() -> None:
    async def scenario(server: FakeOpenAIServer) -> tuple[list[httpx.Response], list[httpx.Response]]:
        async with httpx.AsyncClient(base_url=server.base_url, timeout=30) as client:

            async def send(i: int) -> httpx.Response:
                return await client.post("/chat/completions", content=chat_body(f"line {i}"))

            admitted = [asyncio.create_task(send(i)) for i in range(2)]
            await until(lambda: server.in_flight == 2)  # both are in the server, for 1.5 s each
            extra = await asyncio.gather(*(send(i) for i in range(2, 5)))
            return list(await asyncio.gather(*admitted)), list(extra)

    with FakeOpenAIServer(latency_ms=1500, queue_limit=2) as server:
        admitted, extra = asyncio.run(scenario(server))
        assert [r.status_code for r in admitted] == [200, 200]
        assert [r.status_code for r in extra] == [429, 429, 429]
        assert not any("retry-after" in r.headers or "retry-after-ms" in r.headers for r in extra)
        assert extra[0].json()["error"]["code"] == "rate_limit_exceeded"
        assert not any(name.startswith("x-ratelimit-") for name in extra[0].headers)  # no limit set
        assert server.queue_refused == server.stats()["queue_refused"] == 3
        assert server.prompts == {"line 0": 1, "line 1": 1}  # the refused never reached the model


def test_a_request_that_finds_the_server_past_its_capacity_takes_the_slowdown_longer() -> None:
    async def scenario(server: FakeOpenAIServer) -> float:
        async with httpx.AsyncClient(base_url=server.base_url, timeout=30) as client:
            hanging = [
                asyncio.create_task(client.post("/chat/completions", content=chat_body(f"[fault:hang] {i}")))
                for i in range(2)
            ]
            await until(lambda: server.in_flight == 2)
            started = time.monotonic()
            answer = await client.post("/chat/completions", content=chat_body("third"))
            elapsed = time.monotonic() - started
            assert answer.status_code == 200
            for task in hanging:
                task.cancel()
            await asyncio.gather(*hanging, return_exceptions=True)
            return elapsed

    with FakeOpenAIServer(latency_ms=100, capacity=1) as server:
        # The third in flight on a server of capacity 1: (3 / 1) ** 2 = 9 times its 100 ms. A lower
        # bound only: a sleep is never shorter, however busy the machine.
        assert asyncio.run(scenario(server)) >= 0.9


def test_an_rpm_limited_server_lets_exactly_its_slice_through_a_burst_and_refuses_the_rest() -> None:
    with FakeOpenAIServer(rpm_limit=300, clock=FakeClock()) as server:  # time stands still: 5 go
        answers = all_at_once(server, [chat_body(f"burst {i}") for i in range(8)])
        assert sorted(r.status_code for r in answers) == [200] * 5 + [429] * 3
        for refused in (r for r in answers if r.status_code == 429):
            assert refused.headers["retry-after-ms"] == "200"
            assert refused.headers["retry-after"] == "0.2"
            assert refused.json()["error"]["type"] == "requests"
            assert refused.json()["error"]["code"] == "rate_limit_exceeded"
            assert refused.headers["x-ratelimit-remaining-requests"] == "0"
            assert refused.headers["x-ratelimit-reset-requests"] == "1s"
        assert all(r.headers["x-ratelimit-limit-requests"] == "300" for r in answers)
        assert server.rate_limited == server.stats()["rate_limited"] == 3


def test_an_rpm_limited_server_says_what_is_left_in_every_answer_and_refills_with_time() -> None:
    clock = FakeClock()
    with FakeOpenAIServer(rpm_limit=300, clock=clock) as server:
        answers = [post(server, chat_body(f"one by one {i}")) for i in range(6)]
        assert [r.status_code for r in answers] == [200] * 5 + [429]
        assert [r.headers["x-ratelimit-remaining-requests"] for r in answers] == [
            "240", "180", "120", "60", "0", "0"
        ]  # fmt: skip
        assert [r.headers["x-ratelimit-reset-requests"] for r in answers[:5]] == [
            "200ms", "400ms", "600ms", "800ms", "1s"
        ]  # fmt: skip
        assert "x-ratelimit-limit-tokens" not in answers[0].headers  # no tokens limit set
        clock.now = 0.2
        assert post(server, chat_body("after a fifth of a second")).status_code == 200
        assert post(server, chat_body("but only one")).status_code == 429
        server.reset()
        assert (server.rate_limited, post(server, chat_body("a full bucket again")).status_code) == (0, 200)


def test_a_tpm_limited_server_counts_the_bodys_bytes_and_max_tokens() -> None:
    body = chat_body("a prompt", max_tokens=1000)
    cost = len(body) // 4 + 1000
    with FakeOpenAIServer(tpm_limit=120_000, clock=FakeClock()) as server:  # 2,000 tokens a slice
        first, second = post(server, body), post(server, body)
        assert first.status_code == 200
        assert first.headers["x-ratelimit-limit-tokens"] == "120000"
        assert first.headers["x-ratelimit-remaining-tokens"] == str((2000 - cost) * 60)
        assert second.status_code == 429  # the bucket holds 2,000 - cost, less than cost
        assert second.json()["error"]["message"].startswith("Rate limit reached for tokens")
        # Short by cost - (2,000 - cost) tokens, which come back at 2 a millisecond.
        assert second.headers["retry-after-ms"] == str(cost - 1000)
        assert post(server, chat_body("a small one", max_tokens=1)).status_code == 200
        assert "x-ratelimit-limit-requests" not in first.headers


def test_the_command_line_sets_the_capacity_model() -> None:
    capacity = ["--capacity", "8", "--thrash-exponent", "3", "--queue-limit", "64"]
    fake, port = from_argv(["--port", "0", *capacity, "--rpm", "600", "--tpm", "90000", "--burst-s", "0.5"])
    assert port == 0
    assert (fake.capacity, fake.thrash_exponent, fake.queue_limit) == (8, 3.0, 64)
    assert (fake.rpm_limit, fake.tpm_limit, fake.burst_s) == (600, 90_000, 0.5)
    plain, _ = from_argv([])
    assert (plain.capacity, plain.queue_limit, plain.rpm_limit, plain.tpm_limit) == (None,) * 4
