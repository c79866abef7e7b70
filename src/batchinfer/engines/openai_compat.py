"""The engine for any OpenAI-compatible server (vLLM, llama.cpp, TGI, OpenAI, ...): chat
completions, completions, embeddings and responses, each request's body sent as the line gave it.

Shape: ``infer`` is synchronous and called from many Prefect task threads at once. All HTTP runs
on ONE private asyncio loop in a daemon thread, through ONE HTTP transport (connection reuse;
aiohttp or httpx as ``http_client`` says, see ``http_transports``) and ONE ``ReplicaSet`` (see
``replicas``) shared by every caller: ``max_concurrency`` slots on each of the model's servers.
Each request takes a slot for one HTTP attempt, on the replica with the fewest in flight, and gives
it back, so each server sees a steady ``max_concurrency`` requests in flight regardless of chunk
boundaries (no waves), and a request sleeping in backoff holds no slot. An attempt whose
connection failed, or that failed on a replica the set has just taken out of rotation, is sent to
another replica at once, without counting against the request's retries (``_post``).

A request that fails for good becomes an ``ErrorDetail``; only a broken engine raises.
"""

from __future__ import annotations

import asyncio
import collections
import math
import os
import random
import threading
import weakref
from collections.abc import Sequence
from typing import Any

from batchinfer import jsonwire
from batchinfer.endpoints import Endpoint
from batchinfer.engines.base import (
    CANCELLED,
    CERTIFICATE_UNTRUSTED,
    InferenceOutcome,
    InFlightCap,
    OutcomeWatch,
    PromptRequest,
    StopFlag,
)
from batchinfer.engines.configs import OpenAIEngineConfig
from batchinfer.engines.error_answers import Failed, answer_body, retry_after
from batchinfer.engines.http_transports import RetryableError, Transport, UntrustedCertificate, make_transport
from batchinfer.engines.messages import FileReader, read_local_file
from batchinfer.engines.network import Network
from batchinfer.engines.openai_answers import merge, parse_answer
from batchinfer.engines.openai_messages import request_payload
from batchinfer.engines.pacing import Grants, Pace, make_pace, request_tokens
from batchinfer.engines.replicas import Health, Replica, ReplicaSet
from batchinfer.error_codes import ErrorCode
from batchinfer.errors import EngineError, InferenceError
from batchinfer.records import Completion, ErrorDetail

_STOP_POLL_S = 0.05  # how often a chunk looks at the job's cancel signal


class _Abandoned(Exception):
    """The job stopped before this request was sent (raised inside the loop, never escapes)."""


class _Retry(Exception):
    """One attempt failed on ``replica`` in a way worth retrying (inside the loop, never escapes)."""

    def __init__(self, error: RetryableError, replica: Replica) -> None:
        super().__init__(error.reason)
        self.error, self.replica = error, replica


