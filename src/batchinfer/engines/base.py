"""The engine boundary: one Protocol that every engine implements, and the types that cross it.

Engines are synchronous and thread-safe from the caller's side: Prefect runs chunk tasks in threads,
and each chunk hands its whole list of requests to ``Engine.infer``. How an engine gets parallelism
inside is its own business (an asyncio loop for HTTP engines, batched ``generate`` for local ones).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, TypeAlias, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field

from batchinfer.contract import Message, Options
from batchinfer.endpoints import Endpoint
from batchinfer.error_codes import ErrorCode
from batchinfer.records import Completion, ErrorDetail

if TYPE_CHECKING:
    from batchinfer.engines.pacing import Grants


class SamplingParams(BaseModel):
    """Resolved sampling parameters for one request: job options with defaults filled in, and for a
    batch line the sampling fields of its body. Local engines generate from these; HTTP engines send
    the line's body itself (``PromptRequest.body``) and use these for limits and ``n``."""

    model_config = ConfigDict(frozen=True)  # hashable: local engines batch requests that share them

    max_tokens: int = Field(default=256, ge=1)
    temperature: float = Field(default=1.0, ge=0)
    top_p: float = Field(default=1.0, gt=0, le=1)
    logprobs: bool = False
    n: int = Field(default=1, ge=1, description="num_generations")
    top_logprobs: int | None = Field(
        default=None, ge=0, le=20, description="Most likely alternatives per token, with logprobs."
    )
    stop: tuple[str, ...] = Field(default=(), description="Text that ends a generation, not included.")
    seed: int | None = Field(default=None, description="Sampling seed: same seed, same answer.")
    response_format: str | None = Field(
        default=None,
        description="The body's `response_format` as canonical JSON when it constrains the answer "
        "(json_object, json_schema); None for plain text.",
    )

    @classmethod
    def from_options(cls, options: Options, num_generations: int, default_max_tokens: int) -> SamplingParams:
        """A job's parameters: its ``options`` with our defaults where it set none."""
        return cls(
            max_tokens=options.max_tokens or default_max_tokens,
            temperature=1.0 if options.temperature is None else options.temperature,
            top_p=1.0 if options.top_p is None else options.top_p,
            logprobs=bool(options.logprobs),
            n=num_generations,
        )


class PromptRequest(BaseModel):
    """One validated input line, ready for an engine.

    ``messages`` is the seed's view of a chat prompt (what local engines render); ``body`` is an
    OpenAI batch line's request body as the user wrote it, less ``model``, with the job's options
    filled in where the line gave none: what an OpenAI-compatible engine sends. Seed-format lines
    have no body; the engine builds one from ``messages`` and ``params``."""

    line: int
    custom_id: str | None = None
    endpoint: Endpoint = Endpoint.chat
    messages: list[Message] = Field(default_factory=list)
    body: dict[str, Any] | None = None
    params: SamplingParams


InferenceOutcome: TypeAlias = Completion | ErrorDetail


def deterministic(request: PromptRequest) -> bool:
    """Whether sending ``request`` again should give the same answer: greedy, or seeded. Such a
    request is sent once per job (``pipeline.duplicates``) and may be answered from the cache."""
    return request.params.temperature == 0 or request.params.seed is not None


@dataclass(frozen=True)
class InFlightCap:
    """At most ``limit`` requests in flight across every ``infer`` call in this process that passes
    a cap with the same ``key``: one job's share of its model's cross-job limit, which all of the
    job's chunks draw from. Shared rather than split per chunk because a chunk's tail (its last slow
    requests) would otherwise leave its part of the share idle until the next chunk task starts."""

    key: str
    limit: int
    chunk_limit: int  # one chunk's even part of ``limit``, for a chunk that runs in another process

    def alone(self, index: int) -> InFlightCap:
        """This cap for chunk ``index`` on its own (on a Dask worker, where nothing is shared)."""
        return InFlightCap(f"{self.key}#{index}", self.chunk_limit, self.chunk_limit)


class StopFlag(Protocol):
    """A cancel signal an engine polls (``cancellation.StopSignal`` in a job)."""

    def is_set(self) -> bool: ...


