"""A small typed HTTP client for the batchinfer adapter (``batchinfer serve``), sync and async.

One convention, two layers:

* ``BatchInferClient`` (sync) and ``AsyncBatchInferClient`` (async) are context managers that hold
  one ``httpx`` client, so a program that makes many calls reuses its connections. Their methods
  are ``submit_job``, ``job_status``, ``cancel_job``, ``retry_failed``, ``list_jobs``,
  ``wait_for_job`` and ``job_results`` (the records finished so far; the sync client's
  ``follow_results`` yields them as they come); the async client's are the same names, awaited.
  Async code uses ``AsyncBatchInferClient``: there are no ``*_async`` module functions.
* The module functions of the same names are thin sync conveniences: each builds a client for one
  call and closes it.

Where the server is and who you are come from the arguments, else from the environment when a
client is built (never at import): ``BATCHINFER_URL`` (default ``http://127.0.0.1:8000``, where
``batchinfer serve`` listens) and ``BATCHINFER_API_TOKEN`` (sent as ``Authorization: Bearer``).

Every refusal (a 4xx or 5xx answer) and every failure to reach the server raises one exception
type, ``BatchInferClientError``, whose message names the field and quotes the server's message.

This module imports neither Prefect nor torch: a client is cheap to import and to run anywhere.
"""

from __future__ import annotations

import base64
import json
import os
import re
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self, TypeAlias, TypeVar

import anyio
import httpx
from pydantic import BaseModel

from batchinfer import __version__
from batchinfer.contract import BatchInference, JobPage, JobStatus, Options, Path, PathType
from batchinfer.errors import BatchInferError

if TYPE_CHECKING:
    import pandas as pd

# JobPage (the answer of GET /batch_inference/jobs) is the adapter's own model, re-exported here:
# one definition of the shape for both ends.
__all__ = [
    "AsyncBatchInferClient",
    "BatchInferClient",
    "BatchInferClientError",
    "FieldError",
    "JobPage",
    "JobWaitTimeout",
    "ResultsSoFar",
    "cancel_job",
    "job_status",
    "list_jobs",
    "prompt_path",
    "read_results",
    "submit_dataframe",
    "submit_job",
    "wait_for_job",
]

URL_ENV = "BATCHINFER_URL"
TOKEN_ENV = "BATCHINFER_API_TOKEN"
DEFAULT_URL = "http://127.0.0.1:8000"  # `batchinfer serve`'s default --host and --port
DEFAULT_TIMEOUT_S = 30.0  # per HTTP request; waiting for a job has its own timeout_s
DEFAULT_POLL_S = 1.0
TERMINAL = frozenset({JobStatus.completed, JobStatus.failed})

SUBMIT_PATH = "/batch_inference/submit_job"
STATUS_PATH = "/batch_inference/job_status"
CANCEL_PATH = "/batch_inference/cancel_job"
JOBS_PATH = "/batch_inference/jobs"
RESULTS_PATH = "/batch_inference/job_results"
RETRY_PATH = "/batch_inference/retry_failed"
RESULTS_STATUS_HEADER = "X-Batchinfer-Job-Status"  # the job's status when its results were read

# What ``prompt_file`` may be: see ``prompt_path``.
PromptFile: TypeAlias = Path | str | os.PathLike[str] | bytes | bytearray
OptionsLike: TypeAlias = Options | Mapping[str, Any]

# A scheme followed by "//": s3://, https://, file:// ... Requiring "//" keeps a file name with a
# colon in it ("notes:v2.jsonl") a file name, and a scheme of 2+ letters keeps "C://" a drive.
_URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]+://")
_LOCATIONS = frozenset({"body", "query", "header", "path", "cookie"})  # FastAPI's loc prefixes

M = TypeVar("M", bound=BaseModel)
T = TypeVar("T")


# ---- errors -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FieldError:
    """One entry of FastAPI's ``{"detail": [{"loc": [...], "msg": ..., "type": ...}]}``."""

    loc: tuple[str | int, ...]
    msg: str
    type: str

    @property
    def field(self) -> str:
        """The dotted field, without FastAPI's location prefix: ``["body", "options", "top_p"]``
        is ``options.top_p``; a bare ``["body"]`` (the whole body) stays ``body``."""
        parts = self.loc[1:] if len(self.loc) > 1 and self.loc[0] in _LOCATIONS else self.loc
        return ".".join(str(part) for part in parts)


