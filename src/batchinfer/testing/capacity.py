"""The fake OpenAI server's capacity model, as pure logic with an injectable clock.

``slowdown`` is what a server past its capacity does to every request in it (a vLLM out of KV cache
preempts and recomputes, so it answers slower and does less in all). ``RateLimits`` holds requests
and tokens a minute as OpenAI enforces them, over short slices: a token bucket per limit that holds
``burst_s`` seconds' worth, so a burst of a whole minute's allowance is refused. It also writes the
``x-ratelimit-*`` and ``retry-after`` headers a refusal and every answer carry. A request's tokens
are counted as the engine counts them (``engines.pacing.request_tokens``): one estimate, as hosted
APIs document it.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

Clock = Callable[[], float]
_LABELS = {"requests": "RPM", "tokens": "TPM"}


def slowdown(in_flight: int, capacity: int | None, exponent: float = 2.0) -> float:
    """How many times its quiet latency a request takes that finds ``in_flight`` (itself included):
    1 up to the capacity, then ``(in_flight / capacity) ** exponent``. With an exponent above 1 the
    throughput ``in_flight / latency`` falls past the capacity."""
    if capacity is None or in_flight <= capacity:
        return 1.0
    return float((in_flight / capacity) ** exponent)


def openai_duration(seconds: float) -> str:
    """Seconds as OpenAI writes ``x-ratelimit-reset-*`` (Go's durations, to the millisecond):
    "0s", "250ms", "1s", "1.5s", "1m30s", "6m0s", "1h0m0s"."""
    millis = round(seconds * 1000)
    if millis <= 0:
        return "0s"
    if millis < 1000:
        return f"{millis}ms"
    hours, rest = divmod(millis, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    text = f"{hours}h" if hours else ""
    text += f"{minutes}m" if hours or minutes else ""
    return text + _seconds(rest) + "s"


def _seconds(millis: int) -> str:
    """Whole seconds, with the milliseconds as decimals only when there are some ("1", "0.125")."""
    whole, part = divmod(millis, 1000)
    return f"{whole}.{part:03d}".rstrip("0") if part else str(whole)


@dataclass
class TokenBucket:
    """One per-minute limit held over slices: it holds ``per_minute / 60 * burst_s``, starts full and
    refills continuously at ``per_minute / 60`` a second."""

    per_minute: int
    burst_s: float = 1.0
    clock: Clock = time.monotonic
    level: float = field(init=False)
    _stamp: float = field(init=False)

    def __post_init__(self) -> None:
        if self.per_minute <= 0 or self.burst_s <= 0:
            raise ValueError("a per-minute limit and its burst_s must be positive")
        self.level = self.capacity
        self._stamp = self.clock()

    @property
    def capacity(self) -> float:
        return self.per_minute / 60 * self.burst_s

    @property
    def rate(self) -> float:
        return self.per_minute / 60

    def wait_s(self, cost: float) -> float | None:
        """Seconds until the bucket covers ``cost``: 0 covers it now, None never (over the minute's
        whole limit, as OpenAI refuses a request too large)."""
        if cost > self.per_minute:
            return None
        self._refill()
        # A full bucket covers a request larger than one slice (and goes into debt), or a small limit
        # (30 RPM holds half a request a second) would refuse everything, which OpenAI does not.
        return max(0.0, (min(cost, self.capacity) - self.level) / self.rate)

    def take(self, cost: float) -> None:
        self._refill()
        self.level -= cost

    def remaining(self) -> int:
        """What is left, reported as a minute's worth (the header's figure is per minute)."""
        self._refill()
        return max(0, min(self.per_minute, math.floor(self.level * 60 / self.burst_s)))

    def reset_s(self) -> float:
        """Seconds until the bucket is full again."""
        self._refill()
        return (self.capacity - self.level) / self.rate

    def _refill(self) -> None:
        now = self.clock()
        self.level = min(self.capacity, self.level + (now - self._stamp) * self.rate)
        self._stamp = now


@dataclass(frozen=True)
class Refusal:
    """Why a request was refused: the limit's kind ("requests" or "tokens"), OpenAI's message, and
    the retry headers (none for a request too large to ever go)."""

    kind: str
    message: str
    headers: dict[str, str]


@dataclass
class RateLimits:
    """Requests and tokens a minute, each a ``TokenBucket``; a limit left None is not held."""

    rpm: int | None = None
    tpm: int | None = None
    burst_s: float = 1.0
    clock: Clock = time.monotonic
    buckets: dict[str, TokenBucket] = field(init=False)

    def __post_init__(self) -> None:
        limits = {"requests": self.rpm, "tokens": self.tpm}
        self.buckets = {
            kind: TokenBucket(limit, self.burst_s, self.clock)
            for kind, limit in limits.items()
            if limit is not None
        }

    def admit(self, tokens: int) -> Refusal | None:
        """Take one request of ``tokens`` from the buckets, or refuse it and take nothing."""
        costs = {"requests": 1, "tokens": tokens}
        waits = {kind: bucket.wait_s(costs[kind]) for kind, bucket in self.buckets.items()}
        too_large = [kind for kind, wait in waits.items() if wait is None]
        if too_large:
            kind = too_large[0]
            return Refusal(kind, self._too_large(kind, costs[kind]), {})
        short = {kind: wait for kind, wait in waits.items() if wait}
        if short:
            kind = max(short, key=lambda k: short[k])
            return self._rate_limited(kind, costs[kind], short[kind])
        for kind, bucket in self.buckets.items():
            bucket.take(costs[kind])
        return None

    def headers(self) -> dict[str, str]:
        """OpenAI's ``x-ratelimit-*`` headers for every limit held, as they stand now."""
        headers = {}
        for kind, bucket in self.buckets.items():
            headers[f"x-ratelimit-limit-{kind}"] = str(bucket.per_minute)
            headers[f"x-ratelimit-remaining-{kind}"] = str(bucket.remaining())
            headers[f"x-ratelimit-reset-{kind}"] = openai_duration(bucket.reset_s())
        return headers

    def _rate_limited(self, kind: str, cost: int, wait_s: float) -> Refusal:
        # Rounded up, so that a client that waits exactly this long is let through; the round to
        # microseconds first keeps float noise (200.00000000000003) from adding a millisecond.
        millis = max(1, math.ceil(round(wait_s * 1000, 3)))
        limit = self.buckets[kind].per_minute
        message = (
            f"Rate limit reached for {kind} per min ({_LABELS[kind]}): Limit {limit}, "
            f"Requested {cost}. Please try again in {openai_duration(millis / 1000)}."
        )
        return Refusal(kind, message, {"retry-after-ms": str(millis), "retry-after": _seconds(millis)})

    def _too_large(self, kind: str, cost: int) -> str:
        limit = self.buckets[kind].per_minute
        return (
            f"Request too large for {kind} per min ({_LABELS[kind]}): Limit {limit}, Requested {cost}. "
            "The input or output tokens must be reduced in order to run successfully."
        )
