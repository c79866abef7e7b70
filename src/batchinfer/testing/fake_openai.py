"""A deterministic OpenAI-compatible server: the test double at the model boundary.

It serves ``/v1/chat/completions``, ``/v1/completions``, ``/v1/embeddings`` and ``/v1/responses``.
Every answer is derived from its prompt (``"echo: <last user text>"``, see ``fake_answers``), so a
test can check that each output landed on its own input line; with ``record_bodies`` it keeps
every request body it was sent (``bodies``), so a test can check what reached the server. Faults
are scripted *inside the prompt*, so one shared server can serve a clean line and a failing line
side by side:

* ``[fault:429x2]`` the first 2 requests with this exact last-user text get 429 with
  ``Retry-After: 0``, later ones succeed. ``[fault:500x1]`` likewise with 500; any 3-digit status
  works.
* ``[fault:400]`` (no ``xN``) fails every time; a 4xx answers
  ``{"error": {"message": "scripted bad request", ...}}``.
* ``[fault:hangx1]`` the first request sleeps ``hang_s`` (30 s, longer than any client timeout)
  before answering; ``[fault:hang]`` always does.

Setting ``faults`` to False makes it ignore the scripted faults from then on: a server that recovered.

``FakeOpenAIServer(tls=context)`` serves HTTPS with that server-side ``ssl.SSLContext`` (a test's
own CA, e.g. from ``trustme``); with ``record_peers`` it counts the client port of each request
(``peers``), so a test can tell which sockets (a proxy's?) its requests came from.

``refuse`` makes it answer every request as OpenAI does a bad key (``"auth"``: 401
``invalid_api_key``), an unknown model (``"model"``: 404 ``model_not_found``) or an account out of
credit (``"quota"``: 429 ``insufficient_quota``).

A capacity, to test and bench a client against (all off by default, see ``testing.capacity``): with
``capacity`` C a request that finds n in flight (itself included) takes ``latency_ms`` up to C and
``latency_ms * (n / C) ** thrash_exponent`` past it, so the server does less in all past C, as a
preempting vLLM does; with ``queue_limit`` a request that finds more than that in flight is answered
429 at once, without Retry-After (``queue_refused``). ``rpm_limit`` and ``tpm_limit`` are held as
OpenAI holds them, over slices of ``burst_s``: a request either cannot cover is refused 429 with
``retry-after-ms`` and ``retry-after`` (``rate_limited``), and every answer carries the
``x-ratelimit-*`` headers. A request's tokens are a quarter of its body's bytes plus its
``max_tokens`` (else ``default_max_tokens``) times its ``n``. Limits set after the start take
effect at ``reset()``.

Use it in tests as ``with FakeOpenAIServer() as srv: srv.base_url``, or from a shell:
``python -m batchinfer.testing.fake_openai --port 8001 --latency-ms 50``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import re
import signal
import socket
import ssl
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from aiohttp import web

from batchinfer import jsonwire
from batchinfer.engines.pacing import request_tokens
from batchinfer.error_codes import ErrorCode
from batchinfer.testing import fake_answers
from batchinfer.testing.capacity import RateLimits, slowdown

HOST = "127.0.0.1"  # a test double must never be reachable from outside the machine
_ROUTES = {
    "/v1/chat/completions": fake_answers.CHAT,
    "/v1/completions": fake_answers.COMPLETIONS,
    "/v1/embeddings": fake_answers.EMBEDDINGS,
    "/v1/responses": fake_answers.RESPONSES,
}
_FAULT = re.compile(r"\[fault:(\d{3}|hang)(?:x(\d+))?\]")
_BAD_REQUEST_MESSAGE = "scripted bad request"


def steady_rate(times: list[float], low: float = 0.1, high: float = 0.9) -> float | None:
    """Answers per second between the ``low`` and ``high`` shares of all answers: the rate once a
    client is up to speed, without its start and its tail."""
    if len(times) < 20:
        return None
    first, last = int(len(times) * low), int(len(times) * high) - 1
    span = times[last] - times[first]
    return round((last - first) / span, 1) if span > 0 else None


def _error(
    status: int, message: str, kind: str, headers: dict[str, str] | None = None, code: str | int | None = None
) -> web.Response:
    body = jsonwire.dumps({"error": {"message": message, "type": kind, "code": code or status}})
    return web.Response(status=status, body=body, content_type="application/json", headers=headers)


# What OpenAI answers every request when the key, the model or the quota is wrong (``refuse``).
_REFUSALS = {
    "auth": (
        401,
        "Incorrect API key provided: sk-fake. Find your key at your provider.",
        "invalid_request_error",
        "invalid_api_key",
    ),
    "model": (
        404,
        "The model `fake-model` does not exist or you do not have access to it.",
        "invalid_request_error",
        ErrorCode.model_not_found,
    ),
    "quota": (
        429,
        "You exceeded your current quota, please check your plan and billing details.",
        "insufficient_quota",
        "insufficient_quota",
    ),
}


@dataclass
class FakeOpenAI:
    """The server's behaviour and its counters. Handlers all run on one event loop, and readers in
    other threads only take snapshots, so plain attributes are safe under the GIL."""

    latency_ms: float = 0.0
    max_choices: int | None = None  # fewer choices than ``n`` asks for, to exercise n emulation
    fail_rate_429: float = 0.0
    fail_rate_500: float = 0.0
    seed: int = 0
    hang_s: float = 30.0
    model: str = "fake-model"
    record_bodies: bool = False  # keep every request body (``bodies``) for tests that check them
    refuse: str | None = None  # "auth", "model" or "quota": every request refused so (``_REFUSALS``)
    faults: bool = True  # False: the faults scripted in prompts are ignored (the server recovered)
    record_peers: bool = False  # count the client port of each request (``peers``)
    # The capacity model (module docstring): None leaves each part of it off.
    capacity: int | None = None  # in flight before latency rises
    thrash_exponent: float = 2.0  # how steeply latency rises past the capacity
    queue_limit: int | None = None  # in flight past which a request is refused at once
    rpm_limit: int | None = None
    tpm_limit: int | None = None
    burst_s: float = 1.0  # the slice per-minute limits are held over
    default_max_tokens: int = 16  # what a request without max_tokens is counted for
    clock: Callable[[], float] = time.monotonic  # the rate limits' clock: a test's fake one

    requests_total: int = field(default=0, init=False)
    queue_refused: int = field(default=0, init=False)
    rate_limited: int = field(default=0, init=False)
    tokens_admitted: int = field(default=0, init=False)  # what the admitted requests counted for
    in_flight: int = field(default=0, init=False)
    max_in_flight: int = field(default=0, init=False)
    prompts: Counter[str] = field(default_factory=Counter, init=False)  # also drives fault scripts
    statuses: Counter[int] = field(default_factory=Counter, init=False)
    last_authorization: str | None = field(default=None, init=False)
    bodies: list[tuple[str, Any]] = field(default_factory=list, init=False)  # (endpoint kind, body)
    peers: Counter[int] = field(default_factory=Counter, init=False)  # client port -> requests
    # Wall-clock times (time.time(), comparable across processes) of each request's arrival and of
    # each answer: a benchmark reads when the first request came and the steady rate from them.
    arrived_at: list[float] = field(default_factory=list, init=False)
    answered_at: list[float] = field(default_factory=list, init=False)

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)  # seeded: a reliability run is reproducible
        self._limits = self._new_limits()
        # ``prompts`` grows on the server's thread while a test's thread reads it.
        self._prompts_lock = threading.Lock()

    def _new_limits(self) -> RateLimits | None:
        if self.rpm_limit is None and self.tpm_limit is None:
            return None
        return RateLimits(self.rpm_limit, self.tpm_limit, self.burst_s, self.clock)

    def reset(self) -> None:
        """Zero the counters, restart fault scripts (they count per text in ``prompts``) and fill
        the rate limits' buckets again."""
        self.requests_total = 0
        self.queue_refused = self.rate_limited = self.tokens_admitted = 0
        self._limits = self._new_limits()
        self.max_in_flight = self.in_flight
        with self._prompts_lock:  # not between a request's count and its fault script's read of it
            self.prompts = Counter()
        self.statuses = Counter()
        self.last_authorization = None
        self.bodies = []
        self.peers = Counter()
        self.arrived_at, self.answered_at = [], []
        self._rng = random.Random(self.seed)

    def sent(self, prefix: str) -> int:
        """Requests that reached the model for prompts starting with ``prefix``, safe to ask from
        any thread while the server runs."""
        with self._prompts_lock:
            return sum(count for text, count in self.prompts.items() if text.startswith(prefix))

    def stats(self) -> dict[str, Any]:
        with self._prompts_lock:
            prompts = dict(self.prompts)
        return {
            "requests_total": self.requests_total,
            "in_flight": self.in_flight,
            "max_in_flight": self.max_in_flight,
            "queue_refused": self.queue_refused,
            "rate_limited": self.rate_limited,
            "tokens_admitted": self.tokens_admitted,
            "prompts": prompts,
            "statuses": {str(k): v for k, v in self.statuses.items()},
            "last_authorization": self.last_authorization,
            "first_request_at": self.arrived_at[0] if self.arrived_at else None,
            "last_answer_at": self.answered_at[-1] if self.answered_at else None,
            "steady_rps": steady_rate(self.answered_at),
        }

    def make_app(self) -> web.Application:
        app = web.Application()
        for path, kind in _ROUTES.items():
            app.router.add_post(path, partial(self._serve, kind))
        app.router.add_get("/v1/models", self._models)
        app.router.add_get("/stats", self._get_stats)
        app.router.add_post("/stats/reset", self._reset_stats)
        return app

    async def _serve(self, kind: str, request: web.Request) -> web.Response:
        self.arrived_at.append(time.time())
        self.requests_total += 1
        self.in_flight += 1
        arrived = self.in_flight  # what the capacity model weighs this request by
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        self.last_authorization = request.headers.get("Authorization")
        if self.record_peers and request.transport is not None:
            self.peers[request.transport.get_extra_info("peername")[1]] += 1
        try:
            response = await self._answer(kind, request, arrived)
        finally:
            self.in_flight -= 1
        if self._limits is not None:
            response.headers.update(self._limits.headers())
        self.statuses[response.status] += 1
        self.answered_at.append(time.time())
        return response

    async def _answer(self, kind: str, request: web.Request, arrived: int) -> web.Response:
        try:
            raw = await request.read()
            body = jsonwire.loads(raw)
            if self.record_bodies:
                self.bodies.append((kind, body))
            text = fake_answers.prompt_text(kind, body)
        except (ValueError, KeyError, TypeError) as exc:
            message = f"request body is not a {kind} request: {exc}"
            return _error(400, message, "invalid_request_error")
        # Refused before it reaches the model, so it does not count in a fault script either.
        refusal = self._refusal(len(raw), body, arrived)
        if refusal is not None:
            return refusal
        with self._prompts_lock:
            self.prompts[text] += 1
            seen = self.prompts[text]

        if self.latency_ms:
            # Past its capacity every request in the server is slower (``capacity.slowdown``).
            factor = slowdown(arrived, self.capacity, self.thrash_exponent)
            await asyncio.sleep(self.latency_ms * factor / 1000)
        failure = await self._scripted_failure(text, seen)
        if failure is not None:
            return failure
        return web.Response(
            body=jsonwire.dumps(self._payload(kind, body, text)), content_type="application/json"
        )

    def _refusal(self, body_bytes: int, body: dict[str, Any], arrived: int) -> web.Response | None:
        # The rate limits first, as OpenAI's gateway holds them before a request reaches a server.
        if self._limits is not None:
            tokens = request_tokens(body_bytes, body, self.default_max_tokens)
            refused = self._limits.admit(tokens)
            if refused is not None:
                self.rate_limited += 1
                return _error(429, refused.message, refused.kind, refused.headers, "rate_limit_exceeded")
            self.tokens_admitted += tokens
        if self.queue_limit is not None and arrived > self.queue_limit:
            # No Retry-After: the server is full, it has no limit to say when it will be free again.
            self.queue_refused += 1
            message = f"The server is full: {arrived} requests in flight, the limit is {self.queue_limit}."
            return _error(429, message, "rate_limit_error", code="rate_limit_exceeded")
        return None

    async def _scripted_failure(self, text: str, seen: int) -> web.Response | None:
        if self.refuse is not None:
            status, message, kind, code = _REFUSALS[self.refuse]
            return _error(status, message, kind, code=code)
        if self.fail_rate_429 or self.fail_rate_500:
            roll = self._rng.random()
            if roll < self.fail_rate_429:
                return _error(429, "random rate limit", "rate_limit_error", {"Retry-After": "0"})
            if roll < self.fail_rate_429 + self.fail_rate_500:
                return _error(500, "random server error", "server_error")
        fault = _FAULT.search(text) if self.faults else None
        if not fault or (fault.group(2) is not None and seen > int(fault.group(2))):
            return None
        kind = fault.group(1)
        if kind == "hang":
            await asyncio.sleep(self.hang_s)
            return None
        if (status := int(kind)) == 429:
            return _error(429, "scripted rate limit", "rate_limit_error", {"Retry-After": "0"})
        if status >= 500:
            return _error(status, f"scripted server error {status}", "server_error")
        return _error(status, _BAD_REQUEST_MESSAGE, "invalid_request_error")

    def _payload(self, kind: str, body: dict[str, Any], text: str) -> dict[str, Any]:
        number = self.requests_total
        if kind == fake_answers.CHAT:
            return fake_answers.chat_answer(body, text, number, self.model, self.max_choices)
        if kind == fake_answers.COMPLETIONS:
            return fake_answers.completions_answer(body, number, self.model, self.max_choices)
        if kind == fake_answers.EMBEDDINGS:
            return fake_answers.embeddings_answer(body, self.model)
        return fake_answers.responses_answer(body, text, number, self.model)

    async def _models(self, request: web.Request) -> web.Response:
        data = {
            "object": "list",
            "data": [{"id": self.model, "object": "model", "owned_by": "fake"}],
        }
        return web.Response(body=jsonwire.dumps(data), content_type="application/json")

    async def _get_stats(self, request: web.Request) -> web.Response:
        return web.Response(body=jsonwire.dumps(self.stats()), content_type="application/json")

    async def _reset_stats(self, request: web.Request) -> web.Response:
        self.reset()
        return web.Response(body=jsonwire.dumps(self.stats()), content_type="application/json")


