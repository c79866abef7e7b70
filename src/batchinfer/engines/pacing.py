"""How fast one HTTP model is sent requests: how many at once, and how many a minute (pure asyncio,
no I/O, an injectable clock).

``AdaptiveLimit`` is ``max_concurrency: auto``, the default: a gradient on observed latency, as
Netflix's concurrency-limits does it. Each window of answers to requests sent since the limit last
moved (about one round trip's worth) gives a latency, the median; the lowest window is the server's
latency with nothing queued, measured again every 200 windows at a quarter of the limit (as BBR
probes its round trip). While a window's latency stays within ``tolerance`` of that (or within
``queue_slack_s`` of it), the limit grows (doubling until the first sign of a queue, then slowly);
once it climbs, the limit shrinks in proportion, so it settles where the server's latency starts to
rise: past that point a server that preempts (vLLM out of KV cache) answers more slowly for
everyone and does less in all. A 429, a 503 or a timeout halves it at once. With a latency target
(``latency_target_ms``, or one derived from the first windows for ``priority: background``) the
target replaces the tolerance: the job gives way while the server answers slower than that, so
that interactive users of the same server keep their latency.

``RatePacer`` holds ``max_requests_per_minute`` and ``max_tokens_per_minute`` evenly (a generic
cell rate: each request is due a cost's share of the minute after the one before, with a quarter
second of slack), since hosted APIs enforce a minute's limit over shorter slices and refuse a burst
of a whole minute's allowance. It also pauses every request, not only the one that was told, when
the server says to wait: a rate-limit 429's ``Retry-After``, or ``x-ratelimit-remaining-*`` at 0
until its ``x-ratelimit-reset-*``.
"""

from __future__ import annotations

import asyncio
import math
import re
import statistics
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from batchinfer.engines.configs import OpenAIEngineConfig

Clock = Callable[[], float]
# Why the limit last moved: the server's latency rose, it refused (429/503/timeout), the latency
# target, or growth while nothing held it back.
Reason = Literal["starting", "growing", "latency", "overloaded", "latency target"]

TOLERANCE = 1.15  # a window this much slower than the quiet latency means requests are queueing
# ... and at least this much slower: a server answering in a millisecond or two wavers by more than
# 15% with the client's own machine (a busy core, a garbage collection), which is not a queue.
QUEUE_SLACK_S = 0.005
SLACK_S = 0.25  # how far ahead of the even pace a request may go (a server's slice is ~1 s)
GRANT_S = 0.25  # a grant of a shared per-minute limit is this many seconds' worth
SMOOTHING = 0.2  # each window moves the limit a fifth of the way to where its latency says
GROWTH = 1.0  # what a window that saw no queue adds, before smoothing
BACKGROUND_TARGET = 1.2  # priority: background keeps latency within this of the quiet latency
BYTES_PER_TOKEN = 4  # the usual estimate for English text, as hosted APIs make it for rate limits
DEFAULT_MAX_TOKENS = 16  # what a request without max_tokens is counted for, as hosted APIs do
RATE_WINDOW_S = 10  # the answers a minute reported are those of the last ten seconds
PROBE_EVERY = 200  # windows between two that measure the quiet latency again
_MAX_TOKENS_KEYS = ("max_tokens", "max_completion_tokens", "max_output_tokens")
_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)")


