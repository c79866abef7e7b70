"""The sync and the async client: each holds one httpx client and sends the calls of ``calls``."""

from __future__ import annotations

import time
from collections.abc import Iterator
from types import TracebackType
from typing import Any, Self

import anyio
import httpx

from batchinfer.client.calls import (
    CANCEL_PATH,
    DEFAULT_POLL_S,
    DEFAULT_TIMEOUT_S,
    STATUS_PATH,
    TERMINAL,
    Call,
    OptionsLike,
    PromptFile,
    ResultsSoFar,
    Wait,
    connection,
    extensions,
    list_call,
    parse_results,
    read,
    results_call,
    retry_call,
    submit_call,
    unreachable,
)
from batchinfer.contract import BatchInference, JobPage, JobStatus

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
        self.base_url, headers = connection(base_url, token)
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

    def _send(self, call: Call) -> httpx.Response:
        try:
            return self._http.request(call.method, call.path, params=call.params, json=call.body)
        except httpx.TransportError as exc:
            raise unreachable(self.base_url, exc) from exc

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
        extra = extensions(prompt_template, system_prompt, max_error_rate)
        call = submit_call(model, prompt_file, options, num_generations, extra)
        return read(self._send(call), BatchInference)

    def job_status(self, job_id: str) -> BatchInference:
        """The job as it is now."""
        return read(self._send(Call("GET", STATUS_PATH, {"job_id": job_id})), BatchInference)

    def cancel_job(self, job_id: str) -> BatchInference:
        """Ask the server to cancel the job; it ends ``failed`` once it has stopped."""
        return read(self._send(Call("POST", CANCEL_PATH, {"job_id": job_id})), BatchInference)

    def retry_failed(self, job_id: str, *, every_error: bool = False) -> BatchInference:
        """Run the ended job again for its retryable failed lines (``every_error``: every failed
        inference); its output files are rewritten with the new outcomes merged in."""
        return read(self._send(retry_call(job_id, every_error)), BatchInference)

    def list_jobs(
        self,
        *,
        status: JobStatus | str | None = None,
        model: str | None = None,
        limit: int = 20,
        offset: int = 0,
    ) -> JobPage:
        """One page of jobs, optionally only those with ``status`` or ``model``."""
        return read(self._send(list_call(status, model, limit, offset)), JobPage)

    def wait_for_job(
        self, job_id: str, *, timeout_s: float | None = None, poll_s: float = DEFAULT_POLL_S
    ) -> BatchInference:
        """Poll every ``poll_s`` until the job is ``completed`` or ``failed``, and return it.

        ``timeout_s=None`` waits as long as the job runs (the server bounds a job by its own
        deadline); past ``timeout_s``, raises ``JobWaitTimeout``.
        """
        wait = Wait(timeout_s, poll_s)
        while (job := self.job_status(job_id)).status not in TERMINAL:
            time.sleep(wait.pause_after(job))
        return job

    def job_results(self, job_id: str, *, after_line: int = 0) -> ResultsSoFar:
        """The records the job has finished so far after ``after_line``, in input order: every line
        before its first unfinished chunk, and all of them once it has ended."""
        return parse_results(self._send(results_call(job_id, after_line)))

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
        self.base_url, headers = connection(base_url, token)
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

    async def _send(self, call: Call) -> httpx.Response:
        try:
            return await self._http.request(call.method, call.path, params=call.params, json=call.body)
        except httpx.TransportError as exc:
            raise unreachable(self.base_url, exc) from exc

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
        extra = extensions(prompt_template, system_prompt, max_error_rate)
        call = submit_call(model, prompt_file, options, num_generations, extra)
        return read(await self._send(call), BatchInference)

    async def job_status(self, job_id: str) -> BatchInference:
        """The job as it is now."""
        return read(await self._send(Call("GET", STATUS_PATH, {"job_id": job_id})), BatchInference)

    async def cancel_job(self, job_id: str) -> BatchInference:
        """Ask the server to cancel the job; it ends ``failed`` once it has stopped."""
        return read(await self._send(Call("POST", CANCEL_PATH, {"job_id": job_id})), BatchInference)

    async def retry_failed(self, job_id: str, *, every_error: bool = False) -> BatchInference:
        """Run the ended job again for its failed lines (see ``BatchInferClient.retry_failed``)."""
        return read(await self._send(retry_call(job_id, every_error)), BatchInference)

    async def list_jobs(
        self,
        *,
        status: JobStatus | str | None = None,
        model: str | None = None,
        limit: int = 20,
        offset: int = 0,
    ) -> JobPage:
        """One page of jobs, optionally only those with ``status`` or ``model``."""
        return read(await self._send(list_call(status, model, limit, offset)), JobPage)

    async def wait_for_job(
        self, job_id: str, *, timeout_s: float | None = None, poll_s: float = DEFAULT_POLL_S
    ) -> BatchInference:
        """Poll every ``poll_s`` until the job is ``completed`` or ``failed``, and return it.

        ``timeout_s=None`` waits as long as the job runs; past ``timeout_s``, raises
        ``JobWaitTimeout``.
        """
        wait = Wait(timeout_s, poll_s)
        while (job := await self.job_status(job_id)).status not in TERMINAL:
            await anyio.sleep(wait.pause_after(job))
        return job

    async def job_results(self, job_id: str, *, after_line: int = 0) -> ResultsSoFar:
        """The records the job has finished so far after ``after_line`` (see ``BatchInferClient``)."""
        return parse_results(await self._send(results_call(job_id, after_line)))