async def _start(fake: FakeOpenAI, port: int, tls: ssl.SSLContext | None = None) -> tuple[web.AppRunner, int]:
    # access_log=None: logging each request would dominate the cost at benchmark rates.
    # handler_cancellation: a client that timed out on a hang cancels the handler instead of leaving
    # it asleep for hang_s, so in_flight drops back and shutdown never waits on it.
    runner = web.AppRunner(fake.make_app(), access_log=None, handler_cancellation=True, shutdown_timeout=0.5)
    await runner.setup()
    # Bind the socket ourselves: port 0 lets the OS pick, and we can read the port back publicly.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((HOST, port))
    await web.SockSite(runner, sock, backlog=1024, ssl_context=tls).start()
    return runner, sock.getsockname()[1]


@dataclass
class FakeOpenAIServer(FakeOpenAI):
    """``FakeOpenAI`` served on 127.0.0.1 from its own event loop in a daemon thread.

    ``with FakeOpenAIServer(latency_ms=0) as srv:`` then point a client at ``srv.base_url``; the
    counters (``srv.requests_total``, ``srv.max_in_flight``, ...) are readable from the test thread.
    """

    port: int = 0
    tls: ssl.SSLContext | None = None  # serve HTTPS with this server-side context

    def __post_init__(self) -> None:
        super().__post_init__()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None

    @property
    def base_url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{HOST}:{self.port}/v1"

    def start(self) -> FakeOpenAIServer:
        loop = asyncio.new_event_loop()
        started = threading.Event()
        failure: list[BaseException] = []

        def serve() -> None:
            asyncio.set_event_loop(loop)
            try:
                self._runner, self.port = loop.run_until_complete(_start(self, self.port, self.tls))
            except BaseException as exc:  # surface bind errors in the caller's thread
                failure.append(exc)
                started.set()
                loop.close()
                return
            started.set()
            loop.run_forever()
            loop.close()

        self._loop = loop
        self._thread = threading.Thread(target=serve, name="fake-openai", daemon=True)
        self._thread.start()
        started.wait()
        if failure:
            raise failure[0]
        return self

    def stop(self) -> None:
        loop, thread, runner = self._loop, self._thread, self._runner
        self._loop = self._thread = self._runner = None
        if loop is None or thread is None:
            return
        if runner is not None and not loop.is_closed():
            with contextlib.suppress(Exception):
                asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(timeout=5)
            loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=5)

    def __enter__(self) -> FakeOpenAIServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