@dataclass
class AdaptiveLimit:
    """The in-flight limit of one model in one process, fed each answer's latency and each refusal."""

    ceiling: int
    floor: int = 1
    initial: int = 8
    tolerance: float = TOLERANCE
    queue_slack_s: float = QUEUE_SLACK_S
    latency_target_s: float | None = None
    background: bool = False  # derive the target from the first windows' quiet latency
    clock: Clock = time.monotonic
    limit: float = field(init=False)
    reason: Reason = field(default="starting", init=False)
    _samples: list[float] = field(default_factory=list, init=False)
    _window_started: float = field(default=0.0, init=False)
    _overloaded: bool = field(default=False, init=False)
    _slow_start: bool = field(default=True, init=False)
    quiet_s: float | None = field(default=None, init=False)  # the server's latency with no queue
    _windows: int = field(default=0, init=False)
    _probe: float | None = field(default=None, init=False)  # probing: the limit to go back to

    def __post_init__(self) -> None:
        # A background job measures the quiet latency it derives its target from one at a time.
        initial = 1 if self.background and self.latency_target_s is None else self.initial
        self.limit = float(max(self.floor, min(initial, self.ceiling)))
        self._window_started = self.clock()

    @property
    def current(self) -> int:
        return max(self.floor, int(self.limit))

    def answered(self, latency_s: float, sent_at: float) -> None:
        """One answer, ``latency_s`` after it was sent (at ``sent_at``, by ``clock``)."""
        if sent_at >= self._window_started:  # one sent before says nothing of the limit now
            self._samples.append(latency_s)
            self._maybe_close_window()

    def refused(self, sent_at: float) -> None:
        """A 429, a 503 or a timeout: the server is past what it can take."""
        if sent_at >= self._window_started:  # the others were halved for already
            self._overloaded = True
            self._maybe_close_window()

    def _maybe_close_window(self) -> None:
        # A window is about one round trip: as many answers as the limit lets be in flight.
        if len(self._samples) < max(4, self.current) and not self._overloaded:
            return
        if self._overloaded:
            self._set(self.limit / 2, "overloaded")
            self._slow_start = False
        elif self._probe is not None:
            self.quiet_s, self.limit, self._probe = statistics.median(self._samples), self._probe, None
        else:
            self._adjust(statistics.median(self._samples))
        self._samples, self._overloaded, self._window_started = [], False, self.clock()

    def _adjust(self, latency_s: float) -> None:
        quiet = self.quiet_s = min(latency_s, self.quiet_s or latency_s)
        self._windows += 1
        if self._windows % PROBE_EVERY == 0:
            # Now and then a window at a quarter of the limit measures the quiet latency again
            # (as BBR probes its round trip), so that it follows a server that became slower for
            # good (longer prompts, a smaller GPU) without mistaking a queue for the server.
            self._probe = self.limit
            self.limit = max(float(self.floor), self.limit / 4)
            return
        if self.background and self.latency_target_s is None and self._windows >= 3:
            self.latency_target_s = quiet * BACKGROUND_TARGET
            self.limit = max(self.limit, float(self.initial))
        target = self.latency_target_s
        allowed = target if target is not None else max(quiet * self.tolerance, quiet + self.queue_slack_s)
        gradient = max(0.5, min(1.0, allowed / latency_s))
        if gradient < 1.0:
            # The first queue ends the doubling with a step all the way back; later ones smoothed.
            step = 1.0 if self._slow_start else SMOOTHING
            self._slow_start = False
            reason: Reason = "latency target" if target is not None else "latency"
            self._set(self.limit + step * (self.limit * gradient - self.limit), reason)
        elif self._slow_start:
            # A background job grows gently: an overshoot is what its neighbours would feel.
            self._set(self.limit * (1.25 if self.background else 2.0), "growing")
        else:
            self._set(self.limit + SMOOTHING * GROWTH, "growing")

    def _set(self, limit: float, reason: Reason) -> None:
        self.limit = max(float(self.floor), min(float(self.ceiling), limit))
        self.reason = reason


def request_tokens(
    body_bytes: int, payload: Mapping[str, Any], default_max_tokens: int = DEFAULT_MAX_TOKENS
) -> int:
    """A request's tokens as a hosted API counts them against its per-minute limit: the prompt's
    (a quarter of the body's bytes) plus the most it may generate, for each of its ``n``."""
    most = next((payload[k] for k in _MAX_TOKENS_KEYS if isinstance(payload.get(k), int)), default_max_tokens)
    n = payload.get("n")
    return body_bytes // BYTES_PER_TOKEN + most * (n if isinstance(n, int) and n > 0 else 1)


def parse_openai_duration(text: str | None) -> float | None:
    """Seconds in OpenAI's ``x-ratelimit-reset-*`` form ("1s", "6m0s", "250ms", "1h2m3.5s")."""
    if not text:
        return None
    parts = _DURATION.findall(text)
    if not parts or "".join(a + u for a, u in parts) != text.strip():
        return None
    scale = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
    return sum(float(amount) * scale[unit] for amount, unit in parts)


@dataclass
class _Cell:
    """A generic cell rate: ``rate`` per second, each cost due its share after the last."""

    rate: float
    due: float = 0.0  # when the next cost is due at the even pace

    def wait_s(self, now: float) -> float:
        return max(0.0, self.due - SLACK_S - now)

    def take(self, now: float, cost: float) -> None:
        self.due = max(self.due, now) + cost / self.rate  # idle time is not saved up beyond the slack