class BatchInferClientError(BatchInferError):
    """The server refused a call (4xx/5xx), or could not be reached (``status_code`` None).

    ``detail`` is the server's ``detail`` as sent (a list of field errors or a string); ``errors``
    the field errors parsed from it; ``field`` the first one's dotted field; ``code`` the server's
    error ``type`` (``unknown_model``, ``greater_than_equal``, ``job_not_found`` ...).
    """

    code = "client_error"

    def __init__(
        self,
        message: str,
        *,
        status_code: int | None = None,
        detail: Any = None,
        errors: Sequence[FieldError] = (),
        code: str | None = None,
    ) -> None:
        super().__init__(message, code=code)
        self.status_code = status_code
        self.detail = detail
        self.errors = list(errors)

    @property
    def field(self) -> str | None:
        return self.errors[0].field if self.errors else None

    @classmethod
    def from_response(cls, response: httpx.Response) -> BatchInferClientError:
        """The error for a 4xx/5xx answer, whichever of the adapter's two shapes it has."""
        detail, code = _detail_and_code(response)
        errors = _field_errors(detail)
        request = response.request
        message = (
            f"{request.method} {request.url.path} answered {response.status_code} "
            f"{response.reason_phrase}: {_describe(detail, errors)}"
        )
        return cls(
            message,
            status_code=response.status_code,
            detail=detail,
            errors=errors,
            code=code or (errors[0].type if errors else f"http_{response.status_code}"),
        )


class JobWaitTimeout(BatchInferClientError, TimeoutError):
    """``wait_for_job`` ran out of time; ``job`` is the last status seen. Also a ``TimeoutError``."""

    def __init__(self, job: BatchInference, timeout_s: float) -> None:
        super().__init__(
            f"Job {job.job_id} is still {job.status.value} after {timeout_s:g} s; wait longer "
            "(timeout_s) or check it later with job_status.",
            code="wait_timeout",
        )
        self.job = job


def _detail_and_code(response: httpx.Response) -> tuple[Any, str | None]:
    """The server's ``detail`` and ``type``; the raw text when the body is not JSON (a proxy's page)."""
    try:
        body = response.json()
    except ValueError:
        return response.text, None
    if not isinstance(body, dict):
        return body, None
    code = body.get("type")
    return body.get("detail", body), code if isinstance(code, str) else None


def _field_errors(detail: Any) -> list[FieldError]:
    if not isinstance(detail, list):
        return []
    errors = []
    for item in detail:
        if isinstance(item, dict) and isinstance(item.get("loc"), list):
            loc = tuple(p if isinstance(p, int) else str(p) for p in item["loc"])
            errors.append(FieldError(loc, str(item.get("msg", "")), str(item.get("type", ""))))
    return errors


def _describe(detail: Any, errors: Sequence[FieldError]) -> str:
    if errors:
        return "; ".join(f"{error.field}: {error.msg}" for error in errors)
    text = detail if isinstance(detail, str) else json.dumps(detail)
    return text if len(text) <= 500 else text[:500] + " ..."  # a proxy's HTML page need not be whole


def _unreachable(base_url: str, exc: httpx.TransportError) -> BatchInferClientError:
    return BatchInferClientError(
        f"Cannot reach batchinfer at {base_url} ({type(exc).__name__}: {exc}); is `batchinfer serve` "
        f"running there? Point the client at it with base_url or {URL_ENV}.",
        code="unreachable",
    )


# ---- requests, built and read the same way by both clients ------------------------------------


def prompt_path(prompt_file: PromptFile) -> Path:
    """The contract's ``Path`` for ``prompt_file``:

    * a ``batchinfer.contract.Path``: as is;
    * ``bytes``: the content itself, ``raw_bytes`` as base64 (safe for any bytes; the server tells
      base64 from JSONL text because JSONL starts with ``[`` or ``{``, which base64 never does);
    * a ``str`` with a scheme (``s3://``, ``https://``, ``file://`` ...): a ``uri``;
    * any other ``str`` or ``os.PathLike``: a ``filepath``, made absolute here, because the server
      refuses relative paths (it has its own working directory).
    """
    if isinstance(prompt_file, Path):
        return prompt_file
    if isinstance(prompt_file, bytes | bytearray):
        return Path(type=PathType.raw_bytes, value=base64.b64encode(prompt_file).decode("ascii"))
    if isinstance(prompt_file, str) and _URI.match(prompt_file):
        return Path(type=PathType.uri, value=prompt_file)
    if isinstance(prompt_file, str | os.PathLike):
        local = os.fsdecode(os.fspath(prompt_file))
        if not local:
            raise ValueError("prompt_file is an empty string; give a file path, a URI or bytes.")
        return Path(type=PathType.filepath, value=os.path.abspath(os.path.expanduser(local)))
    raise TypeError(
        "prompt_file must be a batchinfer.contract.Path, a local path (str or os.PathLike), a URI "
        f"string (s3://, https://, file:// ...) or bytes; got {type(prompt_file).__name__}."
    )