async def _serve_forever(fake: FakeOpenAI, port: int) -> None:
    runner, bound = await _start(fake, port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    print(f"http://{HOST}:{bound}/v1", flush=True)  # scripts wait for this line to know the port
    try:
        await stop.wait()
    finally:
        await runner.cleanup()


def from_argv(argv: list[str] | None = None) -> tuple[FakeOpenAI, int]:
    """The server a command line asks for, and its port."""
    parser = argparse.ArgumentParser(description="A deterministic OpenAI-compatible chat server.")
    parser.add_argument("--port", type=int, default=8001, help="0 lets the OS pick one")
    parser.add_argument("--latency-ms", type=float, default=0.0)
    parser.add_argument("--max-choices", type=int, default=None)
    parser.add_argument("--fail-rate-429", type=float, default=0.0)
    parser.add_argument("--fail-rate-500", type=float, default=0.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--hang-s", type=float, default=30.0)
    parser.add_argument("--model", default="fake-model")
    parser.add_argument("--capacity", type=int, default=None, help="in flight before latency rises")
    parser.add_argument("--thrash-exponent", type=float, default=2.0)
    parser.add_argument("--queue-limit", type=int, default=None, help="in flight past which: 429")
    parser.add_argument("--rpm", type=int, default=None, help="requests a minute")
    parser.add_argument("--tpm", type=int, default=None, help="tokens a minute")
    parser.add_argument("--burst-s", type=float, default=1.0, help="the slice a minute's limit is held over")
    args = parser.parse_args(argv)
    fake = FakeOpenAI(
        latency_ms=args.latency_ms,
        max_choices=args.max_choices,
        fail_rate_429=args.fail_rate_429,
        fail_rate_500=args.fail_rate_500,
        seed=args.seed,
        hang_s=args.hang_s,
        model=args.model,
        capacity=args.capacity,
        thrash_exponent=args.thrash_exponent,
        queue_limit=args.queue_limit,
        rpm_limit=args.rpm,
        tpm_limit=args.tpm,
        burst_s=args.burst_s,
    )
    return fake, args.port


def main(argv: list[str] | None = None) -> None:
    fake, port = from_argv(argv)
    asyncio.run(_serve_forever(fake, port))


if __name__ == "__main__":
    main()