RateKind = Literal["requests", "tokens"]


class Grants(Protocol):
    """Where a process takes its part of a model's per-minute limits shared with every other process
    (Prefect's rate limits: ``runtime.model_rates``). ``take`` blocks until ``amount`` is granted."""

    def take(self, kind: RateKind, amount: int) -> None: ...


def grant_size(per_minute: int) -> int:
    """What one grant takes: a quarter second's worth, so that a process asks a few times a second."""
    return max(1, math.ceil(per_minute / 60 * GRANT_S))


@dataclass
class RatePacer:
    """``max_requests_per_minute`` / ``max_tokens_per_minute`` for one model in one process, and the
    server's own word on when to wait. Use it on one event loop."""

    requests_per_minute: int | None = None
    tokens_per_minute: int | None = None
    clock: Clock = time.monotonic
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep
    paused_until: float = 0.0
    grants: Grants | None = None  # the limits are shared with other processes through these
    waits: int = field(default=0, init=False)  # requests that waited for the server's word
    _granted: dict[RateKind, int] = field(default_factory=lambda: {"requests": 0, "tokens": 0}, init=False)
    _asking: dict[RateKind, asyncio.Future[None]] = field(default_factory=dict, init=False)  # the next grant

    def __post_init__(self) -> None:
        self._requests = _Cell(self.requests_per_minute / 60) if self.requests_per_minute else None
        self._tokens = _Cell(self.tokens_per_minute / 60) if self.tokens_per_minute else None
        self._lock = asyncio.Lock()  # one request at a time takes its place in the pace

    @property
    def limited(self) -> bool:
        return bool(self.requests_per_minute or self.tokens_per_minute)

    async def take(self, tokens: int) -> None:
        """Wait for this request's turn: after any pause the server asked for, at the even pace."""
        if not self.limited and self.paused_until <= self.clock():
            return  # nothing to wait for (most models, most of the time): not even the lock
        async with self._lock:
            while (delay := self._delay()) > 0:
                await self.sleep(delay)
            now = self.clock()
            for cell, cost in ((self._requests, 1), (self._tokens, tokens)):
                if cell is not None:
                    cell.take(now, cost)
            if self.grants is not None:
                await self._granted_for(tokens)

    async def _granted_for(self, tokens: int) -> None:
        """Take from the shared limits what this request costs, a grant at a time."""
        assert self.grants is not None
        costs: tuple[tuple[RateKind, int | None, int], ...] = (
            ("requests", self.requests_per_minute, 1),
            ("tokens", self.tokens_per_minute, tokens),
        )
        for kind, per_minute, cost in costs:
            if not per_minute:
                continue
            size = grant_size(per_minute)
            while self._granted[kind] < cost:
                await self._next_grant(kind, max(cost - self._granted[kind], size))
            self._granted[kind] -= cost
            if self._granted[kind] < size and kind not in self._asking:
                # Ask for the next grant while this one is spent: the wait for it overlaps.
                self._asking[kind] = asyncio.ensure_future(self._grant(kind, size))

    async def _next_grant(self, kind: RateKind, amount: int) -> None:
        asking = self._asking.get(kind)
        await (asking if asking is not None else self._grant(kind, amount))

    async def _grant(self, kind: RateKind, amount: int) -> None:
        assert self.grants is not None
        try:
            await asyncio.to_thread(self.grants.take, kind, amount)
            self._granted[kind] += amount
        finally:
            self._asking.pop(kind, None)

    def _delay(self) -> float:
        # A request is charged its cost as it goes, so one that costs more than the slack still goes
        # once the pace has caught up, and pushes the next ones back by its share.
        now = self.clock()
        cells = [cell for cell in (self._requests, self._tokens) if cell is not None]
        return max([self.paused_until - now, *(cell.wait_s(now) for cell in cells)])

    def heard(self, status: int, retry_after_s: float | None, headers: Mapping[str, str]) -> None:
        """What an answer's headers say about the pace: every request waits, not only this one."""
        now = self.clock()
        until = now + retry_after_s if status == 429 and retry_after_s else 0.0
        for kind in ("requests", "tokens"):
            remaining = headers.get(f"x-ratelimit-remaining-{kind}")
            reset = parse_openai_duration(headers.get(f"x-ratelimit-reset-{kind}"))
            if remaining is not None and remaining.strip() == "0" and reset:
                until = max(until, now + reset)
        if until > self.paused_until:
            self.paused_until = until
            self.waits += 1