class OpenAIEngine:
    """``Engine`` over HTTP. Thread-safe; build once per process (``registry.get_engine``)."""

    # Each answer is reported to the job's ``OutcomeWatch`` as it lands, so a job stops on a bad
    # key after its first answers, not after its first chunks (``runtime.fail_fast``).
    reports_outcomes = True

    def __init__(self, config: OpenAIEngineConfig, *, read_file: FileReader = read_local_file) -> None:
        self._config = config
        self._read_file = read_file
        self._bases = [url.rstrip("/") for url in config.replica_urls]
        self._paths = {endpoint: endpoint.value.removeprefix("/v1") for endpoint in Endpoint}
        self._headers = {"Content-Type": "application/json"}
        self._api_key: str | None = None
        if config.api_key_env:
            key = os.environ.get(config.api_key_env)
            if not key:  # name the variable, never echo a value
                raise EngineError(
                    f"Model {config.id!r} reads its API key from the environment variable "
                    f"{config.api_key_env}, which is not set; export it where the workers run."
                )
            self._headers["Authorization"] = f"Bearer {key}"
            self._api_key = key
        self._network = Network.for_model(config)  # proxies and certificates, read once, here
        self._start_lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._transport: Transport | None = None
        self._replicas: ReplicaSet | None = None
        self._pace: Pace | None = None
        self._grants: Grants | None = None
        # The shared caps of the calls running now, by key: held weakly, so that a job's cap goes
        # once its last call has returned.
        self._caps: weakref.WeakValueDictionary[str, asyncio.Semaphore] = weakref.WeakValueDictionary()
        self._closed = False

    def _redacted(self, detail: ErrorDetail) -> ErrorDetail:
        """Servers may echo the key they were sent (``Incorrect API key: sk-...``); an error record
        goes to the error file, job metadata and logs, so the key never does."""
        if self._api_key and self._api_key in detail.message:
            return detail.model_copy(update={"message": detail.message.replace(self._api_key, "***")})
        return detail

    def __repr__(self) -> str:  # the default repr would be harmless, but keep headers out for sure
        return f"OpenAIEngine(id={self._config.id!r}, base_urls={self._bases!r})"

    @property
    def max_parallel_chunks(self) -> int:
        # Concurrency is bounded by the replicas' slots, not by chunk count. But a lone chunk
        # leaves slots idle while its last few slow requests finish and until the next chunk task
        # starts; overlapping chunks fill that tail. About one chunk per 16 slots (over all
        # replicas) keeps them all busy without holding many chunks' results in memory at once;
        # at least 2 so there is always a chunk queued behind the one finishing.
        return max(2, math.ceil(self._config.total_concurrency / 16))

    def infer(
        self,
        requests: Sequence[PromptRequest],
        stop: StopFlag | None = None,
        max_in_flight: InFlightCap | None = None,
    ) -> list[InferenceOutcome]:
        # Translate in the caller's thread: reading attachment files would block the event loop.
        prepared = [self._prepare(request) for request in requests]
        if not requests:
            return []
        loop = self._ensure_started()
        future = asyncio.run_coroutine_threadsafe(
            self._infer_all(requests, prepared, stop, max_in_flight), loop
        )
        return future.result()

    def share_rates(self, grants: Grants) -> None:
        """Hold this model's per-minute limits together with every other process (the job's
        runtime hands over Prefect's rate limits); until then this process holds them alone."""
        self._grants = grants
        if self._pace is not None:
            self._pace.rate.grants = grants

    def pace(self) -> dict[str, Any] | None:
        """What this model's pace settled on in this process and why (``pacing.Pace.summary``)."""
        return self._pace.summary() if self._pace is not None else None

    def _prepare(self, request: PromptRequest) -> dict[str, Any] | ErrorDetail:
        try:
            return request_payload(request, self._config.model, self._read_file)
        except InferenceError as exc:
            return ErrorDetail(code=exc.code, message=exc.message)
        except OSError as exc:
            return ErrorDetail(
                code=ErrorCode.unreadable_attachment,
                message=f"Cannot read an attachment file ({exc}); check the path.",
            )

    def close(self) -> None:
        with self._start_lock:
            self._closed = True
            loop, thread = self._loop, self._thread
            self._loop = self._thread = None
        if loop is None or thread is None:
            return
        try:
            asyncio.run_coroutine_threadsafe(self._shutdown(), loop).result(timeout=10)
        finally:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(timeout=10)

    # -- the private loop ------------------------------------------------------------------------

    def _ensure_started(self) -> asyncio.AbstractEventLoop:
        with self._start_lock:
            if self._closed:
                raise EngineError(f"The engine for model {self._config.id!r} is closed.")
            if self._loop is None:
                loop = asyncio.new_event_loop()
                thread = threading.Thread(
                    target=self._run_loop,
                    args=(loop,),
                    name=f"openai-{self._config.id}",
                    daemon=True,
                )
                thread.start()
                asyncio.run_coroutine_threadsafe(self._open(), loop).result()
                self._loop, self._thread = loop, thread
            return self._loop

    @staticmethod
    def _run_loop(loop: asyncio.AbstractEventLoop) -> None:
        asyncio.set_event_loop(loop)
        loop.run_forever()
        loop.close()

    async def _open(self) -> None:
        # Transport and replica set are made on the loop that will use them.
        config = self._config
        self._transport = make_transport(
            config.http_client, config.total_concurrency, config.timeout_s, self._network
        )
        self._pace = make_pace(config, self._grants)
        self._replicas = ReplicaSet(self._bases, self._pace.concurrency or config.replica_concurrency)

    async def _shutdown(self) -> None:
        # Cancel what is still running so no infer() waits forever, then close the connections.
        current = asyncio.current_task()
        pending = [t for t in asyncio.all_tasks() if t is not current]
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        if self._transport is not None:
            await self._transport.aclose()

    async def _infer_all(
        self,
        requests: Sequence[PromptRequest],
        prepared: list[dict[str, Any] | ErrorDetail],
        stop: StopFlag | None,
        max_in_flight: InFlightCap | None,
    ) -> list[InferenceOutcome]:
        # A cap inside the engine-wide replica slots, shared by the calls with its key: the job's share
        # of the model's cross-job limit. A request holds it from its first attempt to its outcome;
        # at or above the replicas' own slots it binds nothing and is left out.
        slots = self._config.total_concurrency
        limit = slots if max_in_flight is None else min(max_in_flight.limit, slots)
        cap = self._shared_cap(max_in_flight) if max_in_flight is not None and limit < slots else None
        watch = stop if isinstance(stop, OutcomeWatch) else None  # hears each answer as it lands
        outcomes: list[InferenceOutcome] = [CANCELLED] * len(prepared)  # what a stop leaves unanswered

        def land(index: int, outcome: InferenceOutcome) -> None:
            outcomes[index] = outcome
            if watch is not None and outcome is not CANCELLED:
                watch.observe(outcome)

        todo: collections.deque[tuple[int, dict[str, Any]]] = collections.deque()
        for index, item in enumerate(prepared):
            if isinstance(item, dict):
                todo.append((index, item))
            else:  # a request that could not be built has its error already
                land(index, item)

        async def worker() -> None:
            while todo:
                index, body = todo.popleft()
                land(index, await self._infer_capped(requests[index], body, cap, stop))

        # A fixed set of workers, as many as may be in flight, each taking the next line in order:
        # one task per request cost the loop a third of its time at thousands of answers a second.
        workers = [asyncio.ensure_future(worker()) for _ in range(min(len(todo), limit))]
        await self._until_done_or_stopped(workers, stop)
        for task in workers:
            if not task.cancelled() and (bug := task.exception()) is not None:
                raise bug  # a bug, not a failed request: fail the chunk as before
        return outcomes

    @staticmethod
    async def _until_done_or_stopped(workers: Sequence[asyncio.Future[None]], stop: StopFlag | None) -> None:
        everything = asyncio.gather(*workers, return_exceptions=True)
        if stop is not None:
            # Requests waiting for a permit, sleeping in backoff or in flight are all abandoned
            # once the job is cancelled; the ones already answered keep their answers.
            while not everything.done():
                await asyncio.wait({everything}, timeout=_STOP_POLL_S)
                if stop.is_set():
                    for task in workers:
                        task.cancel()
                    break
        await asyncio.gather(*workers, return_exceptions=True)

    def _shared_cap(self, cap: InFlightCap) -> asyncio.Semaphore:
        """The semaphore of ``cap``'s key, made by its first call; it goes with its last call."""
        semaphore = self._caps.get(cap.key)
        if semaphore is None:
            semaphore = self._caps[cap.key] = asyncio.Semaphore(cap.limit)
        return semaphore

    async def _infer_capped(
        self,
        request: PromptRequest,
        base: dict[str, Any],
        cap: asyncio.Semaphore | None,
        stop: StopFlag | None,
    ) -> InferenceOutcome:
        if cap is None:
            return await self._infer_one(request, base, stop)
        async with cap:
            return await self._infer_one(request, base, stop)

    async def _infer_one(
        self, request: PromptRequest, payload: dict[str, Any], stop: StopFlag | None
    ) -> InferenceOutcome:
        endpoint = request.endpoint
        want = request.params.n if endpoint in _N_ENDPOINTS and not _many_prompts(request) else 1
        if want > 1:
            payload["n"] = want
        try:
            completion = await self._answer(endpoint, payload, stop)
            # n emulation: some servers return one choice whatever n says; ask for the rest.
            while endpoint in _N_ENDPOINTS and len(completion.generations) < want:
                have = len(completion.generations)
                more = await self._answer(endpoint, {**payload, "n": want - have}, stop) if have else None
                if more is None or not more.generations:
                    raise Failed(
                        ErrorCode.bad_response,
                        f"The server returned no choices after {have} of {want} generations; "
                        "lower num_generations or check the server.",
                    )
                completion = merge(completion, more)
        except Failed as exc:
            return self._redacted(exc.detail)
        except _Abandoned:
            return CANCELLED
        return completion

    async def _answer(self, endpoint: Endpoint, payload: dict[str, Any], stop: StopFlag | None) -> Completion:
        data = jsonwire.dumps(payload)
        assert self._pace is not None
        tokens = request_tokens(len(data), payload) if self._pace.counts_tokens else 0
        body, base = await self._post(self._paths[endpoint], data, stop, tokens)
        try:
            return parse_answer(endpoint, jsonwire.loads(body))
        except (ValueError, TypeError, KeyError) as exc:
            raise Failed(
                ErrorCode.bad_response,
                f"The server at {base} answered 200 with a body that is not a "
                f"{endpoint.value} answer ({exc}); check that base_url is an OpenAI-compatible /v1 "
                "endpoint that serves it.",
            ) from exc

    async def _post(self, path: str, data: bytes, stop: StopFlag | None, tokens: int) -> tuple[bytes, str]:
        """The 200 body for one request and the base URL that gave it, retrying what is worth it;
        else raises ``Failed``."""
        assert self._replicas is not None
        config = self._config
        attempts = config.max_retries + 1
        attempt = reroutes = 0
        avoid: Replica | None = None
        while True:
            try:
                return await self._attempt(path, data, stop, avoid, tokens)
            except _Retry as retry:
                exc, avoid = retry.error, retry.replica
                # A replica that just went out of rotation, or whose connection failed, is its own
                # failure, not the model's: the request goes to another one at once (once per
                # replica at most, so a model whose replicas all fail gives up as one server would).
                broken = exc.code == ErrorCode.connection_error
                if reroutes < len(self._bases) and self._replicas.can_reroute(retry.replica, broken):
                    reroutes += 1
                    continue
                attempt += 1
                if attempt == attempts:
                    raise Failed(exc.code, self._gave_up(exc, attempts)) from exc
                delay = min(config.backoff_s * 2 ** (attempt - 1), config.max_backoff_s)
                if exc.retry_after is not None:  # the server knows best, within our cap
                    delay = min(exc.retry_after, config.max_backoff_s)
                # Jitter spreads the retries of many requests that failed together.
                await asyncio.sleep(delay * (1 + 0.1 * random.random()))

    async def _attempt(
        self, path: str, data: bytes, stop: StopFlag | None, avoid: Replica | None, tokens: int
    ) -> tuple[bytes, str]:
        assert self._transport is not None and self._replicas is not None and self._pace is not None
        await self._pace.rate.take(tokens)  # every attempt counts against the server's limits
        lease = await self._replicas.acquire(avoid)
        replica, sent = lease.replica, self._pace.clock()
        health: Health = "none"  # what the release tells the set; none if the job stopped first
        try:
            # Looked at once the slot is ours, not only by the chunk's poller: a job that stopped
            # itself on a bad key must not send the requests queued behind the one that told it so.
            if stop is not None and stop.is_set():
                raise _Abandoned
            try:
                status, headers, body = await self._transport.post(replica.url + path, data, self._headers)
            except RetryableError as exc:  # timeouts and connection errors
                if exc.code == ErrorCode.timeout:
                    self._follow_pace(self._pace.timed_out(sent))
                health = (
                    "refused"
                    if exc.refused
                    else ErrorCode.timeout
                    if exc.code == ErrorCode.timeout
                    else "failed"
                )
                raise _Retry(exc, replica) from exc
            except UntrustedCertificate as exc:  # every attempt would fail the same way
                raise Failed(CERTIFICATE_UNTRUSTED, self._untrusted(replica.url, exc)) from exc
            health = "failed" if status >= 500 else "ok"
            wait_s = retry_after(headers) if status != 200 else None  # read once, for both below
            self._follow_pace(self._pace.after(status, headers, wait_s, sent))
        finally:
            self._replicas.release(lease, health)
        try:
            return answer_body(status, body, wait_s), replica.url
        except RetryableError as exc:
            raise _Retry(exc, replica) from exc

    def _follow_pace(self, moved: bool) -> None:
        """The replicas take the in-flight limit ``auto`` has just moved to."""
        if moved:
            assert self._replicas is not None and self._pace is not None
            self._replicas.set_limit(self._pace.concurrency or 1)

    def _untrusted(self, url: str, exc: UntrustedCertificate) -> str:
        return (
            f"The TLS certificate of {url} was not trusted ({exc.reason}). If an internal CA signed "
            "it, set SSL_CERT_FILE (or SSL_CERT_DIR) to that CA's bundle where the job runs, or give "
            f"model {self._config.id!r} a ca_bundle in the models file; then resume the job."
        )

    def _servers(self) -> str:
        """The model's server(s), to begin "check that ... up": every URL, with its verb."""
        if len(self._bases) == 1:
            return f"{self._bases[0]} is"
        return f"its replicas {', '.join(self._bases)} are"

    def _gave_up(self, exc: RetryableError, attempts: int) -> str:
        advice = {
            ErrorCode.timeout: "raise timeout_s for this model, or check the server is not overloaded",
            ErrorCode.connection_error: f"check that {self._servers()} up and reachable",
            "http_429": "lower max_concurrency for this model, or raise max_retries/max_backoff_s",
        }.get(exc.code, "check the server's health and logs, or raise max_retries")
        tries = f"{attempts} attempt" + ("s" if attempts > 1 else "")
        return f"Gave up after {tries} (last: {exc.reason}); {advice}."


# Endpoints whose answers are ``choices``, of which a request may ask ``n``.
_N_ENDPOINTS = frozenset({Endpoint.chat, Endpoint.completions})


def _many_prompts(request: PromptRequest) -> bool:
    """A completions line with a list of prompts: the server answers n choices for each, so the
    count of choices says nothing about a missing one (no n emulation)."""
    return request.endpoint is Endpoint.completions and isinstance((request.body or {}).get("prompt"), list)