@runtime_checkable
class OutcomeWatch(Protocol):
    """A stop flag that is also told each request's outcome, so that a job can stop itself on
    failures no retry fixes (``runtime.fail_fast``). An engine with ``reports_outcomes = True`` (the
    HTTP one) reports each as it lands; the chunk reports the others' once their call returns."""

    def is_set(self) -> bool: ...

    def observe(self, outcome: InferenceOutcome) -> None: ...


# What an engine returns for a request it abandoned because the job was cancelled.
CANCELLED = ErrorDetail(
    code=ErrorCode.cancelled,
    message="The job was cancelled before this line finished; resuming the job runs it again.",
)
# The same, when the job stopped because its completion window (``expires_at``) passed.
EXPIRED = ErrorDetail(
    code=ErrorCode.expired,
    message="The job's completion window passed before this line finished; resuming the job runs it again.",
)
# Line codes of answers that no retry fixes, by the code of the job they stop (``fail_fast``).
AUTH_FAILED = ErrorCode.auth_failed
CERTIFICATE_UNTRUSTED = ErrorCode.certificate_untrusted  # the server's TLS certificate failed verification
FATAL_LINE_CODES = {
    "http_401": AUTH_FAILED,
    "http_403": AUTH_FAILED,
    "http_404": ErrorCode.model_not_found,
    ErrorCode.quota_exhausted: ErrorCode.quota_exhausted,
    CERTIFICATE_UNTRUSTED: CERTIFICATE_UNTRUSTED,
}
# The job code (and the code of each line it cut short) of a job past its ``max_error_rate``.
ERROR_RATE_EXCEEDED = ErrorCode.error_rate_exceeded
# Codes of lines a stopped job never finished (a cancel, an expiry, a fail-fast stop).
ABANDONED_CODES = frozenset({CANCELLED.code, EXPIRED.code, *FATAL_LINE_CODES.values(), ERROR_RATE_EXCEEDED})


def retryable_status(status: int) -> bool:
    """Whether an HTTP answer with ``status`` is worth sending again: the HTTP engine retries these,
    and ``retry_failed`` runs again the lines that ran out of retries on one."""
    return status in (408, 429) or status >= 500


def retryable(code: str) -> bool:
    """Whether a line that failed with ``code`` may succeed when sent again: a timeout, a failed
    connection, or an ``http_<status>`` the engine retries (``retryable_status``)."""
    if code in (ErrorCode.timeout, ErrorCode.connection_error):
        return True
    status = code.removeprefix("http_")
    return code.startswith("http_") and status.isdigit() and retryable_status(int(status))


# What a resume runs again: the lines never finished, and those that failed for a reason the user
# has to fix first (a key, a model name, a quota), since a resume is how they go on once it is.
RERUN_ON_RESUME = ABANDONED_CODES | FATAL_LINE_CODES.keys()


@runtime_checkable
class Engine(Protocol):
    """A loaded model that turns prompts into completions.

    ``infer`` returns exactly one outcome per request, in request order. A request that fails for
    good (after the engine's own retries) is an ``ErrorDetail``, never an exception; an exception
    from ``infer`` means the engine itself is broken and fails the chunk.

    ``stop`` is the job's cancel signal: once it is set, ``infer`` returns promptly (seconds at
    most), with a ``cancelled`` ``ErrorDetail`` for each request it has not finished.
    ``max_in_flight`` caps the concurrent requests of every call that shares its key (the job's
    share of the model's cross-job limit, ``model_limits``); engines without a server to protect
    may ignore it.
    """

    @property
    def max_parallel_chunks(self) -> int:
        """How many chunks one process should feed this engine at once."""
        ...

    def infer(
        self,
        requests: Sequence[PromptRequest],
        stop: StopFlag | None = None,
        max_in_flight: InFlightCap | None = None,
    ) -> list[InferenceOutcome]: ...

    def close(self) -> None: ...


@runtime_checkable
class PacedEngine(Protocol):
    """An engine that paces itself to a server (the HTTP one): what it settled on, and why."""

    def pace(self) -> dict[str, Any] | None: ...

    def share_rates(self, grants: Grants) -> None:
        """Hold the model's per-minute limits with other processes."""
        ...