@dataclass
class Pace:
    """One model's pace in one process: its in-flight limit when ``auto``, its per-minute limits,
    and what the server's answers say. The engine waits on ``rate`` before each attempt and tells
    ``after`` what the answer was and when the request went (``clock``)."""

    adaptive: AdaptiveLimit | None
    rate: RatePacer
    counts_tokens: bool = False  # a tokens-a-minute limit: requests are weighed before they go
    listen: bool | None = None  # read every answer's rate-limit headers; None: the first one decides
    clock: Clock = time.monotonic
    _answers: deque[tuple[int, int]] = field(default_factory=deque, init=False)  # (second, answers)

    @property
    def concurrency(self) -> int | None:
        """The in-flight limit per replica now, when the model's is ``auto``."""
        return self.adaptive.current if self.adaptive is not None else None

    def after(
        self, status: int, headers: Mapping[str, str], retry_after_s: float | None, sent: float
    ) -> bool:
        """Take in one answer; True when the in-flight limit moved."""
        before = self.concurrency
        if self.listen is None:
            self.listen = any(name.lower().startswith("x-ratelimit-") for name in headers)
        if status != 200 or self.listen:
            self.rate.heard(status, retry_after_s, headers)
        if status == 200:
            self._count_answer()
        if self.adaptive is not None:
            if status in (429, 503):
                self.adaptive.refused(sent)
            elif status < 500:
                self.adaptive.answered(self.clock() - sent, sent)
        return self.concurrency != before

    def timed_out(self, sent: float) -> bool:
        """A request that got no answer in time; True when the in-flight limit moved."""
        before = self.concurrency
        if self.adaptive is not None:
            self.adaptive.refused(sent)
        return self.concurrency != before

    def _count_answer(self) -> None:
        second = int(self.clock())
        if self._answers and self._answers[-1][0] == second:
            self._answers[-1] = (second, self._answers[-1][1] + 1)
        else:
            self._answers.append((second, 1))
            while self._answers[0][0] <= second - RATE_WINDOW_S:
                self._answers.popleft()

    def answers_per_minute(self) -> int:
        """Answers a minute over the last ``RATE_WINDOW_S`` seconds (the current one not counted)."""
        now = int(self.clock())
        done = sum(count for second, count in self._answers if now - RATE_WINDOW_S <= second < now)
        return round(done * 60 / RATE_WINDOW_S)

    def summary(self) -> dict[str, Any] | None:
        """What the pace settled on and why, for the job's progress; None when there was nothing
        to decide (a fixed limit, no per-minute limits, no word from the server to wait)."""
        if self.adaptive is None and not self.rate.limited and not self.rate.waits:
            return None
        out: dict[str, Any] = {"requests_per_minute": self.answers_per_minute()}
        if self.adaptive is not None:
            out |= {"concurrency": self.adaptive.current, "reason": self.adaptive.reason}
            if self.adaptive.latency_target_s is not None:
                out["latency_target_ms"] = round(self.adaptive.latency_target_s * 1000, 1)
        if self.rate.requests_per_minute:
            out["max_requests_per_minute"] = self.rate.requests_per_minute
        if self.rate.tokens_per_minute:
            out["max_tokens_per_minute"] = self.rate.tokens_per_minute
        if self.rate.waits:
            out["server_asked_to_wait"] = self.rate.waits
        return out


def make_pace(config: OpenAIEngineConfig, grants: Grants | None) -> Pace:
    """The pace of ``config``'s model, sharing its per-minute limits through ``grants`` if given."""
    limit = None
    if config.adaptive:
        target = config.latency_target_ms / 1000 if config.latency_target_ms is not None else None
        background = config.priority == "background"
        limit = AdaptiveLimit(
            ceiling=config.replica_concurrency, latency_target_s=target, background=background
        )
    rate = RatePacer(config.max_requests_per_minute, config.max_tokens_per_minute, grants=grants)
    return Pace(limit, rate, counts_tokens=config.max_tokens_per_minute is not None)