def _options_json(options: OptionsLike | None) -> dict[str, Any] | None:
    """Options as sent. A dict goes as is: the server validates it, so every refusal has one shape."""
    if options is None:
        return None
    if isinstance(options, Options):
        return options.model_dump(mode="json", exclude_none=True)
    return dict(options)


@dataclass(frozen=True)
class _Call:
    """One HTTP call, described without sending it (both clients send the same calls)."""

    method: str
    path: str
    params: dict[str, str | int] = field(default_factory=dict)
    body: dict[str, Any] | None = None


def _submit_call(
    model: str,
    prompt_file: PromptFile,
    options: OptionsLike | None,
    num_generations: int,
    extensions: Mapping[str, str | float | None] | None = None,
) -> _Call:
    body: dict[str, Any] = {
        "model": model,
        "prompt_file_path": prompt_path(prompt_file).model_dump(mode="json"),
        "num_generations": num_generations,
    }
    body.update({key: value for key, value in (extensions or {}).items() if value is not None})
    if (options_json := _options_json(options)) is not None:
        body["options"] = options_json
    return _Call("POST", SUBMIT_PATH, body=body)


def _extensions(
    prompt_template: str | None, system_prompt: str | None, max_error_rate: float | None
) -> dict[str, str | float | None]:
    """The request's fields beyond the contract's; those left None are not sent."""
    return {
        "prompt_template": prompt_template,
        "system_prompt": system_prompt,
        "max_error_rate": max_error_rate,
    }


def _list_call(status: JobStatus | str | None, model: str | None, limit: int, offset: int) -> _Call:
    params: dict[str, str | int] = {"limit": limit, "offset": offset}
    if status is not None:
        params["status"] = status.value if isinstance(status, JobStatus) else status
    if model is not None:
        params["model"] = model
    return _Call("GET", JOBS_PATH, params=params)


@dataclass(frozen=True)
class ResultsSoFar:
    """What ``job_results`` read: the records finished so far after ``after_line``, in input order
    (success and error records, as in the two output files), and the job's status when they were
    read. Once that status is ``completed`` or ``failed``, no more records will come."""

    records: list[dict[str, Any]]
    status: JobStatus

    @property
    def last_line(self) -> int | None:
        """The last input line among the records (the ``after_line`` to ask for next)."""
        lines = [record["line"] for record in self.records if record.get("line") is not None]
        return lines[-1] if lines else None


def _retry_call(job_id: str, every_error: bool) -> _Call:
    return _Call("POST", RETRY_PATH, body={"job_id": job_id, "all": every_error})


def _results_call(job_id: str, after_line: int) -> _Call:
    return _Call("GET", RESULTS_PATH, {"job_id": job_id, "after_line": after_line})


def _read_results(response: httpx.Response) -> ResultsSoFar:
    """The NDJSON records and the status header of ``job_results``, or the server's refusal."""

    def parse(response: httpx.Response) -> ResultsSoFar:
        records = [json.loads(line) for line in response.text.splitlines() if line.strip()]
        return ResultsSoFar(records=records, status=JobStatus(response.headers[RESULTS_STATUS_HEADER]))

    return _parsed(response, parse, f"NDJSON records and a {RESULTS_STATUS_HEADER} header")


def _read(response: httpx.Response, model: type[M]) -> M:
    """The answer as ``model``, or the server's refusal as ``BatchInferClientError``."""
    return _parsed(response, lambda answer: model.model_validate(answer.json()), f"a {model.__name__}")


def _parsed(response: httpx.Response, parse: Callable[[httpx.Response], T], shape: str) -> T:
    if response.is_error:
        raise BatchInferClientError.from_response(response)
    try:
        return parse(response)
    except (ValueError, KeyError) as exc:  # not this shape: another server, or another version
        raise BatchInferClientError(
            f"{response.request.method} {response.request.url.path} answered {response.status_code} "
            f"with a body that is not {shape}: {exc}",
            status_code=response.status_code,
            detail=response.text[:500],
            code="invalid_response",
        ) from None


def _connection(base_url: str | None, token: str | None) -> tuple[str, dict[str, str]]:
    """Base URL and headers, from the arguments, else from the environment (read now, per client)."""
    url = (base_url or os.environ.get(URL_ENV) or DEFAULT_URL).rstrip("/")
    token = token if token is not None else os.environ.get(TOKEN_ENV)
    headers = {"User-Agent": f"batchinfer-client/{__version__}"}
    if token:  # an empty token means none, as the server reads BATCHINFER_API_TOKEN
        headers["Authorization"] = f"Bearer {token}"
    return url, headers


@dataclass
class _Wait:
    """How long ``wait_for_job`` sleeps between polls, and when it gives up."""

    timeout_s: float | None
    poll_s: float
    started: float = field(default_factory=time.monotonic)

    def pause_after(self, job: BatchInference) -> float:
        """Seconds to sleep before the next poll; raises ``JobWaitTimeout`` when no time is left."""
        if self.timeout_s is None:
            return self.poll_s
        left = self.started + self.timeout_s - time.monotonic()
        if left <= 0:
            raise JobWaitTimeout(job, self.timeout_s)
        return min(self.poll_s, left)


# ---- the clients --------------------------------------------------------------------------------


class BatchInferClient:
    """Sync client; use it as a context manager (or call ``close``) so its connections are freed.

    ``transport`` replaces httpx's network transport (tests inject ``httpx.MockTransport``).
    """

    def __init__(
        self,
        base_url: str | None = None,
        *,
        token: str | None = None,
        timeout: float = DEFAULT_TIMEOUT_S,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.base_url, headers = _connection(base_url, token)
        self._http = httpx.Client(
            base_url=self.base_url, headers=headers, timeout=timeout, transport=transport
        )

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _send(self, call: _Call) -> httpx.Response:
        try:
            return self._http.request(call.method, call.path, params=call.params, json=call.body)
        except httpx.TransportError as exc:
            raise _unreachable(self.base_url, exc) from exc

    def submit_job(
        self,
        model: str,
        prompt_file: PromptFile,
        *,
        options: OptionsLike | None = None,
        num_generations: int = 1,
        prompt_template: str | None = None,
        system_prompt: str | None = None,
        max_error_rate: float | None = None,
    ) -> BatchInference:
        """Submit a job; it starts ``validating``. ``prompt_file``: see ``prompt_path``;
        ``prompt_template`` and ``system_prompt``: a table prompt file's (docs/tables.md);
        ``max_error_rate``: the share of failed requests past which the job stops."""
        extensions = _extensions(prompt_template, system_prompt, max_error_rate)
        call = _submit_call(model, prompt_file, options, num_generations, extensions)
        return _read(self._send(call), BatchInference)

    def job_status(self, job_id: str) -> BatchInference:
        """The job as it is now."""
        return _read(self._send(_Call("GET", STATUS_PATH, {"job_id": job_id})), BatchInference)

    def cancel_job(self, job_id: str) -> BatchInference:
        """Ask the server to cancel the job; it ends ``failed`` once it has stopped."""
        return _read(self._send(_Call("POST", CANCEL_PATH, {"job_id": job_id})), BatchInference)

    def retry_failed(self, job_id: str, *, every_error: bool = False) -> BatchInference:
        """Run the ended job again for its retryable failed lines (``every_error``: every failed
        inference); its output files are rewritten with the new outcomes merged in."""
        return _read(self._send(_retry_call(job_id, every_error)), BatchInference)

    def list_jobs(
        self,
        *,
        status: JobStatus | str | None = None,
        model: str | None = None,
        limit: int = 20,
        offset: int = 0,
    ) -> JobPage:
        """One page of jobs, optionally only those with ``status`` or ``model``."""
        return _read(self._send(_list_call(status, model, limit, offset)), JobPage)

    def wait_for_job(
        self, job_id: str, *, timeout_s: float | None = None, poll_s: float = DEFAULT_POLL_S
    ) -> BatchInference:
        """Poll every ``poll_s`` until the job is ``completed`` or ``failed``, and return it.

        ``timeout_s=None`` waits as long as the job runs (the server bounds a job by its own
        deadline); past ``timeout_s``, raises ``JobWaitTimeout``.
        """
        wait = _Wait(timeout_s, poll_s)
        while (job := self.job_status(job_id)).status not in TERMINAL:
            time.sleep(wait.pause_after(job))
        return job

    def job_results(self, job_id: str, *, after_line: int = 0) -> ResultsSoFar:
        """The records the job has finished so far after ``after_line``, in input order: every line
        before its first unfinished chunk, and all of them once it has ended."""
        return _read_results(self._send(_results_call(job_id, after_line)))

    def follow_results(self, job_id: str, *, poll_s: float = DEFAULT_POLL_S) -> Iterator[dict[str, Any]]:
        """Each of the job's records, in input order, as it finishes, until the job has ended."""
        after_line = 0
        while True:
            so_far = self.job_results(job_id, after_line=after_line)
            yield from so_far.records
            after_line = so_far.last_line or after_line
            if so_far.status in TERMINAL:
                return
            time.sleep(poll_s)


class AsyncBatchInferClient:
    """Async client, the same methods as ``BatchInferClient``, awaited; ``async with`` it.

    Runs under asyncio or trio. ``transport`` replaces httpx's network transport.
    """

    def __init__(
        self,
        base_url: str | None = None,
        *,
        token: str | None = None,
        timeout: float = DEFAULT_TIMEOUT_S,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.base_url, headers = _connection(base_url, token)
        self._http = httpx.AsyncClient(
            base_url=self.base_url, headers=headers, timeout=timeout, transport=transport
        )

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _send(self, call: _Call) -> httpx.Response:
        try:
            return await self._http.request(call.method, call.path, params=call.params, json=call.body)
        except httpx.TransportError as exc:
            raise _unreachable(self.base_url, exc) from exc

    async def submit_job(
        self,
        model: str,
        prompt_file: PromptFile,
        *,
        options: OptionsLike | None = None,
        num_generations: int = 1,
        prompt_template: str | None = None,
        system_prompt: str | None = None,
        max_error_rate: float | None = None,
    ) -> BatchInference:
        """Submit a job; it starts ``validating``. ``prompt_file``: see ``prompt_path``."""
        extensions = _extensions(prompt_template, system_prompt, max_error_rate)
        call = _submit_call(model, prompt_file, options, num_generations, extensions)
        return _read(await self._send(call), BatchInference)

    async def job_status(self, job_id: str) -> BatchInference:
        """The job as it is now."""
        return _read(await self._send(_Call("GET", STATUS_PATH, {"job_id": job_id})), BatchInference)

    async def cancel_job(self, job_id: str) -> BatchInference:
        """Ask the server to cancel the job; it ends ``failed`` once it has stopped."""
        return _read(await self._send(_Call("POST", CANCEL_PATH, {"job_id": job_id})), BatchInference)

    async def retry_failed(self, job_id: str, *, every_error: bool = False) -> BatchInference:
        """Run the ended job again for its failed lines (see ``BatchInferClient.retry_failed``)."""
        return _read(await self._send(_retry_call(job_id, every_error)), BatchInference)

    async def list_jobs(
        self,
        *,
        status: JobStatus | str | None = None,
        model: str | None = None,
        limit: int = 20,
        offset: int = 0,
    ) -> JobPage:
        """One page of jobs, optionally only those with ``status`` or ``model``."""
        return _read(await self._send(_list_call(status, model, limit, offset)), JobPage)

    async def wait_for_job(
        self, job_id: str, *, timeout_s: float | None = None, poll_s: float = DEFAULT_POLL_S
    ) -> BatchInference:
        """Poll every ``poll_s`` until the job is ``completed`` or ``failed``, and return it.

        ``timeout_s=None`` waits as long as the job runs; past ``timeout_s``, raises
        ``JobWaitTimeout``.
        """
        wait = _Wait(timeout_s, poll_s)
        while (job := await self.job_status(job_id)).status not in TERMINAL:
            await anyio.sleep(wait.pause_after(job))
        return job

    async def job_results(self, job_id: str, *, after_line: int = 0) -> ResultsSoFar:
        """The records the job has finished so far after ``after_line`` (see ``BatchInferClient``)."""
        return _read_results(await self._send(_results_call(job_id, after_line)))


# ---- module functions: one call, one short-lived sync client ------------------------------------


def submit_job(
    model: str,
    prompt_file: PromptFile,
    *,
    options: OptionsLike | None = None,
    num_generations: int = 1,
    prompt_template: str | None = None,
    system_prompt: str | None = None,
    base_url: str | None = None,
    token: str | None = None,
    timeout: float = DEFAULT_TIMEOUT_S,
) -> BatchInference:
    """Submit a job (see ``BatchInferClient.submit_job``)."""
    with BatchInferClient(base_url, token=token, timeout=timeout) as client:
        return client.submit_job(
            model,
            prompt_file,
            options=options,
            num_generations=num_generations,
            prompt_template=prompt_template,
            system_prompt=system_prompt,
        )


def job_status(
    job_id: str, *, base_url: str | None = None, token: str | None = None, timeout: float = DEFAULT_TIMEOUT_S
) -> BatchInference:
    """The job as it is now (see ``BatchInferClient.job_status``)."""
    with BatchInferClient(base_url, token=token, timeout=timeout) as client:
        return client.job_status(job_id)


def cancel_job(
    job_id: str, *, base_url: str | None = None, token: str | None = None, timeout: float = DEFAULT_TIMEOUT_S
) -> BatchInference:
    """Cancel the job (see ``BatchInferClient.cancel_job``)."""
    with BatchInferClient(base_url, token=token, timeout=timeout) as client:
        return client.cancel_job(job_id)


def list_jobs(
    *,
    status: JobStatus | str | None = None,
    model: str | None = None,
    limit: int = 20,
    offset: int = 0,
    base_url: str | None = None,
    token: str | None = None,
    timeout: float = DEFAULT_TIMEOUT_S,
) -> JobPage:
    """One page of jobs (see ``BatchInferClient.list_jobs``)."""
    with BatchInferClient(base_url, token=token, timeout=timeout) as client:
        return client.list_jobs(status=status, model=model, limit=limit, offset=offset)


def wait_for_job(
    job_id: str,
    *,
    timeout_s: float | None = None,
    poll_s: float = DEFAULT_POLL_S,
    base_url: str | None = None,
    token: str | None = None,
    timeout: float = DEFAULT_TIMEOUT_S,
) -> BatchInference:
    """Poll until the job is ``completed`` or ``failed`` (see ``BatchInferClient.wait_for_job``)."""
    with BatchInferClient(base_url, token=token, timeout=timeout) as client:
        return client.wait_for_job(job_id, timeout_s=timeout_s, poll_s=poll_s)


# ---- tables -------------------------------------------------------------------------------------


def read_results(
    job_or_id: BatchInference | str,
    *,
    base_url: str | None = None,
    token: str | None = None,
    timeout: float = DEFAULT_TIMEOUT_S,
) -> pd.DataFrame:
    """A finished job's ``results.parquet`` as a DataFrame: one row per input row, in input order
    (``line``, ``status``, ``text``, ..., then the input table's carried columns). The file is on
    the server's disk (``metadata.results_file_path``): this reads it where that path is readable,
    the same machine as ``serve`` or a shared ``BATCHINFER_HOME``. A job id is looked up first."""
    import pandas as pd

    job = job_or_id
    if isinstance(job, str):
        job = job_status(job, base_url=base_url, token=token, timeout=timeout)
    results = job.metadata.get("results_file_path")
    if not results:
        raise BatchInferClientError(
            f"Job {job.job_id} is {job.status.value} and has no results table yet; wait for it to "
            "end (wait_for_job), then read its results.",
            code="no_results",
        )
    return pd.read_parquet(Path.model_validate(results).value)


def submit_dataframe(
    model: str,
    frame: pd.DataFrame,
    *,
    options: OptionsLike | None = None,
    num_generations: int = 1,
    prompt_template: str | None = None,
    system_prompt: str | None = None,
    base_url: str | None = None,
    token: str | None = None,
    timeout: float = DEFAULT_TIMEOUT_S,
) -> BatchInference:
    """Submit a DataFrame as a table prompt file, sent as Parquet ``raw_bytes`` (so within the
    server's ``BATCHINFER_MAX_PROMPT_FILE_BYTES``): a ``prompt`` or ``messages`` column, or a
    ``prompt_template`` over its columns; every other column comes back in ``read_results``."""
    import io

    buffer = io.BytesIO()
    frame.to_parquet(buffer, index=False)
    return submit_job(
        model,
        buffer.getvalue(),
        options=options,
        num_generations=num_generations,
        prompt_template=prompt_template,
        system_prompt=system_prompt,
        base_url=base_url,
        token=token,
        timeout=timeout,
    )
